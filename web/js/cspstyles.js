// xterm.js writes its computed CSS (cell sizes, theme colours) into <style> elements it
// creates, and a few colours into style="" attributes.  Under the app's strict policy
// (style-src 'self', nothing inline) the browser refuses both.  This shim gives the same
// result through the CSS object model, which the policy allows to scripts:
//   - document.createElement("style") returns a hidden <template> whose textContent goes
//     into a constructed CSSStyleSheet adopted by the document (removed with it);
//   - setAttribute("style", text) sets element.style.cssText instead.
// Nothing that came from the server is ever given markup or style by this: it only
// turns what a script of this origin asks for into the CSSOM form of the same request.

export function installStyleShim(doc = globalThis.document) {
  if (!doc || doc.meshdStyleShim) return;
  const view = doc.defaultView;
  if (!view?.CSSStyleSheet || !("adoptedStyleSheets" in doc)) return;
  doc.meshdStyleShim = true;
  const create = doc.createElement.bind(doc);
  doc.createElement = (tag, options) => {
    if (String(tag).toLowerCase() !== "style") return create(tag, options);
    return sheetElement(doc, view, create);
  };
  const setAttribute = view.Element.prototype.setAttribute;
  view.Element.prototype.setAttribute = function (name, value) {
    if (String(name).toLowerCase() === "style" && this.style) {
      this.style.cssText = String(value);
      return undefined;
    }
    return setAttribute.call(this, name, value);
  };
}

function sheetElement(doc, view, create) {
  const element = create("template");
  element.dataset.styleSheet = "";
  const sheet = new view.CSSStyleSheet();
  doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
  let text = "";
  Object.defineProperty(element, "textContent", {
    configurable: true,
    get: () => text,
    set: (value) => {
      text = value == null ? "" : String(value);
      sheet.replaceSync(text);
    },
  });
  const remove = element.remove.bind(element);
  element.remove = () => {
    remove();
    doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
  };
  return element;
}
