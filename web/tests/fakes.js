// Test doubles: a WebSocket the test drives by hand, and timers it fires by hand.

export class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = false;
  }

  send(text) {
    if (this.closed) throw new Error("send on a closed socket");
    this.sent.push(JSON.parse(text));
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.onclose?.({ code: 1005 });
  }

  // What the server does:
  open() { this.onopen?.({}); }
  receive(message) { this.onmessage?.({ data: typeof message === "string" ? message : JSON.stringify(message) }); }
  drop() { this.closed = true; this.onclose?.({ code: 1006 }); }
  last() { return this.sent[this.sent.length - 1]; }
}

export function fakeFactory() {
  const sockets = [];
  const create = (url) => {
    const socket = new FakeWebSocket(url);
    sockets.push(socket);
    return socket;
  };
  return { sockets, create };
}

export class FakeTimers {
  constructor() {
    this.now = 0;
    this.queue = new Map();
    this.next = 1;
  }

  setTimeout(fn, ms) {
    const id = this.next++;
    this.queue.set(id, { fn, at: this.now + ms });
    return id;
  }

  clearTimeout(id) { this.queue.delete(id); }

  advance(ms) {
    this.now += ms;
    for (;;) {
      const due = [...this.queue.entries()].filter(([, t]) => t.at <= this.now)
        .sort((a, b) => a[1].at - b[1].at);
      if (!due.length) return;
      const [id, timer] = due[0];
      this.queue.delete(id);
      timer.fn();
    }
  }
}
