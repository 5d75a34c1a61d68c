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

// --- Intel AMT-only device groups and a device's AMT credentials ----------------------

export const MESHTYPE_AMT_ONLY = 1;
export const MESHTYPE_AGENT = 2;
export const MESHRIGHT_MANAGECOMPUTERS = 0x4;
const CIRA_USER_LENGTH = 16;
const AMT_FIELD_MAX = 64;  // what `changedevice` stores (control/actions/devices.py)

export function isAmtOnlyGroup(mesh) {
  return Number(mesh?.mtype) === MESHTYPE_AMT_ONLY;
}

// The CIRA user name of a group, as the server derives it (mps/cira.py cira_username):
// the id's suffix with "@" and "$" made "X", 16 characters; "" if the id is too short.
export function ciraUserName(meshid) {
  const parts = typeof meshid === "string" ? meshid.split("/") : [];
  if (parts.length < 3 || parts[0] !== "mesh") return "";
  const name = parts.slice(2).join("/").replace(/[@$]/g, "X").slice(0, CIRA_USER_LENGTH);
  return name.length === CIRA_USER_LENGTH ? name : "";
}

// A word for a POSIX shell: as is when plainly safe, else in single quotes.
export function shellQuote(word) {
  const text = String(word);
  if (/^[A-Za-z0-9_./:=@%+-]+$/.test(text)) return text;
  return `'${text.replace(/'/g, "'\\''")}'`;
}

// The shell command (on the server) that issues a group's CIRA password: no control
// action does, so the password never travels over a browser session.
export function ciraCredentialsCommand(meshid) {
  return `meshd-admin ciracredentials ${shellQuote(meshid)}`;
}

// May these device rights change the device's Intel AMT credentials (`changedevice`).
export function mayManageAmt(rights) {
  const bits = (Number(rights) || 0) >>> 0;
  return bits === FULL_RIGHTS || (bits & MESHRIGHT_MANAGECOMPUTERS) !== 0;
}

// What the page may say of a device's stored credentials: the user, and whether a
// password is set (the server sends `pass: 1`, never the password).
export function amtCredentials(node) {
  const amt = node?.intelamt;
  if (!amt || typeof amt !== "object") return { user: "", hasPassword: false };
  return { user: typeof amt.user === "string" ? amt.user : "",
    hasPassword: amt.pass !== undefined && amt.pass !== null && amt.pass !== "" };
}

// Why `changedevice` would ignore these credentials ("" if it takes them): the server
// drops them silently, so the page says so first.
export function amtCredentialsError(user, password) {
  if (typeof user !== "string" || typeof password !== "string") return "Enter a user and password";
  if (!user) return "Enter the Intel AMT user name";
  if (!password) return "Enter the Intel AMT password";
  if (user.length > AMT_FIELD_MAX) return `The user name is longer than ${AMT_FIELD_MAX} characters`;
  if (password.length > AMT_FIELD_MAX) {
    return `The password is longer than ${AMT_FIELD_MAX} characters`;
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(user)) return "The user name has control characters";
  return "";
}
