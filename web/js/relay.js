// A tunnel to an agent through the relay (/meshrelay.ashx), as MeshCentral's web app
// opens one:
//
//   1. `authcookie` on the control channel gives `cookie` (for us) and `rcookie` (for the
//      agent);
//   2. we join /meshrelay.ashx?browser=1&p=<protocol>&nodeid=..&id=<random>&auth=<cookie>;
//   3. the control message {action:"msg", type:"tunnel", usage, value:"*/meshrelay.ashx?
//      p=..&nodeid=..&id=..&rauth=<rcookie>"} asks the agent to dial the same relay id;
//   4. the relay answers the text "c" (or "cr": the session is recorded) once paired.
//
// A guest of a device-sharing link (the page /sharing?c=…) has no control channel: it
// joins /meshrelay.ashx?browser=1&p=<protocol>&c=<the link's cookie> and the server itself
// picks the relay id and asks the agent to dial it (option `guestCookie`).
//
// After that, frames go both ways unchanged: the protocol modules (terminal.js, files.js)
// speak on top.  Frames carrying {"ctrlChannel":"102938",...} are control frames of the
// tunnel itself.  The WebSocket comes from an injected factory `(url) => WebSocket-like`.

export const CTRL_CHANNEL = "102938";

export class RelayError extends Error {
  constructor(message) {
    super(message);
    this.name = "RelayError";
  }
}

export function relayBase(location) {
  const scheme = location.protocol === "http:" ? "ws:" : "wss:";
  return `${scheme}//${location.host}`;
}

// A relay session id like MeshCentral's: 12 random bytes in base64, URL-safe for the
// server ("+" → "@", "/" → "$").
export function randomRelayId(random = globalThis.crypto) {
  const bytes = new Uint8Array(12);
  random.getRandomValues(bytes);
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "@").replace(/\//g, "$");
}

export class RelayTunnel {
  // client: the ControlClient; base: "wss://host" (relayBase(location));
  // protocol: 1 terminal, 5 files; timeoutMs: how long the agent may take to join;
  // guestCookie: a sharing link's cookie, used instead of the control channel.
  constructor({ client, createWebSocket, base, nodeid, protocol, randomId = randomRelayId,
                timers = globalThis, timeoutMs = 30000, guestCookie = null }) {
    if (typeof createWebSocket !== "function") throw new TypeError("createWebSocket is required");
    this.client = client;
    this._create = createWebSocket;
    this.base = base;
    this.nodeid = nodeid;
    this.protocol = protocol;
    this._randomId = randomId;
    this._timers = timers;
    this._timeoutMs = timeoutMs;
    this.guestCookie = guestCookie;
    this.state = "idle";
    this.recorded = false;
    this.socket = null;
    this.closeReason = "";
    this.ondata = null;      // (string | Uint8Array) → void, after "c"
    this.oncontrol = null;   // (object) → void: ctrlChannel frames from the agent
    this.onclose = null;     // (reason) → void, once
  }

  // Resolves once the agent joined ("c"/"cr"); rejects with a RelayError otherwise.
  async open() {
    if (this.state !== "idle") throw new RelayError("This tunnel was already used");
    this.state = "connecting";
    const q = encodeURIComponent;
    if (this.guestCookie) {
      return this._join(`${this.base}/meshrelay.ashx?browser=1&p=${this.protocol}` +
        `&c=${q(this.guestCookie)}`, null);
    }
    let cookies;
    try {
      cookies = await this.client.request("authcookie", {}, { untagged: true,
        accepts: (message) => message.action === "authcookie" });
    } catch (error) {
      this._finish(error.message);
      throw new RelayError(error.message);
    }
    if (this.state !== "connecting") throw new RelayError(this.closeReason || "Closed");
    const id = this._randomId();
    const url = `${this.base}/meshrelay.ashx?browser=1&p=${this.protocol}` +
      `&nodeid=${q(this.nodeid)}&id=${q(id)}&auth=${q(cookies.cookie)}`;
    return this._join(url, { id, rcookie: cookies.rcookie });
  }

  // Open the relay socket; `ask` ({id, rcookie}): then ask the agent over the control
  // channel to dial the same id (null: the server does it, for guests).
  _join(url, ask) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (reason) => {
        if (!settled) {
          settled = true;
          reject(new RelayError(reason));
        }
        this._finish(reason);
      };
      const timer = this._timers.setTimeout(
        () => fail("The device did not answer in time"), this._timeoutMs);
      this._pairing = { resolve, fail, timer, settle: () => { settled = true; } };
      let socket;
      try {
        socket = this._create(url);
      } catch (error) {
        fail(`Could not open the relay: ${error.message}`);
        return;
      }
      this.socket = socket;
      socket.binaryType = "arraybuffer";
      socket.onopen = async () => {
        if (!ask) return;
        try {
          const reply = await this.client.request("msg", {
            type: "tunnel", nodeid: this.nodeid, usage: this.protocol,
            value: `*/meshrelay.ashx?p=${this.protocol}&nodeid=${this.nodeid}&id=${ask.id}` +
              `&rauth=${ask.rcookie}`,
          });
          if (!/^ok$/i.test(String(reply.result))) {
            fail(reply.result === "Unable to route" ? "The device is not connected"
              : String(reply.result || "The tunnel was refused"));
          }
        } catch (error) {
          fail(error.message);
        }
      };
      socket.onmessage = (message) => this._receive(message.data);
      socket.onclose = (event) => {
        let reason = "Disconnected";
        if (this.state === "connecting") {
          reason = ask ? "The relay closed before the device joined"
            : "The link is not valid now, or the device is not connected";
        }
        fail(event?.reason || reason);
      };
      socket.onerror = () => {};
    });
  }

  _receive(data) {
    if (this.state === "connecting") {
      if (data === "c" || data === "cr") {
        const pairing = this._pairing;
        this._pairing = null;
        this._timers.clearTimeout(pairing.timer);
        this.recorded = data === "cr";
        this.state = "open";
        pairing.settle();
        pairing.resolve(this);
      }
      return;  // anything before the pairing is the relay's own business
    }
    if (this.state !== "open") return;
    if (typeof data === "string") {
      if (data.startsWith("{") && data.includes(CTRL_CHANNEL)) {
        try {
          const message = JSON.parse(data);
          if (message && message.ctrlChannel === CTRL_CHANNEL) {
            this.oncontrol?.(message);
            return;
          }
        } catch (error) { /* not JSON: data */ }
      }
      this.ondata?.(data);
    } else {
      this.ondata?.(new Uint8Array(data));
    }
  }

  // Text frames go as text, anything else (Uint8Array, ArrayBuffer, Blob) as binary.
  send(data) {
    if (this.state !== "open" || !this.socket) return false;
    this.socket.send(data);
    return true;
  }

  sendJSON(message) {
    return this.send(JSON.stringify(message));
  }

  // How many bytes the socket still has to send (for flow control of uploads).
  get buffered() {
    return this.socket?.bufferedAmount ?? 0;
  }

  close(reason = "Disconnected") {
    this._finish(reason);
  }

  _finish(reason) {
    if (this.state === "closed") return;
    this.state = "closed";
    this.closeReason = reason;
    if (this._pairing) {
      this._timers.clearTimeout(this._pairing.timer);
      const { fail } = this._pairing;
      this._pairing = null;
      fail(reason);
    }
    const socket = this.socket;
    if (socket) {
      socket.onmessage = null;
      socket.onclose = null;
      try {
        socket.close();
      } catch (error) { /* already closing */ }
    }
    this.onclose?.(reason);
    this.onclose = null;
  }
}
