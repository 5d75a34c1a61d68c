// Remote files (relay protocol 5) on top of a RelayTunnel, in MeshCentral's messages:
// after the pairing, the text "5" starts the file session; commands are JSON text frames;
// the agent answers JSON in binary frames (download notices in text frames); upload data
// goes as binary frames (a leading 0 byte escapes data that starts with 0 or "{"), each
// acknowledged by `uploadack`; a download comes as binary blocks of 4 flag bytes
// (0x01000000, 0x01000001 on the last) and at most 16380 data bytes, kept flowing by one
// `ack` per block.  Neither side holds more than a window of a file in memory; the
// download's blocks are handed to `onChunk` as they come.

export const UPLOAD_CHUNK = 16384;
export const UPLOAD_WINDOW = 8;
export const DOWNLOAD_WINDOW = 8;
const FLAG_LAST = 0x01000001;
const BRACE = 0x7b;

export class FilesError extends Error {
  constructor(message) {
    super(message);
    this.name = "FilesError";
  }
}

export function joinPath(folder, name) {
  return folder.endsWith("/") ? folder + name : `${folder}/${name}`;
}

export function parentPath(path) {
  const trimmed = path.replace(/\/+$/, "");
  const slash = trimmed.lastIndexOf("/");
  return slash <= 0 ? "/" : trimmed.slice(0, slash);
}

// A name the agent accepts inside a folder: one path component.
export function validName(name) {
  return typeof name === "string" && name.length > 0 && name.length <= 1024 &&
    name !== "." && name !== ".." && !/[/\0]/.test(name);
}

const decoder = new TextDecoder();

export class FilesSession {
  constructor(tunnel) {
    this.tunnel = tunnel;
    this._next = 1;
    this._lists = new Map();
    this._upload = null;
    this._download = null;
    this._queue = Promise.resolve();
    tunnel.ondata = (data) => this._receive(data);
    const previous = tunnel.onclose;
    tunnel.onclose = (reason) => {
      this._failAll(reason);
      previous?.(reason);
    };
  }

  // After tunnel.open().
  start() {
    this.tunnel.send("5");
  }

  get closed() { return this.tunnel.state !== "open"; }

  _command(message) {
    if (!this.tunnel.sendJSON(message)) throw new FilesError("Not connected to the device");
  }

  _receive(data) {
    if (typeof data === "string") {
      let message;
      try { message = JSON.parse(data); } catch (error) { return; }
      if (message?.action === "download") this._download?.notice(message);
      return;
    }
    if (data.length && data[0] === BRACE) {
      let message;
      try { message = JSON.parse(decoder.decode(data)); } catch (error) { return; }
      if (!message || typeof message !== "object") return;
      if (typeof message.action === "string" && message.action.startsWith("upload")) {
        this._upload?.reply(message);
        return;
      }
      const list = this._lists.get(message.reqid);
      if (list && "dir" in message) {
        this._lists.delete(message.reqid);
        list.resolve(message);
      }
      return;
    }
    this._download?.block(data);
  }

  _failAll(reason) {
    const error = new FilesError(reason || "Disconnected");
    for (const list of this._lists.values()) list.reject(error);
    this._lists.clear();
    this._upload?.fail(error);
    this._download?.fail(error);
  }

  // → {path, dir: [{n, t: 2 folder | 3 file, s, d}] | null (cannot be read)}
  ls(path) {
    const reqid = this._next++;
    return new Promise((resolve, reject) => {
      this._lists.set(reqid, { resolve, reject });
      try {
        this._command({ action: "ls", reqid, path });
      } catch (error) {
        this._lists.delete(reqid);
        reject(error);
      }
    });
  }

  mkdir(path) { this._command({ action: "mkdir", reqid: this._next++, path }); }

  rm(path, names, recursive = false) {
    this._command({ action: "rm", reqid: this._next++, path, delfiles: names, rec: recursive });
  }

  rename(path, oldname, newname) {
    this._command({ action: "rename", reqid: this._next++, path, oldname, newname });
  }

  // Transfers run one at a time (the agent keeps one upload and one download).
  _serial(run) {
    const result = this._queue.then(run, run);
    this._queue = result.catch(() => {});
    return result;
  }

  // Upload a Blob/File as `name` in `folder`; onProgress(bytesAcknowledged, total).
  upload(folder, name, blob, { onProgress, cancelled = () => false } = {}) {
    return this._serial(() => this._uploadNow(folder, name, blob, onProgress, cancelled));
  }

  _uploadNow(folder, name, blob, onProgress, cancelled) {
    const reqid = this._next++;
    const total = blob.size;
    return new Promise((resolve, reject) => {
      let offset = 0;
      let acked = 0;
      let inFlight = 0;
      let sizes = [];
      let reading = false;
      let finishing = false;
      const finish = (error) => {
        this._upload = null;
        if (error) reject(error);
        else resolve({ size: total });
      };
      const pump = async () => {
        if (reading || finishing) return;
        reading = true;
        try {
          while (inFlight < UPLOAD_WINDOW && offset < total) {
            if (cancelled()) {
              finishing = true;
              this._command({ action: "uploadcancel", reqid });
              return;
            }
            const end = Math.min(offset + UPLOAD_CHUNK, total);
            const bytes = new Uint8Array(await blob.slice(offset, end).arrayBuffer());
            if (this._upload !== state) return;
            let frame = bytes;
            if (bytes[0] === 0 || bytes[0] === BRACE) {
              frame = new Uint8Array(bytes.length + 1);
              frame.set(bytes, 1);
            }
            this.tunnel.send(frame);
            sizes.push(bytes.length);
            inFlight += 1;
            offset = end;
          }
          if (offset >= total && inFlight === 0) {
            finishing = true;
            this._command({ action: "uploaddone", reqid });
          }
        } catch (error) {
          finish(error instanceof FilesError ? error : new FilesError(error.message));
        } finally {
          reading = false;
        }
      };
      const state = {
        reply: (message) => {
          if (message.action === "uploadstart") pump();
          else if (message.action === "uploadack") {
            inFlight = Math.max(0, inFlight - 1);
            acked += sizes.shift() ?? 0;
            onProgress?.(acked, total);
            pump();
          } else if (message.action === "uploaddone") finish();
          else if (message.action === "uploadcancel") finish(new FilesError("Cancelled"));
          else if (message.action === "uploaderror") {
            finish(new FilesError(`The device could not write ${name}`));
          }
        },
        fail: (error) => finish(error),
      };
      this._upload = state;
      try {
        this._command({ action: "upload", reqid, path: folder, name, size: total });
      } catch (error) {
        finish(error);
      }
    });
  }

  // Download the file at `path`; onChunk(Uint8Array) per block, onProgress(bytes).
  download(path, { onChunk, onProgress, cancelled = () => false } = {}) {
    return this._serial(() => this._downloadNow(path, onChunk, onProgress, cancelled));
  }

  _downloadNow(path, onChunk, onProgress, cancelled) {
    const id = this._next++;
    return new Promise((resolve, reject) => {
      let received = 0;
      const finish = (error) => {
        this._download = null;
        if (error) reject(error);
        else resolve({ size: received });
      };
      this._download = {
        notice: (message) => {
          if (message.id !== id) return;
          if (message.sub === "start") {
            this._command({ action: "download", sub: "startack", id, ack: DOWNLOAD_WINDOW });
          } else if (message.sub === "cancel") {
            finish(new FilesError(`The device could not read ${path}`));
          }
        },
        block: (data) => {
          if (data.length < 4) return;
          const flags = ((data[0] << 24) | (data[1] << 16) | (data[2] << 8) | data[3]) >>> 0;
          const payload = data.subarray(4);
          received += payload.length;
          if (payload.length) onChunk?.(payload);
          onProgress?.(received);
          if (flags === FLAG_LAST) {
            finish();
          } else if (cancelled()) {
            try { this._command({ action: "download", sub: "cancel", id }); } catch (e) { /* */ }
            finish(new FilesError("Cancelled"));
          } else {
            try {
              this._command({ action: "download", sub: "ack", id });
            } catch (error) {
              finish(error);
            }
          }
        },
        fail: (error) => finish(error),
      };
      try {
        this._command({ action: "download", sub: "start", id, path });
      } catch (error) {
        finish(error);
      }
    });
  }

  close() {
    this.tunnel.close("Disconnected");
  }
}
