import assert from "node:assert/strict";
import { test } from "node:test";

import { deviceHref, parseRoute, rememberRoute, takeRememberedRoute } from "../js/route.js";

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

class FakeStorage {
  constructor() { this.items = new Map(); }
  getItem(key) { return this.items.has(key) ? this.items.get(key) : null; }
  setItem(key, value) { this.items.set(key, String(value)); }
  removeItem(key) { this.items.delete(key); }
}

test("the address at the end of a session is given back once after logging in", () => {
  const storage = new FakeStorage();
  rememberRoute(storage, "#/device/node%2F%2Fabc");
  assert.equal(takeRememberedRoute(storage), "#/device/node%2F%2Fabc");
  assert.equal(takeRememberedRoute(storage), null, "read once");
  for (const bad of ["", "#", "javascript:alert(1)", "https://evil.example/#/x", "#/a b",
    undefined]) {
    rememberRoute(storage, bad);
    assert.equal(takeRememberedRoute(storage), null, String(bad));
  }
  storage.setItem("meshd.returnTo", "//evil.example");
  assert.equal(takeRememberedRoute(storage), null, "a stored value is checked again");
  const broken = { getItem() { throw new Error("denied"); }, setItem() { throw new Error("denied"); } };
  rememberRoute(broken, "#/events");
  assert.equal(takeRememberedRoute(broken), null);
  assert.equal(takeRememberedRoute(undefined), null);
});
