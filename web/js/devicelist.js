// The device list's logic, without DOM: what a device is found by, how devices sort,
// which rows of a long list are on screen, and connect/disconnect notices gathered into
// one toast.  A fleet of 5000 devices is filtered on an in-memory index of each device's
// text (built once per device change, not once per keystroke), sorted on precomputed
// keys, and only the rows in view are ever made into DOM (views/devices.js).
// Tested in Node: tests/devicelist.test.js.

import { agentVersion, connectionState, osName } from "./format.js";
import { isOnline } from "./model.js";

// Sortable columns: [key, heading].
export const COLUMNS = [
  ["name", "Device"],
  ["state", "State"],
  ["os", "Operating system"],
  ["agent", "Agent"],
  ["address", "Address"],
  ["since", "Since"],
];

export const STATE_FILTERS = [
  ["all", "All devices"],
  ["online", "Online"],
  ["offline", "Offline"],
];

export function deviceAddress(node) {
  return String(node?.ip || node?.host || "");
}

// When the device came online (agent connect time) or was last seen, in ms (0: unknown).
export function deviceSince(node) {
  const value = isOnline(node?.conn) ? node?.agct : node?.lastseen;
  if (typeof value === "number") return Number.isFinite(value) ? value : 0;
  if (value === undefined || value === null || value === "") return 0;
  const parsed = Date.parse(String(value));
  return Number.isNaN(parsed) ? 0 : parsed;
}

// The words of a filter, lower case; an empty list matches everything.
export function filterWords(query) {
  return String(query ?? "").toLowerCase().split(/\s+/).filter(Boolean);
}

// Each device's searchable text (name, address, OS, agent, tags), kept per device id and
// made again only after the device changed (forget) or the list was reloaded (clear).
// The connection state is matched separately: it changes far more often than the rest.
export class DeviceIndex {
  constructor() {
    this._entries = new Map();
  }

  forget(id) {
    this._entries.delete(id);
  }

  clear() {
    this._entries.clear();
  }

  get size() {
    return this._entries.size;
  }

  text(node) {
    const entry = this._entries.get(node._id);
    if (entry && entry.node === node) return entry.text;
    const text = [node.name, node.host, node.ip, osName(node), agentVersion(node),
      ...(Array.isArray(node.tags) ? node.tags : [])]
      .filter((part) => part !== undefined && part !== null && part !== "")
      .join(" ").toLowerCase();
    this._entries.set(node._id, { node, text });
    return text;
  }

  // words: filterWords(query); state: "all", "online" or "offline".
  matches(node, words, state = "all") {
    if (state !== "all" && isOnline(node.conn) !== (state === "online")) return false;
    if (!words.length) return true;
    const text = this.text(node);
    let label = null;
    for (const word of words) {
      if (text.includes(word)) continue;
      label ??= connectionState(node.conn).label.toLowerCase();
      if (!label.includes(word)) return false;
    }
    return true;
  }
}

function lower(value) {
  return String(value ?? "").toLowerCase();
}

// An IPv4 address sorts by its numbers (10.0.0.9 before 10.0.0.10); anything else by text.
function addressKey(node) {
  const address = deviceAddress(node).toLowerCase();
  const ipv4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(address);
  return ipv4 ? ipv4.slice(1).map((part) => part.padStart(3, "0")).join(".") : address;
}

export function sortKey(node, key) {
  switch (key) {
    case "state": return isOnline(node.conn) ? 0 : 1;
    case "os": return lower(osName(node));
    case "agent": return lower(agentVersion(node));
    case "address": return addressKey(node);
    case "since": return deviceSince(node);
    default: return lower(node.name);
  }
}

function compare(left, right) {
  return left < right ? -1 : left > right ? 1 : 0;
}

// A new array of `nodes` sorted by a column; unknown values ("" or 0) go last either way,
// ties are broken by name, then id, so the order is stable across renders.
export function sortDevices(nodes, key = "name", descending = false) {
  const direction = descending ? -1 : 1;
  const items = nodes.map((node) => ({ node, key: sortKey(node, key), name: lower(node.name),
    id: String(node._id) }));
  const unknown = key === "since" ? 0 : "";
  items.sort((a, b) => {
    if (key !== "name" && key !== "state" && (a.key === unknown) !== (b.key === unknown)) {
      return a.key === unknown ? 1 : -1;
    }
    return compare(a.key, b.key) * direction || compare(a.name, b.name) ||
      compare(a.id, b.id);
  });
  return items.map((item) => item.node);
}

// Rows [start, end) of a list of `count` rows of `rowHeight` pixels that are in view,
// with `overscan` rows more on each side.  `top` is where the list's first row is,
// relative to the top of a viewport `height` pixels high (negative once scrolled past).
export function windowRange({ count, rowHeight, top, height, overscan = 10 }) {
  if (!(count > 0) || !(rowHeight > 0) || !Number.isFinite(top) || !(height >= 0)) {
    return { start: 0, end: 0 };
  }
  const first = Math.floor(-top / rowHeight) - overscan;
  const last = Math.ceil((height - top) / rowHeight) + overscan;
  const start = Math.min(count, Math.max(0, first));
  const end = Math.max(start, Math.min(count, last));
  return { start, end };
}

// "web-1 connected", "web-1, web-2 and web-3 connected", "web-1, web-2 and 8 other
// devices disconnected".
export function noticeText(names, connected) {
  const verb = connected ? "connected" : "disconnected";
  const shown = names.map((name) => name || "A device");
  if (shown.length <= 1) return `${shown[0] ?? "A device"} ${verb}`;
  if (shown.length <= 3) {
    return `${shown.slice(0, -1).join(", ")} and ${shown[shown.length - 1]} ${verb}`;
  }
  const others = shown.length - 2;
  return `${shown.slice(0, 2).join(", ")} and ${others} other devices ${verb}`;
}

// Devices coming and going, gathered for `delayMs` and shown as at most one toast for
// those that connected and one for those that disconnected: a server restart that
// brings back thousands of agents is two notices, not thousands.  A device that came and
// went meanwhile counts once, in its latest state.
export class ConnectionNotices {
  constructor(show, { delayMs = 500, timers = globalThis } = {}) {
    this._show = show;
    this._delayMs = delayMs;
    this._timers = timers;
    this._pending = new Map();
    this._timer = null;
  }

  add(id, name, connected) {
    this._pending.delete(id);
    this._pending.set(id, { name, connected });
    if (this._timer === null) {
      this._timer = this._timers.setTimeout(() => this.flush(), this._delayMs);
    }
  }

  flush() {
    if (this._timer !== null) this._timers.clearTimeout(this._timer);
    this._timer = null;
    const entries = [...this._pending.values()];
    this._pending.clear();
    const up = entries.filter((entry) => entry.connected).map((entry) => entry.name);
    const down = entries.filter((entry) => !entry.connected).map((entry) => entry.name);
    if (up.length) this._show(noticeText(up, true), "ok");
    if (down.length) this._show(noticeText(down, false), "warn");
  }
}
