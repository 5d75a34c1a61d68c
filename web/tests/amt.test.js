import assert from "node:assert/strict";
import { test } from "node:test";

import {
  AMT_POWER_ACTIONS, MESHRIGHT_RESETOFF, MESHRIGHT_WAKEDEVICE, amtConnection, amtCredentials,
  amtCredentialsError, amtPowerActions, amtPowerOutcome, ciraCredentialsCommand, ciraUserName,
  deviceRights, hasAmt, isAmtOnlyGroup, mayManageAmt, shellQuote,
} from "../js/amt.js";

const ids = (actions) => actions.map((action) => action.id);

test("a device has Intel AMT with an intelamt record or a CIRA or AMT connection", () => {
  assert.equal(hasAmt({ intelamt: { user: "admin" } }), true);
  assert.equal(hasAmt({ intelamt: {}, conn: 0 }), true);
  assert.equal(hasAmt({ conn: 2 }), true);
  assert.equal(hasAmt({ conn: 4 }), true);
  assert.equal(hasAmt({ conn: 1 }), false);
  assert.equal(hasAmt({ conn: 1, intelamt: "yes" }), false);
  assert.equal(hasAmt({}), false);
  assert.equal(hasAmt(null), false);
});

test("the power actions are 302, 308 and 310; off and reset ask first", () => {
  assert.deepEqual(AMT_POWER_ACTIONS.map((a) => [a.id, a.actiontype, a.right, a.confirm]), [
    ["on", 302, 0x40, false], ["off", 308, 0x40000, true], ["reset", 310, 0x40000, true]]);
});

test("which AMT buttons show depends on Intel AMT and the rights", () => {
  const amt = { _id: "node//a", conn: 2 };
  assert.deepEqual(ids(amtPowerActions(amt, 0xFFFFFFFF)), ["on", "off", "reset"]);
  assert.deepEqual(ids(amtPowerActions(amt, -1)), ["on", "off", "reset"]);
  assert.deepEqual(ids(amtPowerActions(amt, MESHRIGHT_WAKEDEVICE)), ["on"]);
  assert.deepEqual(ids(amtPowerActions(amt, MESHRIGHT_RESETOFF)), ["off", "reset"]);
  assert.deepEqual(ids(amtPowerActions(amt, MESHRIGHT_WAKEDEVICE | MESHRIGHT_RESETOFF | 8)),
    ["on", "off", "reset"]);
  // Remote control, "no files" (0x400): no power rights.
  assert.deepEqual(ids(amtPowerActions(amt, 0x8 | 0x400)), []);
  assert.deepEqual(ids(amtPowerActions(amt, 0)), []);
  assert.deepEqual(ids(amtPowerActions(amt, undefined)), []);
  // No Intel AMT: no buttons, whatever the rights.
  assert.deepEqual(ids(amtPowerActions({ conn: 1 }, 0xFFFFFFFF)), []);
  assert.deepEqual(ids(amtPowerActions({ intelamt: { user: "" } }, 0xFFFFFFFF)),
    ["on", "off", "reset"]);
});

test("the rights on a device come from the user's and the group's links", () => {
  const node = { _id: "node//n", meshid: "mesh//m" };
  const mesh = { _id: "mesh//m", links: { "user//bob": { rights: 0x40 } } };
  assert.equal(deviceRights({ _id: "user//a", links: { "mesh//m": { rights: 4294967295 } } },
    node, mesh), 0xFFFFFFFF);
  assert.equal(deviceRights({ _id: "user//bob" }, node, mesh), 0x40);
  assert.equal(deviceRights({ _id: "user//c", links: { "node//n": { rights: 0x40000 } } },
    node, mesh), 0x40000);
  assert.equal(deviceRights({ _id: "user//c", links: { "mesh//m": { rights: 8 },
    "node//n": { rights: 0x40 } } }, node, mesh), 0x48);
  assert.equal(deviceRights({ _id: "user//c", links: { "mesh//other": { rights: 8 } } },
    node, mesh), 0);
  assert.equal(deviceRights({ _id: "user//d", removeRights: 0x40000,
    links: { "mesh//m": { rights: 0xFFFFFFFF } } }, node, mesh), 0xFFFBFFFF);
  assert.equal(deviceRights(null, node, mesh), 0);
  assert.equal(deviceRights({ _id: "user//e", links: { "mesh//m": "junk" } }, node, null), 0);
});

test("the CIRA connection state in words", () => {
  assert.equal(amtConnection({ conn: 2 }), "Connected over CIRA");
  assert.equal(amtConnection({ conn: 3 }), "Connected over CIRA");
  assert.equal(amtConnection({ conn: 6 }),
    "Connected over CIRA, reachable on the local network");
  assert.equal(amtConnection({ conn: 4 }), "Reachable on the local network");
  assert.equal(amtConnection({ conn: 0, intelamt: {} }), "Not connected (no CIRA connection)");
  assert.equal(amtConnection({ conn: 1 }), "");
});

test("an amtpower event becomes a toast", () => {
  const ok = { action: "amtpower", nodeid: "node//n", actiontype: 302, result: "ok",
    msg: "Intel AMT power on: Completed with No Error (ReturnValue 0)" };
  assert.deepEqual(amtPowerOutcome(ok), { kind: "ok",
    text: "Intel AMT power on: Completed with No Error (ReturnValue 0)" });
  assert.deepEqual(amtPowerOutcome(ok, "pc1"), { kind: "ok",
    text: "pc1: Intel AMT power on: Completed with No Error (ReturnValue 0)" });
  assert.deepEqual(amtPowerOutcome({ ...ok, result: "failed",
    msg: "Intel AMT reset failed: Intel AMT refused the user name or password" }), {
    kind: "error", text: "Intel AMT reset failed: Intel AMT refused the user name or password" });
  assert.deepEqual(amtPowerOutcome({ action: "amtpower", actiontype: 308, result: "failed" }),
    { kind: "error", text: "Intel AMT power off failed" });
  assert.deepEqual(amtPowerOutcome({ action: "amtpower", actiontype: 310, result: "ok",
    msg: "<b>x</b>" }), { kind: "ok", text: "<b>x</b>" });
  assert.equal(amtPowerOutcome({ action: "changenode" }), null);
  assert.equal(amtPowerOutcome(null), null);
});

test("an Intel AMT-only group is mtype 1", () => {
  assert.equal(isAmtOnlyGroup({ mtype: 1 }), true);
  assert.equal(isAmtOnlyGroup({ mtype: 2 }), false);
  assert.equal(isAmtOnlyGroup(undefined), false);
});

test("a group's CIRA user name is its id's first 16 characters, @ and $ made X", () => {
  assert.equal(ciraUserName("mesh//f8eM5VPkC$P93u1J@abcdefgh"), "f8eM5VPkCXP93u1J");
  assert.equal(ciraUserName("mesh/dom/@@@@AAAABBBBCCCCDDDD"), "XXXXAAAABBBBCCCC");
  assert.equal(ciraUserName("mesh//short"), "");
  assert.equal(ciraUserName("node//f8eM5VPkC$P93u1Jxx"), "");
  assert.equal(ciraUserName(undefined), "");
});

test("the CIRA credentials command quotes the group id for the shell", () => {
  assert.equal(ciraCredentialsCommand("mesh//abc@def"), "meshd-admin ciracredentials mesh//abc@def");
  assert.equal(ciraCredentialsCommand("mesh//a$b"), "meshd-admin ciracredentials 'mesh//a$b'");
  assert.equal(shellQuote("it's"), "'it'\\''s'");
  assert.equal(shellQuote(""), "''");
});

test("changing AMT credentials needs manage-devices or full rights", () => {
  assert.equal(mayManageAmt(0xFFFFFFFF), true);
  assert.equal(mayManageAmt(-1), true);
  assert.equal(mayManageAmt(0x4), true);
  assert.equal(mayManageAmt(0x8 | 0x40), false);
  assert.equal(mayManageAmt(undefined), false);
});

test("a device's AMT credentials: the user, and only whether a password is set", () => {
  assert.deepEqual(amtCredentials({ intelamt: { user: "admin", pass: 1 } }),
    { user: "admin", hasPassword: true });
  assert.deepEqual(amtCredentials({ intelamt: { user: "admin", pass: "" } }),
    { user: "admin", hasPassword: false });
  assert.deepEqual(amtCredentials({ intelamt: { user: 3 } }), { user: "", hasPassword: false });
  assert.deepEqual(amtCredentials({}), { user: "", hasPassword: false });
  assert.equal(amtCredentialsError("admin", "P@ssw0rd!"), "");
  assert.match(amtCredentialsError("", "x"), /user/);
  assert.match(amtCredentialsError("admin", ""), /password/);
  assert.match(amtCredentialsError("a".repeat(65), "x"), /64/);
  assert.match(amtCredentialsError("a", "x".repeat(65)), /64/);
  assert.match(amtCredentialsError("a\nb", "x"), /control/);
});
