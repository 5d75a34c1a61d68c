// The control channel (/control.ashx) as the app uses it: one WebSocket, JSON frames.
//
// The server sends `serverinfo` and `userinfo` first, then answers requests and pushes
// `{"action":"event","event":{...}}` frames.  Requests are matched to replies by a
// unique id sent both as `responseid` (mutating actions echo it) and `tag` (list actions
// such as `meshes` and `events` echo that instead).  An authentication refusal is the
// frame `{"action":"close","cause","msg"}`; the client then stays closed ("denied")
// instead of reconnecting, so the app can send the user back to the login page.  Any
// other loss of the socket fails the pending requests and reconnects with a backoff.
//
// The WebSocket comes from an injected factory `(url) => WebSocket-like`, so the module
// is tested without a server or a browser (tests/control.test.js).

export const STATES = Object.freeze({
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  DENIED: "denied",
  CLOSED: "closed",
});

export class ControlError extends Error {
  constructor(message, reply) {
    super(message);
    this.name = "ControlError";
    this.reply = reply;
  }
}

const DEFAULT_BACKOFF = [500, 1000, 2000, 5000, 10000];

export function controlUrl(location) {
  const scheme = location.protocol === "http:" ? "ws:" : "wss:";
  return `${scheme}//${location.host}/control.ashx`;
}

export class ControlClient {
  constructor({ url, createWebSocket, timeoutMs = 30000, backoffMs = DEFAULT_BACKOFF,
                timers = globalThis }) {
    if (typeof createWebSocket !== "function") throw new TypeError("createWebSocket is required");
    this.url = url;
    this._create = createWebSocket;
    this._timeoutMs = timeoutMs;
    this._backoff = backoffMs;
    this._timers = timers;
    this._listeners = new Map();
    this._pending = new Map();
    this._nextId = 1;
    this._attempt = 0;
    this._socket = null;
    this._retry = null;
    this.state = STATES.CLOSED;
    this.serverinfo = null;
    this.userinfo = null;
    this.denied = null;
  }

  // Subscribe to a frame action ("serverinfo", "userinfo", "msg", ...), "event" (the
  // inner event object), "state" (new state), "open", "denied" ({cause, msg}).
  on(type, handler) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(handler);
    return () => this._listeners.get(type)?.delete(handler);
  }

  _emit(type, value) {
    for (const handler of [...(this._listeners.get(type) || [])]) {
      try {
        handler(value);
      } catch (error) {
        // One broken view must not stop the others from hearing the frame.
        globalThis.console?.error?.(error);
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  connect() {
    if (this._socket || this.state === STATES.DENIED) return;
    this._setState(this._attempt ? STATES.RECONNECTING : STATES.CONNECTING);
    let socket;
    try {
      socket = this._create(this.url);
    } catch (error) {
      this._scheduleReconnect();
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      if (socket !== this._socket) return;
      this._attempt = 0;
      this._setState(STATES.OPEN);
      this._emit("open");
    };
    socket.onmessage = (message) => {
      if (socket === this._socket) this._receive(message.data);
    };
    socket.onclose = () => {
      if (socket === this._socket) this._lost();
    };
    socket.onerror = () => {};  // onclose follows and does the work
  }

  close() {
    this._clearRetry();
    const socket = this._socket;
    this._socket = null;
    if (this.state !== STATES.DENIED) this._setState(STATES.CLOSED);
    this._failPending("connection closed");
    if (socket) {
      try {
        socket.close();
      } catch (error) { /* already closing */ }
    }
  }

  send(message) {
    if (!this._socket || this.state !== STATES.OPEN) return false;
    this._socket.send(JSON.stringify(message));
    return true;
  }

  // Send `{action, ...fields}` and resolve with the reply (whatever its `result`).
  // Options, for actions whose answer is not a plain echo:
  //   accepts(message)  which frames carrying the request's id are its reply (default:
  //                     the same action); e.g. `runcommands` output comes as `msg`
  //   untagged: true    the reply may not echo the id (`lastconnect`): any frame that
  //                     `accepts` takes is the reply
  //   timeoutMs         how long to wait (default: the client's)
  request(action, fields = {}, { accepts, untagged = false, timeoutMs } = {}) {
    if (this.state !== STATES.OPEN) {
      return Promise.reject(new ControlError("Not connected to the server"));
    }
    const id = `r${this._nextId++}`;
    const match = accepts || ((message) => message.action === action);
    return new Promise((resolve, reject) => {
      const timer = this._timers.setTimeout(() => {
        this._pending.delete(id);
        reject(new ControlError(`The server did not answer ${action} in time`));
      }, timeoutMs ?? this._timeoutMs);
      this._pending.set(id, { action, match, untagged, resolve, reject, timer });
      this.send({ ...fields, action, responseid: id, tag: id });
    });
  }

  // Like request(), but a `result` other than ok is an error with that text.
  async call(action, fields = {}) {
    const reply = await this.request(action, fields);
    if (reply.result !== undefined && !/^ok$/i.test(String(reply.result))) {
      throw new ControlError(String(reply.result), reply);
    }
    return reply;
  }

  _receive(data) {
    if (typeof data !== "string") return;
    let message;
    try {
      message = JSON.parse(data);
    } catch (error) {
      return;
    }
    if (!message || typeof message !== "object" || typeof message.action !== "string") return;
    const { action } = message;
    if (action === "close") {
      this.denied = { cause: message.cause, msg: message.msg };
      this._setState(STATES.DENIED);
      this._emit("denied", this.denied);
      this.close();
      return;
    }
    if (action === "event") {
      if (message.event && typeof message.event === "object") this._emit("event", message.event);
      return;
    }
    for (const key of [message.responseid, message.tag]) {
      const pending = key !== undefined ? this._pending.get(String(key)) : undefined;
      if (pending && pending.match(message)) {
        this._settle(String(key), pending, message);
        return;
      }
    }
    for (const [key, pending] of this._pending) {
      if (pending.untagged && pending.match(message)) {
        this._settle(key, pending, message);
        return;
      }
    }
    if (action === "serverinfo") this.serverinfo = message.serverinfo;
    if (action === "userinfo") this.userinfo = message.userinfo;
    this._emit(action, message);
  }

  _settle(key, pending, message) {
    this._pending.delete(key);
    this._timers.clearTimeout(pending.timer);
    pending.resolve(message);
  }

  _failPending(reason) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const { reject, timer } of pending) {
      this._timers.clearTimeout(timer);
      reject(new ControlError(reason));
    }
  }

  _lost() {
    this._socket = null;
    this._failPending("The connection to the server was lost");
    if (this.state === STATES.DENIED || this.state === STATES.CLOSED) return;
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    this._socket = null;
    this._setState(STATES.RECONNECTING);
    const delay = this._backoff[Math.min(this._attempt, this._backoff.length - 1)];
    this._attempt += 1;
    this._clearRetry();
    this._retry = this._timers.setTimeout(() => {
      this._retry = null;
      this.connect();
    }, delay);
  }

  _clearRetry() {
    if (this._retry !== null) {
      this._timers.clearTimeout(this._retry);
      this._retry = null;
    }
  }
}
