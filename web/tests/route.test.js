import assert from "node:assert/strict";
import { test } from "node:test";

import { deviceHref, parseRoute } from "../js/route.js";

const VIEWS = ["devices", "events", "users", "account"];

test("views are read from the fragment", () => {
  assert.deepEqual(parseRoute("#/events", VIEWS), { view: "events" });
  assert.deepEqual(parseRoute("#users", VIEWS), { view: "users" });
  assert.deepEqual(parseRoute("", VIEWS), { view: "devices" });
  assert.deepEqual(parseRoute("#/nothing", VIEWS), { view: "devices" });
  assert.deepEqual(parseRoute(undefined, VIEWS), { view: "devices" });
});

test("a device address carries its node id, percent-encoded", () => {
  const id = "node//a$b@c/d+e";
  const href = deviceHref(id);
  assert.equal(href, "#/device/node%2F%2Fa%24b%40c%2Fd%2Be");
  assert.deepEqual(parseRoute(href, VIEWS), { view: "device", nodeid: id });
  assert.deepEqual(parseRoute("#/device/", VIEWS), { view: "devices" });
  assert.deepEqual(parseRoute("#/device", VIEWS), { view: "devices" });
  assert.deepEqual(parseRoute("#/device/%E0%A4%A", VIEWS), { view: "devices" });
});
