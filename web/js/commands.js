// Running a shell script on a device through `runcommands` with `reply: true`.
//
// The server forwards the script to the agent; the agent streams every output chunk to
// this session as `{action:"msg", type:"console", value, nodeid}` and ends with
// `{action:"msg", type:"runcommands", result:<all output>, responseid, nodeid}`.
// A refusal (agent not connected, no right) is `{action:"runcommands", responseid,
// result:<error>}` instead.

import { ControlError } from "./control.js";

export const COMMAND_TIMEOUT_MS = 10 * 60 * 1000;
export const MAX_SCRIPT = 65535;

// Which frames answer a runcommands request with reply: the output, or a refusal.
export function isRunReply(message) {
  return (message.action === "msg" && message.type === "runcommands") ||
    (message.action === "runcommands" && !/^ok$/i.test(String(message.result ?? "")));
}

// Resolve with the whole output of `cmds` run on `nodeid`; `onOutput(text)` hears the
// chunks as they come.  A refusal rejects with a ControlError carrying the server's text.
export async function runCommand(client, nodeid, cmds, {
  onOutput, type = 0, runAsUser = 0, timeoutMs = COMMAND_TIMEOUT_MS } = {}) {
  if (typeof cmds !== "string" || !cmds.trim()) throw new ControlError("Enter a command to run");
  if (cmds.length > MAX_SCRIPT) {
    throw new ControlError(`A script has at most ${MAX_SCRIPT} characters`);
  }
  const off = client.on("msg", (message) => {
    if (message.type === "console" && message.nodeid === nodeid &&
        typeof message.value === "string") onOutput?.(message.value);
  });
  try {
    const reply = await client.request("runcommands",
      { nodeids: [nodeid], type, cmds, runAsUser, reply: true },
      { accepts: isRunReply, timeoutMs });
    if (reply.action === "runcommands") {
      throw new ControlError(String(reply.result ?? "The command was refused"), reply);
    }
    return typeof reply.result === "string" ? reply.result : String(reply.result ?? "");
  } finally {
    off();
  }
}
