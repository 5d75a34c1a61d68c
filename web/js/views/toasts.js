import { h } from "../dom.js";

// Short notices in a corner (devices coming and going, errors); an ARIA live region.
export class Toasts {
  constructor(root, { lifetimeMs = 6000, max = 5 } = {}) {
    this.root = root;
    this.lifetimeMs = lifetimeMs;
    this.max = max;
    root.classList.add("toasts");
    root.setAttribute("role", "status");
    root.setAttribute("aria-live", "polite");
  }

  show(text, kind = "info") {
    const toast = h("div", { class: `toast toast-${kind}`, text });
    this.root.append(toast);
    while (this.root.children.length > this.max) this.root.firstElementChild.remove();
    setTimeout(() => toast.remove(), this.lifetimeMs);
    return toast;
  }
}
