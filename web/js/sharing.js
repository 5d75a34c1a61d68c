// The page of a guest of a device-sharing link (/sharing?c=…): the shared device's
// terminal and/or files through the relay, with the link's cookie as the only credential
// (no account, no control channel).  The server embeds what the link shares:
//
//   {title, cookie, nodeid, deviceName, guestName, terminal, files, desktop, viewOnly,
//    start, end}     (start/end: ms since the epoch, null when unbounded)
import { h } from "./dom.js";
import { relayBase } from "./relay.js";
import { FilesPanel } from "./views/files.js";
import { TerminalPanel } from "./views/terminal.js";
import { Toasts } from "./views/toasts.js";

export function describeWindow(bootstrap, locale = undefined) {
  if (!bootstrap.end) return "No time limit";
  return `Until ${new Date(bootstrap.end).toLocaleString(locale)}`;
}

// Which panels the link opens, in order: [id, title].
export function sharedPanels(bootstrap) {
  const panels = [];
  if (bootstrap.terminal) panels.push(["terminal", "Terminal"]);
  if (bootstrap.files) panels.push(["files", "Files"]);
  return panels;
}

export function startSharing({ root, bootstrap, createWebSocket, location }) {
  const base = relayBase(location);
  const guestCookie = String(bootstrap.cookie || "");
  const toastRoot = h("div", { id: "toasts" });
  const toasts = new Toasts(toastRoot);
  const make = {
    terminal: () => new TerminalPanel({ createWebSocket, relayBase: base, guestCookie }),
    files: () => new FilesPanel({ createWebSocket, relayBase: base, toasts, guestCookie }),
  };
  const panels = sharedPanels(bootstrap).map(([id, title]) => {
    const panel = make[id]();
    panel.setDevice(bootstrap.nodeid || "shared");
    return { id, title, panel };
  });

  const header = h("header", { class: "topbar" },
    h("span", { class: "brand", text: bootstrap.title || "meshd" }),
    h("nav", { "aria-label": "Shared" }, panels.map(({ id, title }) =>
      h("a", { href: `#/${id}`, id: `nav-${id}`, text: title }))),
    h("div", { class: "session" },
      h("span", { class: "who", id: "guest-name", text: bootstrap.guestName || "Guest" })));
  const facts = h("dl", { class: "facts", id: "share-facts" },
    h("dt", { text: "Device" }), h("dd", { id: "share-device", text: bootstrap.deviceName }),
    h("dt", { text: "Access" }), h("dd", { id: "share-window", text: describeWindow(bootstrap) }));
  const notes = [];
  if (bootstrap.desktop) {
    notes.push(h("p", { class: "hint", id: "share-desktop",
      text: "This link also shares the remote desktop, which this page does not show." }));
  }
  if (!panels.length) {
    notes.push(h("p", { class: "empty", id: "share-nothing",
      text: "Nothing this page can open is shared by this link." }));
  }
  const sections = panels.map(({ id, title, panel }) =>
    h("section", { id: `view-${id}`, class: "view", "aria-label": title, hidden: true },
      panel.root));
  const main = h("main", { id: "main" }, h("div", { class: "card wide" }, facts, notes),
    sections);
  root.replaceChildren(header, main, toastRoot);

  function route() {
    const wanted = String(location.hash || "").replace(/^#\/?/, "");
    const current = panels.find(({ id }) => id === wanted) || panels[0];
    panels.forEach(({ id, panel }, index) => {
      const shown = panel === current?.panel;
      sections[index].hidden = !shown;
      const link = header.querySelector(`#nav-${id}`);
      if (shown) link?.setAttribute("aria-current", "page");
      else link?.removeAttribute("aria-current");
      if (shown) panel.show();
      else panel.hide();
    });
  }
  globalThis.addEventListener?.("hashchange", route);
  route();
  return { panels };
}

// In the browser: read the page's bootstrap data and start with the browser's WebSocket.
if (globalThis.document?.getElementById?.("bootstrap")) {
  let bootstrap = {};
  try {
    bootstrap = JSON.parse(document.getElementById("bootstrap").textContent || "{}") || {};
  } catch (error) {
    bootstrap = {};
  }
  globalThis.meshdSharing = startSharing({ root: document.getElementById("app"), bootstrap,
    createWebSocket: (url) => new WebSocket(url), location: window.location });
}
