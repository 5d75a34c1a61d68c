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
  reconnecting: "Connection lost, reconnecting…",
  open: "Connected",
  closed: "Disconnected",
  error: "",
};

// After a session is lost without the user asking (the agent restarted, the network
// dropped), it is opened again after these pauses; then the user may try by hand.
const RETRY_MS = [1000, 2000, 4000, 8000, 15000, 15000, 15000, 15000];

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
    this.retries = 0;     // reconnections tried since the session was lost
    this.retry = null;    // the timer of the next one
    this.status = h("span", { class: "run-status", id: "terminal-status", role: "status" });
    this.button = h("button", { type: "button", class: "primary", id: "terminal-connect",
      text: "Connect", onclick: () => (this.session || this.retry || this.state === "connecting"
        ? this.disconnect() : this.connect()) });
    this.copyButton = h("button", { type: "button", id: "terminal-copy", text: "Copy",
      title: "Copy the selected text (Ctrl+Shift+C)", onclick: () => this.copy() });
    this.pasteButton = h("button", { type: "button", id: "terminal-paste", text: "Paste",
      title: "Paste into the terminal (Ctrl+Shift+V)", onclick: () => this.paste() });
    this.screen = h("div", { class: "terminal-screen", id: "terminal-screen" });
    this.root = h("div", { class: "card wide terminal-card" },
      h("div", { class: "panel-bar" }, h("h2", { text: "Terminal" }), this.status,
        this.copyButton, this.pasteButton, this.button),
      this.screen);
    this._setState("idle");
    this._observer = globalThis.ResizeObserver
      ? new ResizeObserver(() => this._fit()) : null;
    this._observer?.observe(this.screen);
  }

  setDevice(nodeid) {
    if (nodeid === this.nodeid) return;
    this.disconnect();
    this._cancelRetry();
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
    this.button.textContent = this.session || this.retry || state === "connecting" ||
      state === "loading" ? "Disconnect" : (state === "idle" ? "Connect" : "Reconnect");
  }

  // The session was lost (or could not be opened again): try again after a pause.
  _retryLater(reason) {
    if (this.retries >= RETRY_MS.length) {
      this.retries = 0;
      this._setState("error", `${reason}. Reconnect to try again.`);
      return;
    }
    const delay = RETRY_MS[this.retries];
    this.retries += 1;
    this.retry = setTimeout(() => {
      this.retry = null;
      if (this.wanted && !this.session) this.connect();
    }, delay);
    this._setState("reconnecting",
      `${reason}: reconnecting in ${Math.round(delay / 1000)} s…`);
  }

  _cancelRetry() {
    if (this.retry !== null) clearTimeout(this.retry);
    this.retry = null;
    this.retries = 0;
  }

  // Copy the selection: the Copy button or Ctrl+Shift+C (Ctrl+C goes to the shell).
  async copy() {
    const text = this.term?.getSelection() ?? "";
    if (!text) {
      this._note("Select text in the terminal first");
      return;
    }
    try {
      await navigator.clipboard.writeText(text);
      this._note("Copied");
    } catch (error) {
      this._note("Copying needs clipboard permission");
    }
    this.term?.focus();
  }

  // Paste the clipboard as typed input: the Paste button or Ctrl+Shift+V.
  async paste() {
    if (!this.session) return;
    try {
      const text = await navigator.clipboard.readText();
      if (text) this.term.paste(text);
    } catch (error) {
      this._note("Pasting needs clipboard permission");
    }
    this.term?.focus();
  }

  // A passing note in the status line, the state kept.
  _note(text) {
    const state = this.state;
    this.status.textContent = text;
    setTimeout(() => {
      if (this.state === state && this.status.textContent === text) this._setState(state);
    }, 2500);
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
    this.term.attachCustomKeyEventHandler((event) => {
      if (event.type !== "keydown" || !event.ctrlKey || !event.shiftKey || event.altKey) {
        return true;
      }
      if (event.code === "KeyC") this.copy();
      else if (event.code === "KeyV") this.paste();
      else return true;
      event.preventDefault();
      return false;
    });
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
    const reconnecting = this.retries > 0;
    if (this.retry !== null) clearTimeout(this.retry);
    this.retry = null;
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
      // Closed before it opened: open() rejects as well, and that is handled below.
      if (this.session !== session || this.state !== "open") return;
      this.session = null;
      this.term.write("\r\n\x1b[2m[" + reason + "]\x1b[0m\r\n");
      if (this.wanted && nodeid === this.nodeid) {
        // Not asked for: the device or the network went away.
        this._retryLater(reason === "Disconnected" ? "Connection lost" : reason);
        return;
      }
      this._setState(reason === "Disconnected" ? "closed" : "error",
        reason === "Disconnected" ? "" : reason);
    };
    try {
      await tunnel.open();
    } catch (error) {
      if (this.session === session) {
        this.session = null;
        if (!this.wanted || nodeid !== this.nodeid) this._setState("closed");
        else if (reconnecting) this._retryLater(`Could not reconnect: ${error.message}`);
        else this._setState("error", `Could not connect: ${error.message}`);
      }
      return;
    }
    if (this.session !== session) return;
    // A new shell: the old one's output stays above it after a reconnection.
    if (reconnecting) this.term.write("\x1b[2m[Reconnected]\x1b[0m\r\n");
    else this.term.reset();
    this.retries = 0;
    session.start(this.term.cols, this.term.rows);
    this._setState("open", tunnel.recorded ? "Connected (this session is recorded)" : "");
    if (this.visible) this.term.focus();
  }

  disconnect() {
    this.wanted = false;
    if (this.retry !== null) {
      this._cancelRetry();
      this._setState("closed");
    }
    this.retries = 0;
    const session = this.session;
    if (session) session.close();
    else if (this.state === "loading" || this.state === "connecting") this._setState("closed");
  }
}
