import { installStyleShim } from "../cspstyles.js";
import { h } from "../dom.js";
import { RelayTunnel } from "../relay.js";
import { TerminalSession } from "../terminal.js";

// xterm.js is loaded the first time a terminal opens (it is most of the app's weight).
let modules = null;
function loadXterm() {
  modules ??= Promise.all([import("../../vendor/xterm/xterm.mjs"),
    import("../../vendor/addon-fit/addon-fit.mjs")]).catch((error) => {
    modules = null;
    throw error;
  });
  return modules;
}

const STATUS = {
  idle: "Not connected",
  loading: "Loading the terminal…",
  connecting: "Connecting to the device…",
  open: "Connected",
  closed: "Disconnected",
  error: "",
};

function theme() {
  const dark = globalThis.matchMedia?.("(prefers-color-scheme: dark)").matches;
  return dark ? { background: "#0b0e12", foreground: "#e6e9ed", cursor: "#e6e9ed" }
    : { background: "#1b1f24", foreground: "#f0f2f5", cursor: "#f0f2f5" };
}

// The terminal tab of a device: one shell through the relay, in xterm.js.
export class TerminalPanel {
  // guestCookie: a sharing link's cookie (the guest page), instead of the control channel.
  constructor({ client, createWebSocket, relayBase, guestCookie = null }) {
    this.client = client;
    this.createWebSocket = createWebSocket;
    this.relayBase = relayBase;
    this.guestCookie = guestCookie;
    this.nodeid = null;
    this.session = null;
    this.term = null;
    this.fit = null;
    this.visible = false;
    this.wanted = false;  // the user wants a session (reconnect on show)
    this.status = h("span", { class: "run-status", id: "terminal-status", role: "status" });
    this.button = h("button", { type: "button", class: "primary", id: "terminal-connect",
      text: "Connect", onclick: () => (this.session ? this.disconnect() : this.connect()) });
    this.screen = h("div", { class: "terminal-screen", id: "terminal-screen" });
    this.root = h("div", { class: "card wide terminal-card" },
      h("div", { class: "panel-bar" }, h("h2", { text: "Terminal" }), this.status, this.button),
      this.screen);
    this._setState("idle");
    this._observer = globalThis.ResizeObserver
      ? new ResizeObserver(() => this._fit()) : null;
    this._observer?.observe(this.screen);
  }

  setDevice(nodeid) {
    if (nodeid === this.nodeid) return;
    this.disconnect();
    this.nodeid = nodeid;
    this.wanted = false;
    this.term?.reset();
    this._setState("idle");
  }

  show() {
    this.visible = true;
    if (!this.session && this.state !== "connecting") this.connect();
    else this._fit();
    this.term?.focus();
  }

  hide() { this.visible = false; }

  _setState(state, message) {
    this.state = state;
    this.status.dataset.state = state;
    this.status.textContent = message || STATUS[state];
    this.button.textContent = this.session || state === "connecting" || state === "loading"
      ? "Disconnect" : (state === "idle" ? "Connect" : "Reconnect");
  }

  async _ensureTerminal() {
    if (this.term) return;
    const [{ Terminal }, { FitAddon }] = await loadXterm();
    if (this.term) return;
    installStyleShim(document);
    this.term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Cascadia Mono", Menlo, monospace',
      theme: theme() });
    this.fit = new FitAddon();
    this.term.loadAddon(this.fit);
    this.term.open(this.screen);
    this.term.onData((data) => this.session?.input(data));
    this.term.onResize(({ cols, rows }) => this.session?.resize(cols, rows));
  }

  _fit() {
    if (!this.term || !this.visible || !this.screen.offsetParent) return;
    try {
      this.fit.fit();
    } catch (error) { /* not laid out yet */ }
  }

  async connect() {
    const nodeid = this.nodeid;
    if (!nodeid || this.session) return;
    this.wanted = true;
    this._setState("loading");
    try {
      await this._ensureTerminal();
    } catch (error) {
      this._setState("error", `Could not load the terminal: ${error.message}`);
      return;
    }
    if (nodeid !== this.nodeid || !this.wanted) return;
    this._fit();
    const tunnel = new RelayTunnel({ client: this.client, createWebSocket: this.createWebSocket,
      base: this.relayBase, nodeid, protocol: 1, guestCookie: this.guestCookie });
    const session = new TerminalSession(tunnel);
    this.session = session;
    this._setState("connecting");
    session.onoutput = (data) => this.term.write(data);
    tunnel.onclose = (reason) => {
      if (this.session !== session) return;
      this.session = null;
      this.term.write("\r\n\x1b[2m[" + reason + "]\x1b[0m\r\n");
      this._setState(reason === "Disconnected" ? "closed" : "error",
        reason === "Disconnected" ? "" : reason);
    };
    try {
      await tunnel.open();
    } catch (error) {
      if (this.session === session) {
        this.session = null;
        this._setState("error", `Could not connect: ${error.message}`);
      }
      return;
    }
    if (this.session !== session) return;
    this.term.reset();
    session.start(this.term.cols, this.term.rows);
    this._setState("open", tunnel.recorded ? "Connected (this session is recorded)" : "");
    if (this.visible) this.term.focus();
  }

  disconnect() {
    this.wanted = false;
    const session = this.session;
    if (session) session.close();
    else if (this.state === "loading" || this.state === "connecting") this._setState("closed");
  }
}
