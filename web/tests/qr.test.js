import assert from "node:assert/strict";
import { test } from "node:test";

import { QUIET_ZONE, qrPath } from "../js/qr.js";

test("dark modules become one rectangle per run in a row, inside the quiet zone", () => {
  const grid = ["X.XX", "....", "XXXX", "...X"];
  const path = qrPath(4, (row, col) => grid[row][col] === "X", 1);
  assert.equal(path, "M1 1h1v1h-1zM3 1h2v1h-2zM1 3h4v1h-4zM4 4h1v1h-1z");
  assert.equal(qrPath(2, () => false), "");
  assert.equal(qrPath(1, () => true), `M${QUIET_ZONE} ${QUIET_ZONE}h1v1h-1z`);
});
