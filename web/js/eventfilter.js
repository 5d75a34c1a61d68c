// Which events of the audit trail the events view shows: by kind (devices, groups,
// users and logins, failed logins), by age and by words of their text.  No DOM here
// (tests/eventfilter.test.js).

export const EVENT_KINDS = [
  ["all", "All events"],
  ["device", "Devices"],
  ["group", "Groups"],
  ["user", "Users and logins"],
  ["failure", "Failed logins"],
];

export const EVENT_PERIODS = [
  ["all", "Any time", Infinity],
  ["hour", "Last hour", 3600 * 1000],
  ["day", "Last 24 hours", 24 * 3600 * 1000],
  ["week", "Last 7 days", 7 * 24 * 3600 * 1000],
];

const KIND_LABELS = { device: "Device", group: "Group", user: "User", other: "Server" };

// device: a device or a session with one (etype node, relay); group: device groups and
// user groups (mesh, ugrp); user: accounts and logins (user).
export function eventKind(event) {
  switch (event?.etype) {
    case "node":
    case "relay": return "device";
    case "mesh":
    case "ugrp": return "group";
    case "user": return "user";
    default: return "other";
  }
}

export function eventKindLabel(event) {
  return KIND_LABELS[eventKind(event)];
}

// An event's time in ms: ISO text (the `events` answer), a number, or NeDB's {$$date}.
export function eventTime(event) {
  const value = event?.time;
  if (typeof value === "number") return value;
  if (value && typeof value === "object" && typeof value.$$date === "number") return value.$$date;
  const parsed = Date.parse(String(value ?? ""));
  return Number.isNaN(parsed) ? NaN : parsed;
}

export function eventText(event) {
  return `${event?.msg ?? event?.action ?? ""}`;
}

// At most `limit` of `events` (newest first, as kept) that pass the filter.
export function filterEvents(events, { kind = "all", period = "all", query = "",
                                       now = Date.now(), limit = 500 } = {}) {
  const words = String(query).toLowerCase().split(/\s+/).filter(Boolean);
  const span = EVENT_PERIODS.find(([id]) => id === period)?.[2] ?? Infinity;
  const shown = [];
  for (const event of events) {
    if (kind === "failure" ? event.action !== "authfail"
      : kind !== "all" && eventKind(event) !== kind) continue;
    if (span !== Infinity && !(now - eventTime(event) <= span)) continue;
    if (words.length) {
      const text = `${eventText(event)} ${event.username ?? ""}`.toLowerCase();
      if (!words.every((word) => text.includes(word))) continue;
    }
    shown.push(event);
    if (shown.length >= limit) break;
  }
  return shown;
}
