import assert from "node:assert/strict";
import { test } from "node:test";

import { FilesSession, joinPath, parentPath, validName } from "../js/files.js";
import { CTRL_CHANNEL, RelayTunnel, randomRelayId, relayBase } from "../js/relay.js";
import { TerminalSession } from "../js/terminal.js";
import { FakeTimers } from "./fakes.js";

// The relay socket: keeps text and binary frames as sent.
class RelaySocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = false;
  }

  send(data) { this.sent.push(typeof data === "string" ? data : new Uint8Array(data)); }
  close() { this.closed = true; }
  open() { this.onopen?.({}); }
  receive(data) { this.onmessage?.({ data }); }
  receiveJSON(message) {  // the agent's binary JSON reply
    this.receive(new TextEncoder().encode(JSON.stringify(message)).buffer);
  }
  drop() { this.onclose?.({ code: 1006 }); }
  texts() { return this.sent.filter((d) => typeof d === "string"); }
  json() { return this.texts().filter((t) => t.startsWith("{")).map((t) => JSON.parse(t)); }
  binary() { return this.sent.filter((d) => typeof d !== "string"); }
}

// The control channel: answers authcookie and the tunnel request.
class FakeControl {
  constructor({ route = "OK" } = {}) {
    this.requests = [];
    this.route = route;
  }

  async request(action, fields) {
    this.requests.push({ action, ...fields });
    if (action === "authcookie") return { action, cookie: "C/+", rcookie: "R" };
    if (action === "msg") return { action, result: this.route };
    throw new Error(`unexpected ${action}`);
  }
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

async function paired(protocol, options = {}) {
  const sockets = [];
  const client = new FakeControl(options);
  const timers = new FakeTimers();
  const tunnel = new RelayTunnel({ client, base: "wss://h:1", nodeid: "node//a$b", protocol,
    timers, randomId: () => "ID@1", createWebSocket: (url) => {
      const socket = new RelaySocket(url);
      sockets.push(socket);
      return socket;
    } });
  const opened = tunnel.open();
  opened.catch(() => {});  // the tests look at it later
  await tick();
  const socket = sockets[0];
  socket.open();
  await tick();
  return { client, tunnel, socket, opened, timers };
}

test("relayBase and random relay ids", () => {
  assert.equal(relayBase({ protocol: "https:", host: "h:8443" }), "wss://h:8443");
  assert.equal(relayBase({ protocol: "http:", host: "h" }), "ws://h");
  const id = randomRelayId({ getRandomValues: (a) => a.fill(0xfb) });
  assert.equal(id.length, 16);
  assert.match(id, /^[A-Za-z0-9@$]+$/);
});

test("a tunnel joins the relay with the auth cookie and asks the agent to dial it", async () => {
  const { client, tunnel, socket, opened } = await paired(1);
  assert.equal(socket.url,
    "wss://h:1/meshrelay.ashx?browser=1&p=1&nodeid=node%2F%2Fa%24b&id=ID%401&auth=C%2F%2B");
  assert.equal(socket.binaryType, "arraybuffer");
  const ask = client.requests.find((r) => r.action === "msg");
  assert.deepEqual(ask, { action: "msg", type: "tunnel", nodeid: "node//a$b", usage: 1,
    value: "*/meshrelay.ashx?p=1&nodeid=node//a$b&id=ID@1&rauth=R" });
  assert.equal(tunnel.state, "connecting");
  socket.receive("cr");
  assert.equal(await opened, tunnel);
  assert.equal(tunnel.state, "open");
  assert.equal(tunnel.recorded, true);
});

test("a device that is not connected fails the tunnel with a readable reason", async () => {
  const { opened, socket, tunnel } = await paired(1, { route: "Unable to route" });
  await assert.rejects(opened, /not connected/);
  assert.equal(tunnel.state, "closed");
  assert.equal(socket.closed, true);
});

test("an agent that never joins times out", async () => {
  const { opened, timers } = await paired(5);
  timers.advance(30000);
  await assert.rejects(opened, /did not answer in time/);
});

test("terminal: options and 1 start the shell; keys go as bytes; resizes; close", async () => {
  const { tunnel, socket, opened } = await paired(1);
  socket.receive("c");
  await opened;
  const terminal = new TerminalSession(tunnel);
  const output = [];
  terminal.onoutput = (data) => output.push(data);
  assert.equal(terminal.input("x"), false);  // not started yet
  terminal.start(100, 30);
  assert.deepEqual(socket.texts(), [
    JSON.stringify({ ctrlChannel: CTRL_CHANNEL, type: "options", cols: 100, rows: 30 }), "1"]);
  terminal.input("é\r");
  assert.deepEqual([...socket.binary()[0]], [0xc3, 0xa9, 13]);
  socket.receive(new Uint8Array([104, 105]).buffer);
  assert.deepEqual([...output[0]], [104, 105]);
  const controls = [];
  tunnel.oncontrol = (m) => controls.push(m);
  socket.receive(JSON.stringify({ ctrlChannel: CTRL_CHANNEL, type: "ping" }));
  assert.deepEqual(controls, [{ ctrlChannel: CTRL_CHANNEL, type: "ping" }]);
  assert.equal(output.length, 1);
  terminal.resize(100, 30);  // unchanged: nothing sent
  terminal.resize(120, 40);
  assert.deepEqual(socket.json().at(-1),
    { ctrlChannel: CTRL_CHANNEL, type: "termsize", cols: 120, rows: 40 });
  const reasons = [];
  tunnel.onclose = (r) => reasons.push(r);
  terminal.close();
  assert.equal(socket.closed, true);
  assert.deepEqual(reasons, ["Disconnected"]);
  assert.equal(terminal.input("x"), false);
});

async function filesSession() {
  const setup = await paired(5);
  setup.socket.receive("c");
  await setup.opened;
  const files = new FilesSession(setup.tunnel);
  files.start();
  assert.deepEqual(setup.socket.texts(), ["5"]);
  return { ...setup, files };
}

test("files: ls matches replies by reqid; mkdir, rm, rename are sent", async () => {
  const { socket, files } = await filesSession();
  const listing = files.ls("/tmp");
  const ask = socket.json().at(-1);
  assert.equal(ask.action, "ls");
  assert.equal(ask.path, "/tmp");
  socket.receiveJSON({ path: "/tmp", dir: [{ n: "a", t: 3, s: 1 }], reqid: ask.reqid + 100 });
  socket.receiveJSON({ path: "/tmp", dir: [{ n: "b", t: 2 }], reqid: ask.reqid });
  assert.deepEqual((await listing).dir, [{ n: "b", t: 2 }]);
  files.mkdir("/tmp/new");
  files.rm("/tmp", ["x"], true);
  files.rename("/tmp", "a", "b");
  const sent = socket.json().slice(-3).map(({ reqid, ...rest }) => rest);
  assert.deepEqual(sent, [
    { action: "mkdir", path: "/tmp/new" },
    { action: "rm", path: "/tmp", delfiles: ["x"], rec: true },
    { action: "rename", path: "/tmp", oldname: "a", newname: "b" }]);
});

test("files: an upload streams chunks within the window, escaping 0 and {", async () => {
  const { socket, files } = await filesSession();
  const data = new Uint8Array(16384 * 10 + 5).fill(5);
  data[0] = 0x7b;
  data[16384] = 0;
  data[16385] = 7;
  const progress = [];
  const done = files.upload("/tmp", "f.bin", new Blob([data]),
    { onProgress: (n) => progress.push(n) });
  await tick();
  const start = socket.json().at(-1);
  assert.equal(start.action, "upload");
  assert.equal(start.name, "f.bin");
  socket.receiveJSON({ action: "uploadstart", reqid: start.reqid });
  for (let i = 0; i < 20; i += 1) await tick();
  assert.equal(socket.binary().length, 8);  // the window
  const frames = [];
  while (frames.length < 11) {
    const sent = socket.binary();
    while (frames.length < sent.length) frames.push(sent[frames.length]);
    if (frames.length >= 11) break;
    socket.receiveJSON({ action: "uploadack", reqid: start.reqid });
    for (let i = 0; i < 10; i += 1) await tick();
  }
  assert.equal(frames[0][0], 0);  // escaped "{"
  assert.equal(frames[0][1], 0x7b);
  assert.equal(frames[1][0], 0);  // escaped 0
  assert.equal(frames[1].length, 16385);
  assert.equal(frames[2].length, 16384);
  const received = [];
  for (const frame of frames) {
    received.push(...(frame[0] === 0 ? frame.subarray(1) : frame));
  }
  assert.deepEqual(new Uint8Array(received), data);
  for (let i = 0; i < 11; i += 1) {
    if (socket.json().at(-1).action === "uploaddone") break;
    socket.receiveJSON({ action: "uploadack", reqid: start.reqid });
    for (let j = 0; j < 10; j += 1) await tick();
  }
  assert.equal(socket.json().at(-1).action, "uploaddone");
  socket.receiveJSON({ action: "uploaddone", reqid: start.reqid });
  assert.deepEqual(await done, { size: data.length });
  assert.equal(progress.at(-1), data.length);
});

test("files: an upload the agent refuses fails", async () => {
  const { socket, files } = await filesSession();
  const done = files.upload("/", "x", new Blob(["hi"]));
  await tick();
  socket.receiveJSON({ action: "uploaderror", reqid: socket.json().at(-1).reqid });
  await assert.rejects(done, /could not write x/);
});

test("files: a download acknowledges each block and ends on the last", async () => {
  const { socket, files } = await filesSession();
  const chunks = [];
  const done = files.download("/tmp/f", { onChunk: (c) => chunks.push([...c]) });
  await tick();
  const start = socket.json().at(-1);
  assert.deepEqual(start, { action: "download", sub: "start", id: start.id, path: "/tmp/f" });
  socket.receive(JSON.stringify({ action: "download", sub: "start", id: start.id }));
  assert.deepEqual(socket.json().at(-1),
    { action: "download", sub: "startack", id: start.id, ack: 8 });
  socket.receive(new Uint8Array([1, 0, 0, 0, 9, 8]).buffer);
  assert.deepEqual(socket.json().at(-1), { action: "download", sub: "ack", id: start.id });
  socket.receive(new Uint8Array([1, 0, 0, 1, 7]).buffer);
  assert.deepEqual(await done, { size: 3 });
  assert.deepEqual(chunks, [[9, 8], [7]]);
});

test("files: a missing file and a lost tunnel fail the transfer", async () => {
  const { socket, files } = await filesSession();
  const missing = files.download("/nope");
  await tick();
  socket.receive(JSON.stringify({ action: "download", sub: "cancel",
    id: socket.json().at(-1).id }));
  await assert.rejects(missing, /could not read \/nope/);
  const listing = files.ls("/");
  socket.drop();
  await assert.rejects(listing, /Disconnected|closed/);
  assert.throws(() => files.mkdir("/x"), /Not connected/);
});

test("paths and names", () => {
  assert.equal(joinPath("/", "a"), "/a");
  assert.equal(joinPath("/a", "b"), "/a/b");
  assert.equal(parentPath("/a/b"), "/a");
  assert.equal(parentPath("/a"), "/");
  assert.equal(parentPath("/"), "/");
  assert.ok(validName("a b.txt"));
  for (const bad of ["", ".", "..", "a/b", "a\0"]) assert.ok(!validName(bad), bad);
});

test("a guest tunnel joins with the sharing link's cookie alone", async () => {
  const sockets = [];
  const timers = new FakeTimers();
  const tunnel = new RelayTunnel({ client: null, base: "wss://h:1", nodeid: "node//a$b",
    protocol: 5, timers, guestCookie: "S/+$", createWebSocket: (url) => {
      const socket = new RelaySocket(url);
      sockets.push(socket);
      return socket;
    } });
  const opened = tunnel.open();
  await tick();
  const [socket] = sockets;
  assert.equal(socket.url, "wss://h:1/meshrelay.ashx?browser=1&p=5&c=S%2F%2B%24");
  socket.open();  // no control channel: nothing is asked of anybody
  await tick();
  assert.deepEqual(socket.sent, []);
  socket.receive("c");
  assert.equal(await opened, tunnel);
  assert.equal(tunnel.state, "open");
});

test("a refused guest tunnel says the link or the device is the problem", async () => {
  const sockets = [];
  const tunnel = new RelayTunnel({ client: null, base: "wss://h:1", nodeid: "x", protocol: 1,
    timers: new FakeTimers(), guestCookie: "S", createWebSocket: (url) => {
      const socket = new RelaySocket(url);
      sockets.push(socket);
      return socket;
    } });
  const opened = tunnel.open();
  await tick();
  sockets[0].drop();
  await assert.rejects(opened, /link is not valid now, or the device is not connected/);
});
