import assert from "node:assert/strict";
import { test } from "node:test";

import { describeLogin, describeLogins } from "../js/accounts.js";

test("a login entry in words", () => {
  assert.deepEqual(describeLogin({ t: "2024-05-01T10:00:00.000Z", m: 107,
    a: ["10.0.0.1", "Chrome/120.0", "Linux"] }), {
    time: "2024-05-01T10:00:00.000Z", what: "Logged in", failed: false, address: "10.0.0.1",
    browser: "Chrome/120.0", os: "Linux" });
  assert.deepEqual(describeLogin({ t: "x", m: 110, a: ["::1", "Unknown", "Unknown"] }), {
    time: "x", what: "Wrong password", failed: true, address: "::1", browser: "Unknown",
    os: "Unknown" });
  assert.equal(describeLogin({ m: 108 }).what, "Wrong second factor");
  assert.equal(describeLogin({ m: 108 }).failed, true);
  assert.equal(describeLogin({ m: 109 }).what, "Account locked");
  assert.equal(describeLogin({ m: 107, tn: "ci" }).what, "Logged in (login token ci)");
  assert.equal(describeLogin({ m: 999 }).what, "Event 999");
  assert.deepEqual(describeLogin({ m: 107, a: [{ x: 1 }, null] }),
    { time: "", what: "Logged in", failed: false, address: "", browser: "", os: "" });
  assert.equal(describeLogin(null).what, "Event ?");
});

test("login entries newest first, junk left out", () => {
  const rows = describeLogins([
    { t: "2024-05-01T10:00:00.000Z", m: 107 },
    null,
    { t: "not a time", m: 110 },
    { t: "2024-05-02T10:00:00.000Z", m: 110 },
    { t: "2024-04-30T10:00:00.000Z", m: 107 },
  ]);
  assert.deepEqual(rows.map((row) => [row.time, row.what]), [
    ["2024-05-02T10:00:00.000Z", "Wrong password"],
    ["2024-05-01T10:00:00.000Z", "Logged in"],
    ["2024-04-30T10:00:00.000Z", "Logged in"],
    ["not a time", "Wrong password"],
  ]);
  assert.deepEqual(describeLogins("junk"), []);
  assert.equal(describeLogins(Array.from({ length: 5 }, () => ({ m: 107 })), 3).length, 3);
});
