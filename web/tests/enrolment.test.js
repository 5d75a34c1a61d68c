import assert from "node:assert/strict";
import { test } from "node:test";

import {
  FEATURE_FORCE_2FA, enrolCodeProblem, expiresIn, forcesTwoFactor, hasSecondFactor,
  mustEnrol, normalEnrolCode, setupErrorText,
} from "../js/accounts.js";

// MeshCentral's default feature bits (meshd.control.DEFAULT_FEATURES), above 2^31.
const DEFAULT_FEATURES = 2148669952;

test("the force2factor feature bit is read from serverinfo", () => {
  assert.equal(FEATURE_FORCE_2FA, 0x40000);
  assert.equal(forcesTwoFactor({ features: DEFAULT_FEATURES }), false);
  assert.equal(forcesTwoFactor({ features: DEFAULT_FEATURES + 0x1000 + 0x40000 }), true);
  assert.equal(forcesTwoFactor({ features: 0x40000 }), true);
  assert.equal(forcesTwoFactor({ features: "x" }), false);
  assert.equal(forcesTwoFactor({}), false);
  assert.equal(forcesTwoFactor(null), false);
});

test("second factors as userinfo marks them", () => {
  assert.equal(hasSecondFactor({ otpsecret: 1 }), true);
  assert.equal(hasSecondFactor({ otphkeys: 2 }), true);
  assert.equal(hasSecondFactor({ otphkeys: 0 }), false);
  assert.equal(hasSecondFactor({ otpkeys: 1 }), true);
  assert.equal(hasSecondFactor({ otpkeys: 0 }), false);
  assert.equal(hasSecondFactor({ name: "bob" }), false);
  assert.equal(hasSecondFactor(null), false);
});

test("enrolment only when the server forces it and the account has no factor", () => {
  const forced = { features: DEFAULT_FEATURES + 0x41000 };
  assert.equal(mustEnrol(forced, { name: "bob" }), true);
  assert.equal(mustEnrol(forced, { name: "bob", otpsecret: 1 }), false);
  assert.equal(mustEnrol({ features: DEFAULT_FEATURES }, { name: "bob" }), false);
  // Before serverinfo arrives nothing is known: not enrolment-only.
  assert.equal(mustEnrol(null, { name: "bob" }), false);
  assert.equal(mustEnrol(undefined, {}), false);
});

test("enrolment codes: what is typed is checked and tidied", () => {
  assert.equal(enrolCodeProblem("ABCD-EFGH-JKLM-NPQR"), "");
  assert.equal(enrolCodeProblem(" abcd efgh jklm npqr "), "");
  assert.equal(enrolCodeProblem("ABCDEFGHJKLMNPQR"), "");
  assert.match(enrolCodeProblem(""), /Enter the enrolment code/);
  assert.match(enrolCodeProblem("  - "), /Enter the enrolment code/);
  assert.match(enrolCodeProblem("ABCD-EFGH"), /16 letters and digits/);
  assert.match(enrolCodeProblem("ABCD-EFGH-JKLM-NPQ!"), /only letters and digits/);
  assert.equal(normalEnrolCode("abcd efgh-jklm npqr"), "ABCD-EFGH-JKLM-NPQR");
  assert.equal(normalEnrolCode(""), "");
  assert.equal(normalEnrolCode(null), "");
});

test("the server's reasons for a refused enrolment read as advice", () => {
  assert.match(setupErrorText("Invalid enrolment code"),
    /^Invalid enrolment code\. The code is wrong, has expired or was already used/);
  assert.equal(setupErrorText("Invalid password"),
    "Invalid password. The current password is not correct.");
  assert.match(setupErrorText("Invalid token"), /^Invalid token\. Enter the code the app/);
  assert.equal(setupErrorText("Too many failed attempts, try again later"),
    "Too many failed attempts, try again later.");
  assert.match(setupErrorText("Unknown secret, request a new one"), /start again/);
  assert.equal(setupErrorText("Something new."), "Something new.");
  assert.equal(setupErrorText(undefined), "The code was not accepted.");
  assert.equal(setupErrorText({ msg: "x" }), "The code was not accepted.");
});

test("an expiry reads as how long is left", () => {
  const now = 1_700_000_000_000;
  assert.equal(expiresIn(now + 24 * 3600_000, now), "in 24 hours");
  assert.equal(expiresIn(now + 90 * 60_000, now), "in 90 minutes");
  assert.equal(expiresIn(now + 60_000, now), "in 1 minute");
  assert.equal(expiresIn(now + 10_000, now), "in less than a minute");
  assert.equal(expiresIn(now + 3 * 24 * 3600_000, now), "in 3 days");
  assert.equal(expiresIn(now - 1, now), "expired");
  assert.equal(expiresIn("soon", now), "");
});
