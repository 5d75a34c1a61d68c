// Intel AMT on a device's page: which power buttons a user gets, how the device is
// reachable, and what an `amtpower` event says.  Pure functions (tests/amt.test.js).

export const CONN_AGENT = 1;
export const CONN_CIRA = 2;
export const CONN_AMT_LAN = 4;

export const MESHRIGHT_WAKEDEVICE = 0x40;
export const MESHRIGHT_RESETOFF = 0x40000;
const FULL_RIGHTS = 0xFFFFFFFF;

// The control channel's `poweraction` action types for Intel AMT, with the group right
// the server asks for (control/actions/devices.py: 302 needs wake, the others reset/off).
export const AMT_POWER_ACTIONS = Object.freeze([
  Object.freeze({ id: "on", actiontype: 302, label: "Power on", right: MESHRIGHT_WAKEDEVICE,
    confirm: false }),
  Object.freeze({ id: "off", actiontype: 308, label: "Power off", right: MESHRIGHT_RESETOFF,
    confirm: true }),
  Object.freeze({ id: "reset", actiontype: 310, label: "Reset", right: MESHRIGHT_RESETOFF,
    confirm: true }),
]);

const ACTION_NAMES = { 302: "power on", 308: "power off", 310: "reset" };

export function amtActionName(actiontype) {
  return ACTION_NAMES[Number(actiontype)] ?? `power action ${Number(actiontype) || "?"}`;
}

// Does the device have Intel AMT: a stored `intelamt` record or a CIRA/AMT connection.
export function hasAmt(node) {
  if (!node || typeof node !== "object") return false;
  if (node.intelamt && typeof node.intelamt === "object") return true;
  return ((Number(node.conn) || 0) & (CONN_CIRA | CONN_AMT_LAN)) !== 0;
}

function linkRights(links, id) {
  if (!links || typeof links !== "object" || typeof id !== "string") return 0;
  const link = links[id];
  return link && typeof link === "object" ? (Number(link.rights) || 0) >>> 0 : 0;
}

// The user's rights on a device, as the server works them out for the user's own links:
// the group's link OR the device's own link (the group's list of users counts too),
// less the account's `removeRights`.  User groups are not known here.
export function deviceRights(user, node, mesh) {
  if (!user || !node) return 0;
  let rights = linkRights(user.links, node.meshid) | linkRights(user.links, node._id);
  if (mesh && typeof user._id === "string") rights |= linkRights(mesh.links, user._id);
  rights >>>= 0;
  const remove = (Number(user.removeRights) || 0) >>> 0;
  if (rights && remove) rights = (rights & ~remove) >>> 0;
  return rights;
}

// The power actions to offer: none without Intel AMT, else those the rights allow.
export function amtPowerActions(node, rights) {
  if (!hasAmt(node)) return [];
  const bits = (Number(rights) || 0) >>> 0;
  return AMT_POWER_ACTIONS.filter((action) => bits === FULL_RIGHTS || (bits & action.right));
}

// How Intel AMT is reachable, for the device's facts ("" for a device without AMT).
export function amtConnection(node) {
  if (!hasAmt(node)) return "";
  const conn = Number(node.conn) || 0;
  const ways = [];
  if (conn & CONN_CIRA) ways.push("connected over CIRA");
  if (conn & CONN_AMT_LAN) ways.push("reachable on the local network");
  if (!ways.length) return "Not connected (no CIRA connection)";
  const text = ways.join(", ");
  return text[0].toUpperCase() + text.slice(1);
}

// A device's `amtpower` event → {text, kind} for a toast, or null for other events.
export function amtPowerOutcome(event, deviceName) {
  if (!event || typeof event !== "object" || event.action !== "amtpower") return null;
  const ok = event.result === "ok";
  const name = typeof deviceName === "string" && deviceName ? `${deviceName}: ` : "";
  const msg = typeof event.msg === "string" && event.msg ? event.msg
    : `Intel AMT ${amtActionName(event.actiontype)} ${ok ? "done" : "failed"}`;
  return { text: `${name}${msg}`, kind: ok ? "ok" : "error" };
}
