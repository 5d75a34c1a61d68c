import assert from "node:assert/strict";
import { test } from "node:test";

import { agentVersion } from "../js/format.js";

test("the agent version combines the core and the build number", () => {
  assert.equal(agentVersion({ agent: { ver: 0, core: "Python core 0.3" } }), "Python core 0.3");
  assert.equal(agentVersion({ agent: { ver: 1655, core: "Mar 1 2024, 12" } }),
    "Mar 1 2024, 12 (agent 1655)");
  assert.equal(agentVersion({ agent: { ver: 1655 } }), "1655");
  assert.equal(agentVersion({ agent: { ver: 0 } }), "");
  assert.equal(agentVersion({}), "");
  assert.equal(agentVersion({ agent: "junk" }), "");
  assert.equal(agentVersion(undefined), "");
});
