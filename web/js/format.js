// Small pure helpers that turn server records into display text.

const CONN_BITS = [
  [1, "agent"],
  [2, "Intel AMT CIRA"],
  [4, "Intel AMT"],
  [16, "MQTT"],
];

// `conn` bits of a device → {online, label}.
export function connectionState(conn) {
  const bits = Number(conn) || 0;
  const via = CONN_BITS.filter(([bit]) => bits & bit).map(([, name]) => name);
  if (!via.length) return { online: false, label: "Offline" };
  return { online: true, label: `Online (${via.join(", ")})` };
}

// The 64-character part of `mesh/<domain>/<id>`, as /meshsettings?id= wants it.
export function shortId(id) {
  const parts = String(id ?? "").split("/");
  return parts[parts.length - 1];
}

const AGENT_OS = {
  1: "Windows (32-bit)", 2: "Windows (64-bit)", 3: "Windows (64-bit)", 4: "Windows (32-bit)",
  5: "Linux (32-bit)", 6: "Linux (64-bit)", 7: "MIPS", 9: "ARM Linux", 10: "ARM Linux",
  16: "macOS", 21: "FreeBSD", 25: "Raspberry Pi", 26: "ARM Linux (64-bit)",
  29: "macOS", 30: "FreeBSD (64-bit)", 32: "ARM Linux (64-bit)",
};

export function osName(node) {
  if (node?.osdesc) return String(node.osdesc);
  const id = node?.agent?.id;
  if (id !== undefined && AGENT_OS[id]) return AGENT_OS[id];
  if (node?.mtype === 1 || node?.intelamt) return "Intel AMT";
  return "";
}

// A time (ms number or ISO text) as local date and time; "" when unknown.
export function formatTime(value, locale) {
  if (value === undefined || value === null || value === "") return "";
  const date = new Date(typeof value === "number" ? value : String(value));
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleString(locale, { dateStyle: "short", timeStyle: "medium" });
}

// Case-insensitive match of every word of `query` in any of the device's shown fields.
export function matchesFilter(node, query) {
  const words = String(query ?? "").toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return true;
  const text = [node?.name, node?.host, node?.ip, osName(node), connectionState(node?.conn).label,
    ...(Array.isArray(node?.tags) ? node.tags : [])].join(" ").toLowerCase();
  return words.every((word) => text.includes(word));
}

// The agent's version as reported: its core ("Python core 0.3") and agent build number.
export function agentVersion(node) {
  const agent = node?.agent && typeof node.agent === "object" ? node.agent : {};
  const parts = [];
  if (typeof agent.core === "string" && agent.core) parts.push(agent.core);
  if (agent.ver !== undefined && agent.ver !== null && agent.ver !== 0 && agent.ver !== "0") {
    parts.push(parts.length ? `(agent ${agent.ver})` : String(agent.ver));
  }
  return parts.join(" ");
}
