import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ConnectionNotices, DeviceIndex, deviceSince, filterWords, noticeText, sortDevices, windowRange,
} from "../js/devicelist.js";
import { DeviceModel } from "../js/model.js";
import { FakeTimers } from "./fakes.js";

function fleet(count, meshid = "mesh//a") {
  const nodes = [];
  for (let n = 0; n < count; n += 1) {
    nodes.push({ _id: `node//${n}`, name: `host-${String(n).padStart(5, "0")}`,
      ip: `10.0.${n >> 8 & 255}.${n & 255}`, conn: n % 7 === 0 ? 1 : 0, meshid,
      osdesc: n % 2 ? "Debian 12" : "Windows 11", agent: { core: "Python core 0.3" } });
  }
  return nodes;
}

test("the index finds every word in name, address, OS, agent or tags; state apart", () => {
  const index = new DeviceIndex();
  const node = { _id: "node//1", name: "Web-01", ip: "10.1.2.3", osdesc: "Debian 12",
    agent: { core: "Python core 0.3" }, tags: ["rack4"], conn: 1 };
  assert.ok(index.matches(node, filterWords("web debian")));
  assert.ok(index.matches(node, filterWords("10.1.2 RACK4")));
  assert.ok(index.matches(node, filterWords("python")));
  assert.ok(index.matches(node, filterWords("online")), "the state label is matched too");
  assert.ok(!index.matches(node, filterWords("web windows")));
  assert.ok(index.matches(node, [], "online"));
  assert.ok(!index.matches(node, [], "offline"));
  assert.ok(!index.matches({ ...node, _id: "node//2", conn: 0 }, filterWords("online")));
});

test("the index keeps each device's text until the device changes", () => {
  const index = new DeviceIndex();
  const node = { _id: "node//1", name: "alpha" };
  assert.ok(index.matches(node, ["alpha"]));
  node.name = "beta";  // changed in place: the model says so, the view forgets the entry
  assert.ok(index.matches(node, ["alpha"]), "the cached text is used until forgotten");
  index.forget("node//1");
  assert.ok(index.matches(node, ["beta"]));
  const replaced = { _id: "node//1", name: "gamma" };  // a new record object
  assert.ok(index.matches(replaced, ["gamma"]));
  index.clear();
  assert.equal(index.size, 0);
});

test("filtering 5000 devices by a name finds exactly that device", () => {
  const index = new DeviceIndex();
  const nodes = fleet(5000);
  const words = filterWords("host-04242");
  const found = nodes.filter((node) => index.matches(node, words));
  assert.deepEqual(found.map((node) => node.name), ["host-04242"]);
  assert.equal(index.size, 5000);
  const online = nodes.filter((node) => index.matches(node, [], "online"));
  assert.equal(online.length, Math.ceil(5000 / 7));
});

test("sorting by each column, both ways, ties by name, unknown values last", () => {
  const nodes = [
    { _id: "n3", name: "c", ip: "10.0.0.10", conn: 0, lastseen: 3000 },
    { _id: "n1", name: "a", ip: "10.0.0.9", conn: 1, agct: 1000, osdesc: "Linux" },
    { _id: "n2", name: "B", host: "zeta", conn: 0, osdesc: "Windows" },
  ];
  const names = (list) => list.map((node) => node.name);
  assert.deepEqual(names(sortDevices(nodes)), ["a", "B", "c"]);
  assert.deepEqual(names(sortDevices(nodes, "name", true)), ["c", "B", "a"]);
  assert.deepEqual(names(sortDevices(nodes, "state")), ["a", "B", "c"]);
  assert.deepEqual(names(sortDevices(nodes, "state", true)), ["B", "c", "a"]);
  assert.deepEqual(names(sortDevices(nodes, "address")), ["a", "c", "B"],
    "10.0.0.9 before 10.0.0.10, then host names");
  assert.deepEqual(names(sortDevices(nodes, "os")), ["a", "B", "c"]);
  assert.deepEqual(names(sortDevices(nodes, "os", true)), ["B", "a", "c"], "no OS stays last");
  assert.deepEqual(names(sortDevices(nodes, "since")), ["a", "c", "B"]);
  assert.deepEqual(names(sortDevices(nodes, "since", true)), ["c", "a", "B"]);
  assert.equal(nodes[0].name, "c", "the input is not reordered");
});

test("deviceSince reads connect time when online and last seen otherwise", () => {
  assert.equal(deviceSince({ conn: 1, agct: 5, lastseen: 9 }), 5);
  assert.equal(deviceSince({ conn: 0, agct: 5, lastseen: "1970-01-01T00:00:01Z" }), 1000);
  assert.equal(deviceSince({ conn: 0 }), 0);
  assert.equal(deviceSince({ conn: 0, lastseen: "garbage" }), 0);
});

test("windowRange gives the rows in view with overscan, clamped to the list", () => {
  const rows = { count: 5000, rowHeight: 40, height: 800, overscan: 5 };
  assert.deepEqual(windowRange({ ...rows, top: 100 }), { start: 0, end: 23 });
  assert.deepEqual(windowRange({ ...rows, top: -4000 }), { start: 95, end: 125 });
  assert.deepEqual(windowRange({ ...rows, top: -5000 * 40 + 200 }), { start: 4990, end: 5000 });
  assert.deepEqual(windowRange({ ...rows, top: -5000 * 40 - 900 }), { start: 5000, end: 5000 });
  assert.deepEqual(windowRange({ ...rows, top: 2000 }), { start: 0, end: 0 });
  assert.deepEqual(windowRange({ ...rows, count: 0, top: 0 }), { start: 0, end: 0 });
  assert.deepEqual(windowRange({ ...rows, rowHeight: 0, top: 0 }), { start: 0, end: 0 });
  assert.deepEqual(windowRange({ ...rows, top: Number.NaN }), { start: 0, end: 0 });
});

test("noticeText names one, a few, or two and a count", () => {
  assert.equal(noticeText(["web-1"], true), "web-1 connected");
  assert.equal(noticeText([undefined], false), "A device disconnected");
  assert.equal(noticeText(["a", "b", "c"], true), "a, b and c connected");
  assert.equal(noticeText(["a", "b", "c", "d", "e"], false), "a, b and 3 other devices disconnected");
});

test("connection notices are gathered: a burst is one toast per direction", () => {
  const timers = new FakeTimers();
  const shown = [];
  const notices = new ConnectionNotices((text, kind) => shown.push([text, kind]),
    { delayMs: 500, timers });
  for (let n = 0; n < 1000; n += 1) notices.add(`node//${n}`, `h${n}`, true);
  notices.add("node//5", "h5", false);  // went away again meanwhile: counted once, as down
  assert.equal(shown.length, 0);
  timers.advance(499);
  assert.equal(shown.length, 0);
  timers.advance(1);
  assert.deepEqual(shown, [["h0, h1 and 997 other devices connected", "ok"],
    ["h5 disconnected", "warn"]]);
  notices.add("node//7", "h7", false);
  timers.advance(500);
  assert.deepEqual(shown[2], ["h7 disconnected", "warn"]);
  assert.equal(timers.queue.size, 0);
});

test("the model indexes devices by group through every kind of change", () => {
  const model = new DeviceModel();
  model.load([{ _id: "mesh//a", name: "A" }, { _id: "mesh//b", name: "B" }],
    { "mesh//a": fleet(50, "mesh//a"), "mesh//b": [{ _id: "node//b1", name: "b1" }] });
  assert.equal(model.nodesOf("mesh//a").length, 50);
  model.applyEvent({ action: "addnode", node: { _id: "node//new", name: "new", meshid: "mesh//b" } });
  assert.deepEqual(model.devicesOf("mesh//b").map((node) => node.name), ["b1", "new"]);
  model.applyEvent({ action: "nodemeshchange", nodeid: "node//3", newMeshId: "mesh//b" });
  assert.equal(model.nodesOf("mesh//a").length, 49);
  assert.equal(model.nodesOf("mesh//b").length, 3);
  model.applyEvent({ action: "removenode", nodeid: "node//new" });
  assert.equal(model.nodesOf("mesh//b").length, 2);
  model.merge({ "mesh//a": [{ _id: "node//b1", name: "b1 again" }] });
  assert.equal(model.nodesOf("mesh//b").length, 1, "a merged record moves groups too");
  assert.equal(model.nodesOf("mesh//a").length, 50);
  model.applyEvent({ action: "deletemesh", meshid: "mesh//a" });
  assert.equal(model.nodesOf("mesh//a").length, 0);
  assert.equal(model.nodes.size, 1);
  model.load([], {});
  assert.equal(model.nodesOf("mesh//b").length, 0);
});
