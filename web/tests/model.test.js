import assert from "node:assert/strict";
import { test } from "node:test";

import { DeviceModel, EventLog, isOnline } from "../js/model.js";
import { connectionState, formatTime, matchesFilter, osName, shortId } from "../js/format.js";

function loaded() {
  const model = new DeviceModel();
  model.load([{ _id: "mesh//b", name: "beta" }, { _id: "mesh//a", name: "Alpha" }],
    { "mesh//a": [{ _id: "node//2", name: "zed", conn: 1 }, { _id: "node//1", name: "ant" }] });
  return model;
}

test("load keeps groups sorted by name and gives devices their group", () => {
  const model = loaded();
  assert.deepEqual(model.groups().map((m) => m.name), ["Alpha", "beta"]);
  assert.deepEqual(model.devicesOf("mesh//a").map((n) => [n.name, n.meshid]),
    [["ant", "mesh//a"], ["zed", "mesh//a"]]);
  assert.equal(model.devicesOf("mesh//b").length, 0);
});

test("createmesh and deletemesh events add and remove groups with their devices", () => {
  const model = loaded();
  const changes = [];
  model.onChange((c) => changes.push(c));
  model.applyEvent({ action: "createmesh", meshid: "mesh//c", mesh: { _id: "mesh//c", name: "gamma" } });
  assert.deepEqual(model.groups().map((m) => m.name), ["Alpha", "beta", "gamma"]);
  const removed = model.applyEvent({ action: "deletemesh", meshid: "mesh//a" });
  assert.equal(removed.removed, true);
  assert.equal(model.nodes.size, 0);
  assert.deepEqual(model.groups().map((m) => m.name), ["beta", "gamma"]);
  assert.equal(changes.length, 2);
  assert.equal(model.applyEvent({ action: "deletemesh", meshid: "mesh//zz" }), null);
});

test("meshchange renames; an unknown group asks for a reload", () => {
  const model = loaded();
  model.applyEvent({ action: "meshchange", meshid: "mesh//b", name: "Bravo", desc: "d" });
  assert.equal(model.meshes.get("mesh//b").name, "Bravo");
  assert.equal(model.meshes.get("mesh//b").desc, "d");
  assert.equal(model.applyEvent({ action: "meshchange", meshid: "mesh//new", name: "n" }).reload, true);
});

test("nodeconnect flips online state and reports connects and disconnects", () => {
  const model = loaded();
  const up = model.applyEvent({ action: "nodeconnect", meshid: "mesh//a", nodeid: "node//1", conn: 1, pwr: 1, ct: 5 });
  assert.equal(up.connected, true);
  assert.equal(up.name, "ant");
  assert.equal(model.nodes.get("node//1").agct, 5);
  const again = model.applyEvent({ action: "nodeconnect", meshid: "mesh//a", nodeid: "node//1", conn: 1 });
  assert.equal(again.connected, undefined);
  const down = model.applyEvent({ action: "nodeconnect", meshid: "mesh//a", nodeid: "node//1", conn: 0, pwr: 0 });
  assert.equal(down.connected, false);
  assert.ok(model.nodes.get("node//1").lastseen);
});

test("nodeconnect of a device not yet listed in a known group asks for a reload", () => {
  const model = loaded();
  assert.equal(model.applyEvent({ action: "nodeconnect", meshid: "mesh//a", nodeid: "node//9", conn: 1 }).reload, true);
  assert.equal(model.applyEvent({ action: "nodeconnect", meshid: "mesh//other", nodeid: "node//9", conn: 1 }), null);
});

test("addnode, changenode, nodemeshchange and removenode keep the device list", () => {
  const model = loaded();
  model.applyEvent({ action: "addnode", node: { _id: "node//3", name: "new", meshid: "mesh//b" } });
  assert.deepEqual(model.devicesOf("mesh//b").map((n) => n.name), ["new"]);
  model.applyEvent({ action: "changenode", nodeid: "node//2", node: { _id: "node//2", name: "renamed", conn: 0 } });
  assert.equal(model.nodes.get("node//2").name, "renamed");
  assert.equal(model.nodes.get("node//2").conn, 1, "conn only changes through nodeconnect");
  model.applyEvent({ action: "nodemeshchange", nodeid: "node//2", oldMeshId: "mesh//a", newMeshId: "mesh//b",
    node: { _id: "node//2", name: "renamed" } });
  assert.deepEqual(model.devicesOf("mesh//b").map((n) => n.name), ["new", "renamed"]);
  model.applyEvent({ action: "removenode", nodeid: "node//3" });
  assert.deepEqual(model.devicesOf("mesh//b").map((n) => n.name), ["renamed"]);
  assert.equal(model.applyEvent({ action: "addnode", node: { _id: "node//4", meshid: "mesh//unknown" } }).reload, true);
});

test("events of other kinds and malformed events change nothing", () => {
  const model = loaded();
  for (const event of [null, "x", {}, { action: "login" }, { action: "addnode" },
    { action: "createmesh" }, { action: "changenode", nodeid: "node//nope", node: {} }]) {
    assert.equal(model.applyEvent(event), null);
  }
  assert.equal(model.nodes.size, 2);
});

test("the event log keeps logged events newest first, up to its limit", () => {
  const log = new EventLog(2);
  log.load([{ msg: "old", time: "2024-01-01T00:00:00.000Z" }]);
  assert.equal(log.add({ action: "nodeconnect", nolog: 1, msg: "x" }), false);
  assert.equal(log.add({ action: "accountchange" }), false);
  assert.equal(log.add({ action: "createmesh", msg: "Device group created: g" }, Date.UTC(2024, 0, 2)), true);
  assert.equal(log.events[0].time, "2024-01-02T00:00:00.000Z");
  log.add({ action: "deletemesh", msg: "Device group deleted: g" });
  assert.deepEqual(log.events.map((e) => e.msg), ["Device group deleted: g", "Device group created: g"]);
});

test("conn bits", () => {
  assert.equal(isOnline(0), false);
  assert.equal(isOnline(undefined), false);
  assert.equal(isOnline(1), true);
  assert.equal(isOnline(8), false);
  assert.deepEqual(connectionState(0), { online: false, label: "Offline" });
  assert.deepEqual(connectionState(1), { online: true, label: "Online (agent)" });
  assert.deepEqual(connectionState(3), { online: true, label: "Online (agent, Intel AMT CIRA)" });
});

test("format helpers", () => {
  assert.equal(shortId("mesh//abc$@"), "abc$@");
  assert.equal(shortId("mesh/dom/xyz"), "xyz");
  assert.equal(osName({ osdesc: "Debian 12" }), "Debian 12");
  assert.equal(osName({ agent: { id: 6 } }), "Linux (64-bit)");
  assert.equal(osName({}), "");
  assert.equal(formatTime(undefined), "");
  assert.equal(formatTime("not a date"), "");
  assert.notEqual(formatTime("2024-01-01T00:00:00Z", "en-GB"), "");
  assert.ok(matchesFilter({ name: "Web-Server", host: "10.0.0.1" }, "web 10.0"));
  assert.ok(!matchesFilter({ name: "db" }, "web"));
  assert.ok(matchesFilter({ name: "x", conn: 1 }, "online"));
  assert.ok(matchesFilter({ name: "x" }, "  "));
});

test("merge() refreshes single devices of known groups", () => {
  const model = new DeviceModel();
  model.load([{ _id: "mesh//a", name: "A" }], { "mesh//a": [{ _id: "node//1", name: "one", conn: 1 }] });
  model.nodes.get("node//1").lastseen = 5;
  const changes = [];
  model.onChange((c) => changes.push(c));
  const ids = model.merge({
    "mesh//a": [{ _id: "node//1", name: "one", conn: 1, agent: { core: "c" } }, null, { name: "x" }],
    "mesh//unknown": [{ _id: "node//2", name: "two" }],
  });
  assert.deepEqual(ids, ["node//1"]);
  assert.equal(model.nodes.get("node//1").agent.core, "c");
  assert.equal(model.nodes.get("node//1").meshid, "mesh//a");
  assert.equal(model.nodes.get("node//1").lastseen, 5);
  assert.equal(model.nodes.has("node//2"), false);
  assert.deepEqual(changes, [{ kind: "node", id: "node//1" }]);
  assert.deepEqual(model.merge(undefined), []);
});
