// A remote terminal (relay protocol 1) on top of a RelayTunnel: once paired, the options
// frame (size) and the text "1" start the shell; then keystrokes go as binary UTF-8
// frames, output comes back as bytes, and `termsize` control frames resize the pty.

import { CTRL_CHANNEL } from "./relay.js";

const encoder = new TextEncoder();

export class TerminalSession {
  constructor(tunnel) {
    this.tunnel = tunnel;
    this.cols = 80;
    this.rows = 24;
    this.started = false;
    this.onoutput = null;  // (Uint8Array | string) → void
    tunnel.ondata = (data) => this.onoutput?.(data);
  }

  // After tunnel.open(): start the shell at cols × rows.
  start(cols, rows) {
    this.cols = cols;
    this.rows = rows;
    this.tunnel.sendJSON({ ctrlChannel: CTRL_CHANNEL, type: "options", cols, rows });
    this.tunnel.send("1");
    this.started = true;
  }

  input(text) {
    if (!this.started || !text) return false;
    return this.tunnel.send(encoder.encode(text));
  }

  resize(cols, rows) {
    if (!Number.isInteger(cols) || !Number.isInteger(rows) || cols < 1 || rows < 1) return;
    if (cols === this.cols && rows === this.rows) return;
    this.cols = cols;
    this.rows = rows;
    if (this.started) {
      this.tunnel.sendJSON({ ctrlChannel: CTRL_CHANNEL, type: "termsize", cols, rows });
    }
  }

  close() {
    this.tunnel.close("Disconnected");
  }
}
