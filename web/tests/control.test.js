import assert from "node:assert/strict";
import { test } from "node:test";

import { ControlClient, ControlError, STATES, controlUrl } from "../js/control.js";
import { FakeTimers, fakeFactory } from "./fakes.js";

function connected(options = {}) {
  const factory = fakeFactory();
  const timers = new FakeTimers();
  const client = new ControlClient({ url: "wss://h/control.ashx", createWebSocket: factory.create,
    timers, timeoutMs: 1000, backoffMs: [100, 200], ...options });
  const states = [];
  client.on("state", (s) => states.push(s));
  client.connect();
  const socket = factory.sockets[0];
  socket.open();
  return { client, factory, timers, socket, states };
}

test("controlUrl uses wss on https pages and ws on http", () => {
  assert.equal(controlUrl({ protocol: "https:", host: "h:8443" }), "wss://h:8443/control.ashx");
  assert.equal(controlUrl({ protocol: "http:", host: "h" }), "ws://h/control.ashx");
});

test("connects through the injected factory and reports states", () => {
  const { factory, states, client } = connected();
  assert.equal(factory.sockets.length, 1);
  assert.equal(factory.sockets[0].url, "wss://h/control.ashx");
  assert.deepEqual(states, [STATES.CONNECTING, STATES.OPEN]);
  assert.equal(client.state, STATES.OPEN);
});

test("serverinfo and userinfo are kept and emitted", () => {
  const { client, socket } = connected();
  const seen = [];
  client.on("userinfo", (m) => seen.push(m.userinfo.name));
  socket.receive({ action: "serverinfo", serverinfo: { name: "srv" } });
  socket.receive({ action: "userinfo", userinfo: { name: "admin" } });
  assert.equal(client.serverinfo.name, "srv");
  assert.deepEqual(seen, ["admin"]);
});

test("a request is answered by the reply echoing its responseid", async () => {
  const { client, socket } = connected();
  const reply = client.request("createmesh", { meshname: "g", meshtype: 2 });
  const sent = socket.last();
  assert.equal(sent.action, "createmesh");
  assert.equal(sent.meshname, "g");
  assert.equal(sent.responseid, sent.tag);
  // Events the action causes come first; they go to event listeners, not the request.
  const events = [];
  client.on("event", (e) => events.push(e.action));
  socket.receive({ action: "event", event: { action: "createmesh", meshid: "mesh//x" } });
  socket.receive({ action: "createmesh", responseid: sent.responseid, result: "ok", meshid: "mesh//x" });
  assert.deepEqual(await reply, { action: "createmesh", responseid: sent.responseid, result: "ok", meshid: "mesh//x" });
  assert.deepEqual(events, ["createmesh"]);
});

test("list actions are matched by their tag", async () => {
  const { client, socket } = connected();
  const first = client.request("meshes");
  const second = client.request("meshes");
  const [a, b] = socket.sent;
  socket.receive({ action: "meshes", meshes: [2], tag: b.tag });
  socket.receive({ action: "meshes", meshes: [1], tag: a.tag });
  assert.deepEqual((await first).meshes, [1]);
  assert.deepEqual((await second).meshes, [2]);
});

test("a reply of another action with the same id does not answer the request", async () => {
  const { client, socket, timers } = connected();
  const reply = client.request("deletemesh", { meshid: "m" });
  const { responseid } = socket.last();
  const other = [];
  client.on("changeDeviceMesh", (m) => other.push(m));
  socket.receive({ action: "changeDeviceMesh", responseid, result: "x" });
  assert.equal(other.length, 1);
  timers.advance(1000);
  await assert.rejects(reply, ControlError);
});

test("call() turns a result other than ok into an error with its text", async () => {
  const { client, socket } = connected();
  const done = client.call("deletemesh", { meshid: "m" });
  socket.receive({ action: "deletemesh", responseid: socket.last().responseid, result: "Access denied" });
  await assert.rejects(done, (error) => error instanceof ControlError && error.message === "Access denied");
  const ok = client.call("deletemesh", { meshid: "m" });
  socket.receive({ action: "deletemesh", responseid: socket.last().responseid, result: "ok" });
  assert.equal((await ok).result, "ok");
});

test("requests time out", async () => {
  const { client, timers } = connected();
  const reply = client.request("nodes");
  timers.advance(999);
  timers.advance(1);
  await assert.rejects(reply, /did not answer nodes in time/);
});

test("requests while not connected fail at once", async () => {
  const factory = fakeFactory();
  const client = new ControlClient({ url: "u", createWebSocket: factory.create, timers: new FakeTimers() });
  await assert.rejects(client.request("meshes"), /Not connected/);
  client.connect();
  await assert.rejects(client.request("meshes"), /Not connected/);
  assert.equal(factory.sockets[0].sent.length, 0);
});

test("garbage frames are ignored", () => {
  const { client, socket } = connected();
  const seen = [];
  client.on("event", (e) => seen.push(e));
  for (const junk of ["", "not json", "[]", "null", "42", '{"action":5}', '{"action":"event"}',
    '{"action":"event","event":"x"}']) {
    socket.receive(junk);
  }
  socket.onmessage({ data: new Uint8Array(3) });
  assert.equal(seen.length, 0);
  assert.equal(client.state, STATES.OPEN);
});

test("a lost connection fails pending requests and reconnects with backoff", async () => {
  const { client, factory, timers, socket, states } = connected();
  const pending = client.request("meshes");
  const opened = [];
  client.on("open", () => opened.push(true));
  socket.drop();
  await assert.rejects(pending, /connection to the server was lost/);
  assert.equal(client.state, STATES.RECONNECTING);
  timers.advance(99);
  assert.equal(factory.sockets.length, 1);
  timers.advance(1);
  assert.equal(factory.sockets.length, 2);
  factory.sockets[1].drop();
  timers.advance(199);
  assert.equal(factory.sockets.length, 2);
  timers.advance(1);
  assert.equal(factory.sockets.length, 3);
  factory.sockets[2].open();
  assert.equal(client.state, STATES.OPEN);
  assert.deepEqual(opened, [true]);
  assert.deepEqual(states.slice(-2), [STATES.RECONNECTING, STATES.OPEN]);
  // Back-off starts again after a good connection.
  factory.sockets[2].drop();
  timers.advance(100);
  assert.equal(factory.sockets.length, 4);
});

test("an authentication refusal stops the client without reconnecting", () => {
  const { client, factory, timers, socket } = connected();
  const denied = [];
  client.on("denied", (d) => denied.push(d));
  socket.receive({ action: "close", cause: "noauth", msg: "noauth" });
  assert.deepEqual(denied, [{ cause: "noauth", msg: "noauth" }]);
  assert.equal(client.state, STATES.DENIED);
  assert.ok(socket.closed);
  timers.advance(60000);
  assert.equal(factory.sockets.length, 1);
  client.connect();
  assert.equal(factory.sockets.length, 1);
});

test("close() by the app does not reconnect", () => {
  const { client, factory, timers } = connected();
  client.close();
  assert.equal(client.state, STATES.CLOSED);
  timers.advance(60000);
  assert.equal(factory.sockets.length, 1);
});

test("a listener that throws does not stop the others", () => {
  const { client, socket } = connected();
  const seen = [];
  const original = console.error;
  console.error = () => {};
  try {
    client.on("event", () => { throw new Error("broken view"); });
    client.on("event", (e) => seen.push(e.action));
    socket.receive({ action: "event", event: { action: "nodeconnect" } });
  } finally {
    console.error = original;
  }
  assert.deepEqual(seen, ["nodeconnect"]);
});

test("unsubscribing stops delivery", () => {
  const { client, socket } = connected();
  const seen = [];
  const off = client.on("event", (e) => seen.push(e));
  off();
  socket.receive({ action: "event", event: { action: "x" } });
  assert.equal(seen.length, 0);
});

test("accepts() lets a reply of another action answer the request", async () => {
  const { client, socket } = connected();
  const reply = client.request("runcommands", { nodeids: ["n"] }, {
    accepts: (m) => m.action === "runcommands" || (m.action === "msg" && m.type === "runcommands"),
  });
  const { responseid } = socket.last();
  const msgs = [];
  client.on("msg", (m) => msgs.push(m));
  // Output chunks (no id) go to listeners; the final msg with the id is the reply.
  socket.receive({ action: "msg", type: "console", value: "hi", nodeid: "n" });
  socket.receive({ action: "msg", type: "runcommands", result: "hi\n", responseid, nodeid: "n" });
  assert.equal((await reply).result, "hi\n");
  assert.deepEqual(msgs.map((m) => m.type), ["console"]);
});

test("untagged requests take the first accepted frame even without the id", async () => {
  const { client, socket } = connected();
  const reply = client.request("lastconnect", { nodeid: "n1" }, {
    untagged: true, accepts: (m) => m.action === "lastconnect" && m.nodeid === "n1" });
  const other = [];
  client.on("lastconnect", (m) => other.push(m.nodeid));
  socket.receive({ action: "lastconnect", nodeid: "n2", time: 1 });
  socket.receive({ action: "lastconnect", nodeid: "n1", time: 2 });
  assert.equal((await reply).time, 2);
  assert.deepEqual(other, ["n2"]);
});

test("a request can wait longer than the default timeout", async () => {
  const { client, socket, timers } = connected();
  const reply = client.request("runcommands", {}, { timeoutMs: 5000 });
  timers.advance(4000);
  socket.receive({ action: "runcommands", responseid: socket.last().responseid, result: "OK" });
  assert.equal((await reply).result, "OK");
});
