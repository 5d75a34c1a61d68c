import assert from "node:assert/strict";
import { test } from "node:test";

import { ControlClient, ControlError } from "../js/control.js";
import { isRunReply, runCommand } from "../js/commands.js";
import { FakeTimers, fakeFactory } from "./fakes.js";

function connected() {
  const factory = fakeFactory();
  const timers = new FakeTimers();
  const client = new ControlClient({ url: "wss://h/control.ashx", createWebSocket: factory.create,
    timers, timeoutMs: 1000 });
  client.connect();
  const socket = factory.sockets[0];
  socket.open();
  return { client, socket, timers };
}

test("a command runs with reply and streams its output", async () => {
  const { client, socket } = connected();
  const chunks = [];
  const done = runCommand(client, "node//a", "echo hi", { onOutput: (t) => chunks.push(t) });
  const sent = socket.last();
  assert.deepEqual({ ...sent, responseid: undefined, tag: undefined }, {
    action: "runcommands", nodeids: ["node//a"], type: 0, cmds: "echo hi", runAsUser: 0,
    reply: true, responseid: undefined, tag: undefined });
  socket.receive({ action: "event", event: { action: "runcommands", nodeid: "node//a" } });
  socket.receive({ action: "msg", type: "console", value: "h", nodeid: "node//a" });
  socket.receive({ action: "msg", type: "console", value: "other", nodeid: "node//b" });
  socket.receive({ action: "msg", type: "console", value: "i\n", nodeid: "node//a" });
  socket.receive({ action: "msg", type: "runcommands", result: "hi\n", responseid: sent.responseid,
    nodeid: "node//a" });
  assert.equal(await done, "hi\n");
  assert.deepEqual(chunks, ["h", "i\n"]);
  // Chunks after the end are not heard any more.
  socket.receive({ action: "msg", type: "console", value: "late", nodeid: "node//a" });
  assert.deepEqual(chunks, ["h", "i\n"]);
});

test("a refusal rejects with the server's text", async () => {
  const { client, socket } = connected();
  const done = runCommand(client, "node//a", "uptime");
  socket.receive({ action: "runcommands", responseid: socket.last().responseid,
    result: "Agent not connected" });
  await assert.rejects(done, (e) => e instanceof ControlError && e.message === "Agent not connected");
});

test("empty and oversized scripts are refused before sending", async () => {
  const { client, socket } = connected();
  await assert.rejects(runCommand(client, "n", "  \n"), /Enter a command/);
  await assert.rejects(runCommand(client, "n", "x".repeat(65536)), /at most 65535/);
  assert.equal(socket.sent.length, 0);
});

test("commands may run longer than ordinary requests", async () => {
  const { client, socket, timers } = connected();
  const done = runCommand(client, "n", "sleep 5");
  timers.advance(60000);
  socket.receive({ action: "msg", type: "runcommands", result: "", responseid: socket.last().responseid });
  assert.equal(await done, "");
  const timeout = runCommand(client, "n", "sleep 1", { timeoutMs: 10 });
  timers.advance(10);
  await assert.rejects(timeout, /did not answer/);
});

test("which frames answer runcommands", () => {
  assert.equal(isRunReply({ action: "msg", type: "runcommands", result: "x" }), true);
  assert.equal(isRunReply({ action: "runcommands", result: "Access denied" }), true);
  assert.equal(isRunReply({ action: "runcommands", result: "OK" }), false);
  assert.equal(isRunReply({ action: "msg", type: "console", value: "x" }), false);
});
