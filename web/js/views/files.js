import { h } from "../dom.js";
import { FilesSession, joinPath, parentPath, validName } from "../files.js";
import { RelayTunnel } from "../relay.js";

export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(value < 10 ? 1 : 0) : value} ${units[unit]}`;
}

function formatDate(text) {
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

// Blob parts are merged every few MiB so a long download is held by the browser's blob
// storage (which may spill to disk), not by an ever-growing array of small buffers.
class BlobSink {
  constructor() {
    this.blobs = [];
    this.parts = [];
    this.size = 0;
  }

  add(chunk) {
    this.parts.push(chunk.slice());
    this.size += chunk.length;
    if (this.size >= 4 * 1024 * 1024) this._flush();
  }

  _flush() {
    if (this.parts.length) this.blobs.push(new Blob(this.parts));
    this.parts = [];
    this.size = 0;
  }

  blob() {
    this._flush();
    return new Blob(this.blobs, { type: "application/octet-stream" });
  }
}

// One transfer row: name, progress bar, bytes and speed, cancel.
class Transfer {
  constructor(list, kind, name, total) {
    this.kind = kind;
    this.total = total;
    this.started = performance.now();
    this.cancelled = false;
    this.bar = h("progress", { max: String(total || 1), value: "0" });
    this.text = h("span", { class: "transfer-text" });
    this.cancel = h("button", { type: "button", class: "transfer-cancel", text: "Cancel",
      onclick: () => { this.cancelled = true; } });
    this.row = h("li", { class: "transfer", dataset: { kind, name, state: "running" } },
      h("span", { class: "transfer-name", text: `${kind === "upload" ? "↑" : "↓"} ${name}` }),
      this.bar, this.text, this.cancel);
    list.prepend(this.row);
    this.progress(0);
  }

  progress(done) {
    const seconds = Math.max((performance.now() - this.started) / 1000, 0.001);
    const speed = done / seconds;
    if (this.total) this.bar.value = Math.min(done, this.total);
    this.text.textContent = `${formatBytes(done)}${this.total ? ` of ${formatBytes(this.total)}`
      : ""} · ${formatBytes(speed)}/s`;
  }

  end(state, message) {
    this.row.dataset.state = state;
    this.cancel.remove();
    if (state === "done") this.bar.value = this.bar.max;
    if (message) this.text.textContent = message;
    if (state === "done") {
      const seconds = Math.max((performance.now() - this.started) / 1000, 0.001);
      this.text.textContent += ` in ${seconds.toFixed(1)} s (${formatBytes(this.total / seconds)}/s)`;
    }
  }
}

// The files tab of a device: browse, upload, download, new folder, rename, delete.
export class FilesPanel {
  // guestCookie: a sharing link's cookie (the guest page), instead of the control channel.
  constructor({ client, createWebSocket, relayBase, toasts, guestCookie = null }) {
    this.client = client;
    this.createWebSocket = createWebSocket;
    this.relayBase = relayBase;
    this.guestCookie = guestCookie;
    this.toasts = toasts;
    this.nodeid = null;
    this.session = null;
    this.connecting = null;
    this.path = "/";
    this.entries = [];
    this.visible = false;
    this._build();
  }

  _build() {
    this.status = h("span", { class: "run-status", id: "files-status", role: "status" });
    this.pathInput = h("input", { id: "files-path", type: "text", value: "/",
      "aria-label": "Folder", spellcheck: "false", autocomplete: "off" });
    const go = h("form", { class: "files-path-form",
      onsubmit: (e) => { e.preventDefault(); this.open(this.pathInput.value.trim() || "/"); } },
    h("button", { type: "button", id: "files-up", text: "↑ Up", title: "Parent folder",
      onclick: () => this.open(parentPath(this.path)) }),
    this.pathInput,
    h("button", { type: "submit", id: "files-go", text: "Go" }),
    h("button", { type: "button", id: "files-refresh", text: "Refresh",
      onclick: () => this.open(this.path) }));
    this.newName = h("input", { id: "files-new-folder", type: "text",
      placeholder: "New folder name", "aria-label": "New folder name", autocomplete: "off" });
    const mkdir = h("form", { class: "inline-form", id: "files-mkdir-form",
      onsubmit: (e) => { e.preventDefault(); this._mkdir(); } },
    this.newName, h("button", { type: "submit", id: "files-mkdir", text: "New folder" }));
    this.fileInput = h("input", { type: "file", id: "files-input", multiple: true,
      class: "visually-hidden", onchange: () => {
        this.uploadFiles([...this.fileInput.files]);
        this.fileInput.value = "";
      } });
    const upload = h("label", { class: "button primary", id: "files-upload" },
      "Upload files…", this.fileInput);
    this.rows = h("tbody", { id: "files-rows" });
    this.empty = h("p", { class: "empty", id: "files-empty", hidden: true });
    this.table = h("div", { class: "files-table", id: "files-drop" },
      h("table", { class: "files" }, h("thead", {}, h("tr", {},
        ["Name", "Size", "Modified", ""].map((t) => h("th", { scope: "col", text: t })))),
      this.rows), this.empty,
      h("p", { class: "hint", text: "Drop files here to upload them into this folder." }));
    this.table.addEventListener("dragover", (e) => {
      if (!e.dataTransfer?.types?.includes("Files")) return;
      e.preventDefault();
      this.table.classList.add("dropping");
    });
    this.table.addEventListener("dragleave", () => this.table.classList.remove("dropping"));
    this.table.addEventListener("drop", (e) => {
      e.preventDefault();
      this.table.classList.remove("dropping");
      this.uploadFiles([...(e.dataTransfer?.files || [])]);
    });
    this.transfers = h("ul", { class: "transfers", id: "files-transfers" });
    this.dialog = h("dialog", { class: "dialog", id: "files-dialog" });
    this.root = h("div", { class: "card wide files-card" },
      h("div", { class: "panel-bar" }, h("h2", { text: "Files" }), this.status),
      h("div", { class: "toolbar" }, go),
      h("div", { class: "toolbar" }, mkdir, upload),
      this.table, this.transfers, this.dialog);
  }

  setDevice(nodeid) {
    if (nodeid === this.nodeid) return;
    this.session?.close();
    this.session = null;
    this.connecting = null;
    this.nodeid = nodeid;
    this.path = "/";
    this.pathInput.value = "/";
    this.entries = [];
    this.rows.replaceChildren();
    this.transfers.replaceChildren();
    this._status("idle", "");
  }

  show() {
    this.visible = true;
    if (!this.session) this.open(this.path);
  }

  hide() { this.visible = false; }

  _status(state, text) {
    this.status.dataset.state = state;
    this.status.textContent = text;
  }

  // The file session, opened on first use (and again after it was lost).
  async _session() {
    if (this.session && !this.session.closed) return this.session;
    if (this.connecting) return this.connecting;
    const nodeid = this.nodeid;
    const tunnel = new RelayTunnel({ client: this.client, createWebSocket: this.createWebSocket,
      base: this.relayBase, nodeid, protocol: 5, guestCookie: this.guestCookie });
    tunnel.onclose = (reason) => {
      if (this.session !== session) return;
      this.session = null;
      this._status("closed", reason === "Disconnected" ? "Disconnected" : reason);
    };
    const session = new FilesSession(tunnel);  // wraps onclose: pending requests fail
    this._status("connecting", "Connecting to the device…");
    this.connecting = tunnel.open().then(() => {
      if (nodeid !== this.nodeid) {
        session.close();
        throw new Error("Closed");
      }
      session.start();
      this.session = session;
      return session;
    }).finally(() => { this.connecting = null; });
    return this.connecting;
  }

  async open(path) {
    const nodeid = this.nodeid;
    if (!nodeid) return;
    try {
      const session = await this._session();
      this._status("loading", "Loading…");
      const reply = await session.ls(path);
      if (nodeid !== this.nodeid) return;
      if (!Array.isArray(reply.dir)) {
        this._status("error", `Cannot open ${path}`);
        this.pathInput.value = this.path;
        return;
      }
      this.path = reply.path || path;
      this.pathInput.value = this.path;
      this.entries = reply.dir;
      this._render();
      this._status("open", "");
    } catch (error) {
      if (nodeid === this.nodeid) this._status("error", `Could not connect: ${error.message}`);
    }
  }

  _render() {
    const entries = [...this.entries].sort((a, b) => (a.t === 2 ? 0 : 1) - (b.t === 2 ? 0 : 1) ||
      String(a.n).localeCompare(String(b.n)));
    const rows = entries.map((entry) => {
      const folder = entry.t === 2;
      const name = String(entry.n);
      const label = folder
        ? h("button", { type: "button", class: "link file-open", text: name,
          onclick: () => this.open(joinPath(this.path, name)) })
        : h("span", { class: "file-name", text: name });
      const row = h("tr", { class: "file", dataset: { name, type: folder ? "folder" : "file" } },
        h("td", { class: "name" }, label),
        h("td", { class: "size", text: folder ? "" : formatBytes(entry.s) }),
        h("td", { class: "time", text: formatDate(entry.d) }),
        h("td", { class: "actions" },
          folder ? null : h("button", { type: "button", class: "file-download",
            text: "Download", onclick: () => this.download(name, entry.s) }),
          h("button", { type: "button", class: "file-rename", text: "Rename",
            onclick: () => this._rename(row, name) }),
          h("button", { type: "button", class: "file-delete danger-outline", text: "Delete",
            onclick: () => this._confirmDelete(name, folder) })));
      return row;
    });
    this.rows.replaceChildren(...rows);
    this.empty.hidden = rows.length > 0;
    this.empty.textContent = "This folder is empty.";
  }

  async _mkdir() {
    const name = this.newName.value.trim();
    if (!validName(name)) {
      this._status("error", "A folder name may not be empty or contain /");
      return;
    }
    try {
      (await this._session()).mkdir(joinPath(this.path, name));
      this.newName.value = "";
      await this.open(this.path);
    } catch (error) {
      this._status("error", error.message);
    }
  }

  _rename(row, name) {
    const cell = row.querySelector("td.name");
    const input = h("input", { type: "text", class: "rename-input", value: name,
      "aria-label": `New name for ${name}`, autocomplete: "off" });
    const form = h("form", { class: "rename-form", onsubmit: async (e) => {
      e.preventDefault();
      const next = input.value.trim();
      if (next === name) { this._render(); return; }
      if (!validName(next)) { this._status("error", "A name may not be empty or contain /"); return; }
      try {
        (await this._session()).rename(this.path, name, next);
        await this.open(this.path);
      } catch (error) {
        this._status("error", error.message);
      }
    } }, input, h("button", { type: "submit", class: "rename-save", text: "Save" }));
    input.addEventListener("keydown", (e) => { if (e.key === "Escape") this._render(); });
    cell.replaceChildren(form);
    input.focus();
    input.select();
  }

  _confirmDelete(name, folder) {
    const dialog = this.dialog;
    dialog.replaceChildren(h("form", { method: "dialog" },
      h("h2", { text: folder ? "Delete folder" : "Delete file" }),
      h("p", { text: folder ? `Delete the folder ${name} and everything in it?`
        : `Delete ${name}?` }),
      h("div", { class: "dialog-buttons" },
        h("button", { value: "cancel", text: "Cancel" }),
        h("button", { value: "delete", class: "danger", id: "files-confirm-delete",
          text: "Delete" }))));
    dialog.onclose = async () => {
      if (dialog.returnValue !== "delete") return;
      try {
        (await this._session()).rm(this.path, [name], folder);
        await this.open(this.path);
      } catch (error) {
        this._status("error", error.message);
      }
    };
    dialog.returnValue = "";
    dialog.showModal();
  }

  async uploadFiles(files) {
    const folder = this.path;
    for (const file of files) {
      if (!validName(file.name)) continue;
      const transfer = new Transfer(this.transfers, "upload", file.name, file.size);
      try {
        const session = await this._session();
        await session.upload(folder, file.name, file, {
          onProgress: (done) => transfer.progress(done),
          cancelled: () => transfer.cancelled,
        });
        transfer.end("done", `${formatBytes(file.size)} uploaded`);
      } catch (error) {
        transfer.end("error", error.message);
      }
    }
    if (folder === this.path) await this.open(this.path);
  }

  async download(name, size) {
    const path = joinPath(this.path, name);
    const transfer = new Transfer(this.transfers, "download", name, size);
    const sink = new BlobSink();
    try {
      const session = await this._session();
      await session.download(path, {
        onChunk: (chunk) => sink.add(chunk),
        onProgress: (done) => transfer.progress(done),
        cancelled: () => transfer.cancelled,
      });
      const url = URL.createObjectURL(sink.blob());
      const link = h("a", { href: url, download: name, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      transfer.end("done", `${formatBytes(size)} downloaded`);
    } catch (error) {
      transfer.end("error", error.message);
    }
  }
}
