import assert from "node:assert/strict";
import { test } from "node:test";

import {
  SHARE_DURATIONS, mayShare, shareRequest, shareRow, shareWindow, shareableParts, sharedText,
} from "../js/guestlinks.js";

test("guest links need remote control and guest sharing, or full rights", () => {
  assert.deepEqual(shareableParts(0xFFFFFFFF), [1, 4]);
  assert.deepEqual(shareableParts(-1), [1, 4]);
  assert.deepEqual(shareableParts(0x8 | 0x80000), [1, 4]);
  assert.deepEqual(shareableParts(0x8 | 0x80000 | 0x200), [4]);
  assert.deepEqual(shareableParts(0x8 | 0x80000 | 0x400), [1]);
  assert.deepEqual(shareableParts(0x8 | 0x80000 | 0x600), []);
  assert.deepEqual(shareableParts(0x8 | 0x80000 | 0x1000), []);
  assert.equal(mayShare(0x8), false);
  assert.equal(mayShare(0x80000), false);
  assert.equal(mayShare(0), false);
  assert.equal(mayShare(undefined), false);
  assert.equal(mayShare(0x8 | 0x80000), true);
});

test("a new link's request: p bits, trimmed guest name, expire in minutes", () => {
  assert.deepEqual(shareRequest({ nodeid: "node//a", guestname: " Ann ", terminal: true,
    files: true, minutes: "60" }), { fields: { nodeid: "node//a", guestname: "Ann", p: 5,
    consent: 0, expire: 60 } });
  assert.equal(shareRequest({ nodeid: "n", guestname: "x", files: true, minutes: 0 })
    .fields.p, 4);
  assert.equal(shareRequest({ nodeid: "n", guestname: "x", terminal: true, minutes: 0 })
    .fields.expire, 0);
  assert.match(shareRequest({ nodeid: "n", guestname: "  ", terminal: true, minutes: 0 })
    .error, /name/);
  assert.match(shareRequest({ nodeid: "n", guestname: "x".repeat(129), terminal: true,
    minutes: 0 }).error, /128/);
  assert.match(shareRequest({ nodeid: "n", guestname: "x", minutes: 0 }).error, /terminal/);
  assert.match(shareRequest({ nodeid: "n", guestname: "x", terminal: true, minutes: -1 })
    .error, /long/);
  assert.match(shareRequest({ nodeid: "n", guestname: "x", terminal: true, minutes: 1.5 })
    .error, /long/);
  assert.ok(SHARE_DURATIONS.every(([minutes]) => !shareRequest({ nodeid: "n",
    guestname: "x", terminal: true, minutes }).error));
});

test("what a link shares reads as words", () => {
  assert.equal(sharedText(1), "Terminal");
  assert.equal(sharedText(4), "Files");
  assert.equal(sharedText(5), "Terminal and files");
  assert.equal(sharedText(7), "Terminal, desktop and files");
  assert.equal(sharedText(0), "Nothing");
  assert.equal(sharedText("x"), "Nothing");
});

test("a link's window: unlimited, until its end, or recurring", () => {
  assert.equal(shareWindow({}), "No time limit");
  assert.equal(shareWindow({ startTime: 0, expireTime: Date.UTC(2030, 0, 2) }, "en-GB"),
    `Until ${new Date(Date.UTC(2030, 0, 2)).toLocaleString("en-GB")}`);
  assert.match(shareWindow({ recurring: 1, startTime: 0, duration: 30 }), /^Every day .* 30 min$/);
  assert.match(shareWindow({ recurring: 2, startTime: 0, duration: 5 }), /^Every week/);
});

test("a listed link keeps only safe values: an http(s) URL or none", () => {
  assert.deepEqual(shareRow({ publicid: "abc", guestName: "<b>Ann</b>", p: 1, viewOnly: true,
    url: "https://host/sharing?c=x" }), { publicid: "abc", guest: "<b>Ann</b>",
    what: "Terminal (view only)", window: "No time limit", url: "https://host/sharing?c=x" });
  assert.equal(shareRow({ url: "javascript:alert(1)" }).url, "");
  assert.equal(shareRow({ publicid: 5 }).publicid, "");
  assert.equal(shareRow(null).guest, "");
});
