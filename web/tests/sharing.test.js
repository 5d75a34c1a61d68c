import assert from "node:assert/strict";
import { test } from "node:test";

import { describeWindow, sharedPanels } from "../js/sharing.js";

test("the guest page opens the panels its link shares", () => {
  assert.deepEqual(sharedPanels({ terminal: true, files: true, desktop: true }),
    [["terminal", "Terminal"], ["files", "Files"]]);
  assert.deepEqual(sharedPanels({ files: true }), [["files", "Files"]]);
  assert.deepEqual(sharedPanels({ desktop: true }), []);
});

test("the guest page says how long the link lasts", () => {
  assert.equal(describeWindow({ end: null }), "No time limit");
  const end = Date.UTC(2030, 0, 2, 3, 4, 5);
  assert.equal(describeWindow({ end }, "en-US"),
    `Until ${new Date(end).toLocaleString("en-US")}`);
});
