import assert from "node:assert/strict";
import { test } from "node:test";

import {
  FULL_ADMIN, MESH_PRESETS, MESH_RIGHTS, UserList, canManageUsers, groupMembers, groupSecret,
  isFullAdmin, meshRightsText, parseOtpauth, passwordProblem, presetOf, rightsFromBits,
  siteRightsText, userNameProblem,
} from "../js/accounts.js";

test("only full administrators and user managers manage users", () => {
  assert.equal(canManageUsers({ siteadmin: FULL_ADMIN }), true);
  assert.equal(canManageUsers({ siteadmin: 2 }), true);
  assert.equal(canManageUsers({ siteadmin: 0x40 | 2 }), true);
  assert.equal(canManageUsers({ siteadmin: 0x40 }), false);
  assert.equal(canManageUsers({}), false);
  assert.equal(canManageUsers(null), false);
  assert.equal(isFullAdmin({ siteadmin: -1 }), true);  // the same 32 bits
  assert.equal(isFullAdmin({ siteadmin: 2 }), false);
});

test("site rights read as words", () => {
  assert.equal(siteRightsText(FULL_ADMIN), "Site administrator");
  assert.equal(siteRightsText(0), "Standard user");
  assert.equal(siteRightsText(undefined), "Standard user");
  assert.equal(siteRightsText(2 | 0x40), "manage users, no new groups");
  assert.equal(siteRightsText(0x100000), "Site rights 0x100000");
});

test("user names follow the server's rules", () => {
  assert.equal(userNameProblem("alice"), "");
  assert.equal(userNameProblem("Bob.Smith-2"), "");
  assert.match(userNameProblem(""), /Enter/);
  for (const bad of ["a b", 'a"b', "a,b", "a/b", "a\\b", "a\tb"]) {
    assert.match(userNameProblem(bad), /may not contain/, bad);
  }
  assert.match(userNameProblem("~token"), /may not start/);
  assert.match(userNameProblem("x".repeat(65)), /at most 64/);
});

test("passwords need eight characters and a matching confirmation", () => {
  assert.equal(passwordProblem("12345678"), "");
  assert.equal(passwordProblem("12345678", "12345678"), "");
  assert.match(passwordProblem("1234567"), /at least 8/);
  assert.match(passwordProblem("x".repeat(257)), /at most 256/);
  assert.match(passwordProblem("12345678", "12345679"), /differ/);
  assert.match(passwordProblem(undefined), /at least/);
});

test("the user list follows account events", () => {
  const list = new UserList();
  let changes = 0;
  list.onChange(() => { changes += 1; });
  assert.equal(list.applyEvent({ action: "accountcreate", account: { _id: "user//x" } }), false,
    "events before the list is loaded are ignored (the load brings them)");
  list.load([{ _id: "user//zed", name: "zed" }, { _id: "user//Amy", name: "Amy" }, null, { name: "no id" }]);
  assert.deepEqual(list.sorted().map((u) => u.name), ["Amy", "zed"]);
  assert.equal(list.applyEvent({ action: "accountcreate",
    account: { _id: "user//bob", name: "bob", email: "b@x.org" } }), true);
  assert.deepEqual(list.sorted().map((u) => u.name), ["Amy", "bob", "zed"]);
  assert.equal(list.applyEvent({ action: "accountchange",
    account: { _id: "user//bob", name: "bob", siteadmin: 2 } }), true);
  assert.equal(list.users.get("user//bob").siteadmin, 2);
  assert.equal(list.users.get("user//bob").email, "b@x.org");
  assert.equal(list.applyEvent({ action: "accountremove", userid: "user//bob" }), true);
  assert.equal(list.applyEvent({ action: "accountremove", userid: "user//bob" }), false);
  assert.equal(list.applyEvent({ action: "nodeconnect", nodeid: "n" }), false);
  assert.equal(list.applyEvent({ action: "accountchange" }), false);
  assert.deepEqual(list.sorted().map((u) => u.name), ["Amy", "zed"]);
  assert.equal(changes, 4);
});

test("an otpauth key URI gives its secret, issuer and account", () => {
  const key = parseOtpauth("otpauth://totp/meshd%20server:alice@x?secret=JBSWY3DPEHPK3PXP" +
    "&period=30&digits=6&algorithm=SHA1&issuer=meshd%20server");
  assert.deepEqual(key, { secret: "JBSWY3DPEHPK3PXP", issuer: "meshd server",
    account: "alice@x", digits: 6, period: 30 });
  assert.equal(parseOtpauth("otpauth://totp/bob?secret=abcd").issuer, "");
  assert.equal(parseOtpauth("otpauth://totp/bob?secret=abcd").secret, "ABCD");
  for (const bad of ["", null, "https://x/?secret=ABCD", "otpauth://totp/x?secret=0189",
    "otpauth://totp/x?nosecret=1", "otpauth://totp/%E0%A4%A?secret=ABCD"]) {
    assert.equal(parseOtpauth(bad), null, String(bad));
  }
});

test("secrets are shown in groups of four", () => {
  assert.equal(groupSecret("jbswy3dpehpk3pxpq"), "JBSW Y3DP EHPK 3PXP Q");
  assert.equal(groupSecret(""), "");
});

test("group rights read as presets or words", () => {
  assert.equal(meshRightsText(FULL_ADMIN), "Full administrator");
  assert.equal(meshRightsText(-1), "Full administrator");
  assert.equal(meshRightsText(0), "No rights");
  assert.equal(meshRightsText(0x8 | 0x100 | 0x200 | 0x400 | 0x100000), "View only");
  assert.equal(meshRightsText(0x8 | 0x10), "Remote control, Agent console");
  assert.equal(meshRightsText(0x400000), "Rights 0x400000");
  assert.equal(presetOf(FULL_ADMIN), "full");
  assert.equal(presetOf(0x8 | 0x400 | 0x10000 | 0x100000), "terminal");
  assert.equal(presetOf(0x8), "custom");
  for (const [, , value] of MESH_PRESETS) assert.ok(value > 0 && value <= FULL_ADMIN);
  assert.equal(new Set(MESH_RIGHTS.map(([bit]) => bit)).size, 22);
});

test("rights from checked bits are one unsigned number", () => {
  assert.equal(rightsFromBits([]), 0);
  assert.equal(rightsFromBits([8, "16", 0x100000]), 0x100018);
  assert.equal(rightsFromBits(MESH_RIGHTS.map(([bit]) => bit)), 0x3FFFFF);
  assert.equal(rightsFromBits([0x80000000]), 0x80000000);
});

test("group members come from the group's links, by name", () => {
  const mesh = { links: {
    "user//zed": { name: "zed", rights: FULL_ADMIN },
    "user//alice": { name: "Alice", rights: 8 },
    "ugrp//ops": { name: "ops", rights: -1 },
    "user//noname": { rights: 0 },
    "node//x": { rights: 8 },
    "user//broken": null,
  } };
  assert.deepEqual(groupMembers(mesh), [
    { id: "user//alice", name: "Alice", rights: 8, kind: "user" },
    { id: "user//noname", name: "noname", rights: 0, kind: "user" },
    { id: "ugrp//ops", name: "ops", rights: FULL_ADMIN, kind: "user group" },
    { id: "user//zed", name: "zed", rights: FULL_ADMIN, kind: "user" },
  ]);
  assert.deepEqual(groupMembers({}), []);
  assert.deepEqual(groupMembers(null), []);
});
