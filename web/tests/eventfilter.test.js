import assert from "node:assert/strict";
import { test } from "node:test";

import { eventKind, eventKindLabel, eventTime, filterEvents } from "../js/eventfilter.js";

const NOW = Date.parse("2026-03-01T12:00:00Z");
const EVENTS = [
  { etype: "node", action: "runcommands", msg: "Running commands on web-1", username: "admin",
    time: "2026-03-01T11:59:00Z" },
  { etype: "relay", action: "relaylog", msg: "Started terminal session", username: "bob",
    time: NOW - 2 * 3600 * 1000 },
  { etype: "mesh", action: "createmesh", msg: "Device group created: Servers",
    username: "admin", time: { $$date: NOW - 2 * 86400 * 1000 } },
  { etype: "ugrp", action: "createusergroup", msg: "User group created: ops", username: "admin",
    time: "2026-02-01T00:00:00Z" },
  { etype: "user", action: "login", msg: "Account login from 10.0.0.1", username: "bob",
    time: "2026-03-01T11:00:00Z" },
  { etype: "user", action: "authfail", msg: "Failed login attempt from 10.9.9.9",
    username: "mallory", time: "2026-03-01T11:30:00Z" },
  { action: "servermsg", msg: "Server started", time: "not a time" },
];

const messages = (list) => list.map((event) => event.msg);

test("events have a kind by what they are about", () => {
  assert.deepEqual(EVENTS.map(eventKind),
    ["device", "device", "group", "group", "user", "user", "other"]);
  assert.equal(eventKindLabel(EVENTS[2]), "Group");
  assert.equal(eventKindLabel(EVENTS[6]), "Server");
  assert.equal(eventTime(EVENTS[2]), NOW - 2 * 86400 * 1000);
  assert.ok(Number.isNaN(eventTime(EVENTS[6])));
});

test("filtering by kind, failed logins, age and words, in the log's order", () => {
  const only = (filter) => messages(filterEvents(EVENTS, { now: NOW, ...filter }));
  assert.equal(only({}).length, EVENTS.length);
  assert.deepEqual(only({ kind: "device" }),
    ["Running commands on web-1", "Started terminal session"]);
  assert.deepEqual(only({ kind: "group" }),
    ["Device group created: Servers", "User group created: ops"]);
  assert.deepEqual(only({ kind: "failure" }), ["Failed login attempt from 10.9.9.9"]);
  assert.deepEqual(only({ period: "hour" }), ["Running commands on web-1",
    "Account login from 10.0.0.1", "Failed login attempt from 10.9.9.9"]);
  assert.equal(only({ period: "day" }).length, 4);
  assert.equal(only({ period: "week" }).length, 5, "an event without a time is not recent");
  assert.deepEqual(only({ query: "BOB" }), ["Started terminal session",
    "Account login from 10.0.0.1"]);
  assert.deepEqual(only({ kind: "user", query: "10.0" }), ["Account login from 10.0.0.1"]);
  assert.deepEqual(only({ kind: "user", period: "hour", query: "nothing" }), []);
  assert.equal(filterEvents(EVENTS, { limit: 2 }).length, 2);
});
