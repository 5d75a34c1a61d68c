// User accounts as the app shows and edits them: site rights, the user list kept current
// by account events, form checks, and the TOTP key an authenticator app reads.  No DOM
// and no socket (tests/accounts.test.js).

export const FULL_ADMIN = 0xFFFFFFFF;
export const SITE_MANAGE_USERS = 0x2;
export const MIN_PASSWORD = 8;
export const MAX_PASSWORD = 256;
export const MAX_NAME = 64;

const SITE_RIGHTS = [
  [0x1, "server backup"], [0x2, "manage users"], [0x4, "server restore"],
  [0x8, "file access"], [0x10, "server update"], [0x20, "locked"], [0x40, "no new groups"],
  [0x80, "no tools"], [0x100, "user groups"], [0x200, "recordings"],
  [0x400, "locked settings"], [0x800, "all events"], [0x1000, "no new devices"],
];

function rightsOf(user) {
  return (Number(user?.siteadmin) || 0) >>> 0;
}

export function isFullAdmin(user) {
  return rightsOf(user) === FULL_ADMIN;
}

// Who gets the Users view: full administrators and user managers (0x2).
export function canManageUsers(user) {
  return isFullAdmin(user) || (rightsOf(user) & SITE_MANAGE_USERS) !== 0;
}

export function siteRightsText(siteadmin) {
  const bits = (Number(siteadmin) || 0) >>> 0;
  if (bits === FULL_ADMIN) return "Site administrator";
  if (!bits) return "Standard user";
  const names = SITE_RIGHTS.filter(([bit]) => bits & bit).map(([, name]) => name);
  return names.length ? names.join(", ") : `Site rights 0x${bits.toString(16)}`;
}

// A problem with a new user name (the server's rules), or "".
export function userNameProblem(name) {
  const value = String(name ?? "");
  if (!value.length) return "Enter a user name";
  if (value.length > MAX_NAME) return `A user name has at most ${MAX_NAME} characters`;
  if (/[\s",/\\\u0000-\u001f\u007f]/.test(value)) {
    return "A user name may not contain spaces, quotes, commas or slashes";
  }
  if (value.startsWith("~")) return "A user name may not start with ~";
  return "";
}

// A problem with a new password and its confirmation, or "".
export function passwordProblem(password, confirm = password) {
  const value = String(password ?? "");
  if (value.length < MIN_PASSWORD) return `A password needs at least ${MIN_PASSWORD} characters`;
  if (value.length > MAX_PASSWORD) return `A password has at most ${MAX_PASSWORD} characters`;
  if (value !== String(confirm ?? "")) return "The two passwords differ";
  return "";
}

// The accounts of the `users` answer, kept current by account events.
export class UserList {
  constructor() {
    this.users = new Map();
    this.loaded = false;
    this._listeners = new Set();
  }

  onChange(fn) {
    this._listeners.add(fn);
    return () => this._listeners.delete(fn);
  }

  _changed() {
    for (const fn of [...this._listeners]) fn();
  }

  load(users) {
    this.users.clear();
    for (const user of Array.isArray(users) ? users : []) {
      if (user && typeof user._id === "string") this.users.set(user._id, user);
    }
    this.loaded = true;
    this._changed();
  }

  sorted() {
    return [...this.users.values()].sort((a, b) => {
      const left = String(a.name ?? "").toLowerCase();
      const right = String(b.name ?? "").toLowerCase();
      return left < right ? -1 : left > right ? 1 : 0;
    });
  }

  // Apply an event; true when the list changed.
  applyEvent(event) {
    if (!this.loaded || !event || typeof event !== "object") return false;
    if ((event.action === "accountcreate" || event.action === "accountchange") &&
        event.account && typeof event.account._id === "string") {
      const previous = this.users.get(event.account._id) || {};
      this.users.set(event.account._id, { ...previous, ...event.account });
      this._changed();
      return true;
    }
    if (event.action === "accountremove" && this.users.delete(event.userid)) {
      this._changed();
      return true;
    }
    return false;
  }
}

// The parts of an `otpauth://totp/ISSUER:ACCOUNT?secret=…&issuer=…` key, or null.
export function parseOtpauth(url) {
  const match = /^otpauth:\/\/totp\/([^?]*)\?(.*)$/i.exec(String(url ?? ""));
  if (!match) return null;
  let label;
  let params;
  try {
    label = decodeURIComponent(match[1]);
    params = new URLSearchParams(match[2]);
  } catch (error) {
    return null;
  }
  const secret = params.get("secret");
  if (!secret || !/^[A-Z2-7]+=*$/i.test(secret)) return null;
  const colon = label.indexOf(":");
  return {
    secret: secret.toUpperCase(),
    issuer: params.get("issuer") ?? (colon >= 0 ? label.slice(0, colon) : ""),
    account: colon >= 0 ? label.slice(colon + 1) : label,
    digits: Number(params.get("digits") || 6),
    period: Number(params.get("period") || 30),
  };
}

// A base32 secret in groups of four, easier to type into an app by hand.
export function groupSecret(secret) {
  return (String(secret ?? "").toUpperCase().match(/.{1,4}/g) || []).join(" ");
}

// Rights on a device group (`links[...].rights`, `meshadmin`; control-protocol §6.1).
// The "No …" ones take rights away from a user who has remote control.
export const MESH_RIGHTS = [
  [0x1, "Edit group"], [0x2, "Manage users"], [0x4, "Manage devices"],
  [0x8, "Remote control"], [0x10, "Agent console"], [0x20, "Server files"],
  [0x40, "Wake devices"], [0x80, "Edit notes"], [0x100, "Remote view only"],
  [0x200, "No terminal"], [0x400, "No files"], [0x800, "No Intel AMT"],
  [0x1000, "Limited input"], [0x2000, "Only own events"], [0x4000, "Chat and notify"],
  [0x8000, "Uninstall"], [0x10000, "No desktop"], [0x20000, "Run commands"],
  [0x40000, "Reset and power off"], [0x80000, "Guest sharing"],
  [0x100000, "Device details"], [0x200000, "Relay"],
];

// Common sets of group rights, in the order a form offers them.
export const MESH_PRESETS = [
  ["full", "Full administrator", FULL_ADMIN],
  ["remote", "Remote control (terminal, files, commands)",
    0x8 | 0x40 | 0x80 | 0x4000 | 0x20000 | 0x100000],
  ["terminal", "Terminal only", 0x8 | 0x400 | 0x10000 | 0x100000],
  ["files", "Files only", 0x8 | 0x200 | 0x10000 | 0x100000],
  ["view", "View only", 0x8 | 0x100 | 0x200 | 0x400 | 0x100000],
];

export function presetOf(rights) {
  const bits = (Number(rights) || 0) >>> 0;
  return MESH_PRESETS.find(([, , value]) => value >>> 0 === bits)?.[0] ?? "custom";
}

export function meshRightsText(rights) {
  const bits = (Number(rights) || 0) >>> 0;
  if (bits === FULL_ADMIN) return "Full administrator";
  if (!bits) return "No rights";
  const preset = MESH_PRESETS.find(([, , value]) => value >>> 0 === bits);
  if (preset) return preset[1];
  const names = MESH_RIGHTS.filter(([bit]) => bits & bit).map(([, name]) => name);
  return names.length ? names.join(", ") : `Rights 0x${bits.toString(16)}`;
}

// Rights from a set of checked bits (numbers), as the unsigned 32-bit value the server wants.
export function rightsFromBits(bits) {
  let rights = 0;
  for (const bit of bits || []) rights |= Number(bit) || 0;
  return rights >>> 0;
}

// The users (and user groups) linked to a device group, by name: [{id, name, rights, kind}].
export function groupMembers(mesh) {
  const links = mesh?.links && typeof mesh.links === "object" ? mesh.links : {};
  return Object.entries(links)
    .filter(([id, link]) => /^(user|ugrp)\//.test(id) && link && typeof link === "object")
    .map(([id, link]) => ({
      id,
      name: typeof link.name === "string" && link.name ? link.name : id.split("/").pop(),
      rights: (Number(link.rights) || 0) >>> 0,
      kind: id.startsWith("ugrp/") ? "user group" : "user",
    }))
    .sort((a, b) => {
      const left = a.name.toLowerCase();
      const right = b.name.toLowerCase();
      return left < right ? -1 : left > right ? 1 : a.id < b.id ? -1 : 1;
    });
}

// The `previousLogins` answer: msgid → what happened (MeshCentral's login events).
const LOGIN_KINDS = {
  107: ["Logged in", false],
  108: ["Wrong second factor", true],
  109: ["Account locked", true],
  110: ["Wrong password", true],
};

function loginText(value) {
  return typeof value === "string" || typeof value === "number" ? String(value) : "";
}

// One entry `{t, m, a:[ip, browser, os], tn?}` → {time, what, failed, address, browser,
// os, token}; time is the ISO text (or ms number) as sent.
export function describeLogin(entry) {
  const item = entry && typeof entry === "object" ? entry : {};
  const args = Array.isArray(item.a) ? item.a : [];
  const [what, failed] = LOGIN_KINDS[Number(item.m)] ?? [`Event ${loginText(item.m) || "?"}`,
    false];
  const token = loginText(item.tn);
  return {
    time: typeof item.t === "string" || typeof item.t === "number" ? item.t : "",
    what: token ? `${what} (login token ${token})` : what,
    failed,
    address: loginText(args[0]),
    browser: loginText(args[1]),
    os: loginText(args[2]),
  };
}

function loginTime(value) {
  const ms = typeof value === "number" ? value : Date.parse(String(value));
  return Number.isNaN(ms) ? -Infinity : ms;
}

// All entries described, newest first (entries without a valid time last).
export function describeLogins(events, limit = 100) {
  return (Array.isArray(events) ? events : [])
    .filter((entry) => entry && typeof entry === "object")
    .map(describeLogin)
    .sort((a, b) => loginTime(b.time) - loginTime(a.time))
    .slice(0, limit);
}

// -- two-factor enrolment under force2factor --------------------------------------------

// `serverinfo.features` bit: every user must have a second factor (settings.force2factor).
export const FEATURE_FORCE_2FA = 0x40000;

// Whether the server requires a second factor of every user.
export function forcesTwoFactor(serverinfo) {
  const features = Number(serverinfo?.features);
  return Number.isFinite(features) && (features & FEATURE_FORCE_2FA) !== 0;
}

// Whether the account (as userinfo shows it: factors marked 1, counts for keys) has a
// second factor: an authenticator app, hardware keys or backup codes.
export function hasSecondFactor(user) {
  if (!user || typeof user !== "object") return false;
  return Boolean(user.otpsecret) || Number(user.otphkeys) > 0 || Boolean(user.otpkeys);
}

// Whether this session can only enrol a second factor: the server requires one and the
// account has none yet.  `serverinfo` may not have arrived yet (null): then not known.
export function mustEnrol(serverinfo, user) {
  return Boolean(serverinfo) && forcesTwoFactor(serverinfo) && !hasSecondFactor(user);
}

// An enrolment code as the administrator reads it out: letters and digits in groups of
// four ("ABCD-EFGH-JKLM-NPQR"); lower case, spaces and dashes are forgiven.
export function normalEnrolCode(code) {
  const text = String(code ?? "").toUpperCase().replace(/[\s-]+/g, "");
  return (text.match(/.{1,4}/g) || []).join("-");
}

// A problem with a typed enrolment code, or "".
export function enrolCodeProblem(code) {
  const text = String(code ?? "").toUpperCase().replace(/[\s-]+/g, "");
  if (!text) return "Enter the enrolment code an administrator gave you";
  if (!/^[A-Z0-9]+$/.test(text)) return "An enrolment code has only letters and digits";
  if (text.length !== 16) return "An enrolment code has 16 letters and digits (4 groups of 4)";
  return "";
}

// Why `otpauth-setup` failed, from the server's `msg`, with what to do about it.
const SETUP_HINTS = [
  [/^invalid enrolment code/i, "The code is wrong, has expired or was already used; ask " +
    "an administrator for a new one if it keeps failing."],
  [/^invalid password/i, "The current password is not correct."],
  [/^invalid token/i, "Enter the code the app shows now, and check that the clock of the " +
    "device with the app is right."],
  [/^unknown secret/i, "This setup has expired: cancel and start again."],
  [/^not allowed/i, "Your account may not change this setting."],
];

export function setupErrorText(msg) {
  const text = typeof msg === "string" ? msg.trim() : "";
  if (!text) return "The code was not accepted.";
  const sentence = /[.!?]$/.test(text) ? text : `${text}.`;
  const hint = SETUP_HINTS.find(([pattern]) => pattern.test(text));
  return hint ? `${sentence} ${hint[1]}` : sentence;
}

// How long until `expire` (ms) from `now` (ms), in words: "in 24 hours", "expired".
export function expiresIn(expire, now = Date.now()) {
  const ms = Number(expire) - Number(now);
  if (!Number.isFinite(ms)) return "";
  if (ms <= 0) return "expired";
  const minutes = Math.round(ms / 60000);
  if (minutes < 1) return "in less than a minute";
  if (minutes < 120) return `in ${minutes} minute${minutes === 1 ? "" : "s"}`;
  const hours = Math.round(minutes / 60);
  if (hours < 48) return `in ${hours} hours`;
  return `in ${Math.round(hours / 24)} days`;
}
