// Guest links of a device (`deviceShares`, `createDeviceShareLink`, `removeDeviceShare`,
// control/actions/sharing.py): who may make them, the request for a new one, and how a
// listed link reads.  Pure functions (tests/guestlinks.test.js).

export const SHARE_TERMINAL = 1;
export const SHARE_DESKTOP = 2;
export const SHARE_FILES = 4;
const MESHRIGHT_REMOTECONTROL = 0x8;
const MESHRIGHT_NOTERMINAL = 0x200;
const MESHRIGHT_NOFILES = 0x400;
const MESHRIGHT_DESKLIMITEDINPUT = 0x1000;
const MESHRIGHT_GUESTSHARING = 0x80000;
const FULL_RIGHTS = 0xFFFFFFFF;
const MAX_MINUTES = 100 * 366 * 24 * 60;

// How long a new link lasts: [minutes (0: no limit), label].
export const SHARE_DURATIONS = Object.freeze([
  [60, "1 hour"], [8 * 60, "8 hours"], [24 * 60, "1 day"], [7 * 24 * 60, "1 week"],
  [0, "No time limit"],
]);

// What a user with these device rights may share: [] when no links at all.  The server
// asks for remote control and guest sharing, no limited input, and not the "no" right of
// what is shared (sharing.py may_share); full rights share anything.
export function shareableParts(rights) {
  const bits = (Number(rights) || 0) >>> 0;
  if (bits === FULL_RIGHTS) return [SHARE_TERMINAL, SHARE_FILES];
  if (!(bits & MESHRIGHT_REMOTECONTROL) || !(bits & MESHRIGHT_GUESTSHARING)
      || (bits & MESHRIGHT_DESKLIMITEDINPUT)) return [];
  const parts = [];
  if (!(bits & MESHRIGHT_NOTERMINAL)) parts.push(SHARE_TERMINAL);
  if (!(bits & MESHRIGHT_NOFILES)) parts.push(SHARE_FILES);
  return parts;
}

export function mayShare(rights) {
  return shareableParts(rights).length > 0;
}

// The `createDeviceShareLink` fields for a form's values, or {error}.
export function shareRequest({ nodeid, guestname, terminal, files, minutes }) {
  const name = typeof guestname === "string" ? guestname.trim() : "";
  if (!name) return { error: "Enter the guest's name" };
  if (name.length > 128) return { error: "The guest's name is longer than 128 characters" };
  const p = (terminal ? SHARE_TERMINAL : 0) | (files ? SHARE_FILES : 0);
  if (!p) return { error: "Share the terminal, the files or both" };
  const expire = Number(minutes);
  if (!Number.isInteger(expire) || expire < 0 || expire > MAX_MINUTES) {
    return { error: "Choose how long the link lasts" };
  }
  return { fields: { nodeid, guestname: name, p, consent: 0, expire } };
}

// "Terminal and files", "Terminal", … for a share's `p`.
export function sharedText(p) {
  const bits = Number(p) || 0;
  const parts = [];
  if (bits & SHARE_TERMINAL) parts.push("terminal");
  if (bits & SHARE_DESKTOP) parts.push("desktop");
  if (bits & SHARE_FILES) parts.push("files");
  if (!parts.length) return "Nothing";
  const text = parts.length === 1 ? parts[0]
    : `${parts.slice(0, -1).join(", ")} and ${parts[parts.length - 1]}`;
  return text[0].toUpperCase() + text.slice(1);
}

// When a listed share may be used (times in ms since the epoch).
export function shareWindow(share, locale = undefined) {
  const format = (ms) => new Date(ms).toLocaleString(locale);
  if (share?.recurring === 1 || share?.recurring === 2) {
    const every = share.recurring === 1 ? "Every day" : "Every week";
    const minutes = Number(share.duration) || 0;
    return `${every} from ${format(share.startTime)} for ${minutes} min`;
  }
  if (typeof share?.expireTime === "number") return `Until ${format(share.expireTime)}`;
  return "No time limit";
}

// A listed share, ready to show: the server's fields, checked and with defaults.
export function shareRow(share, locale = undefined) {
  return {
    publicid: typeof share?.publicid === "string" ? share.publicid : "",
    guest: typeof share?.guestName === "string" ? share.guestName : "",
    what: sharedText(share?.p) + (share?.viewOnly ? " (view only)" : ""),
    window: shareWindow(share, locale),
    url: typeof share?.url === "string" && /^https?:\/\//.test(share.url) ? share.url : "",
  };
}
