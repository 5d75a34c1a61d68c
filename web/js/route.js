// The app's addresses live in the fragment: #/devices, #/device/<node id>, #/events,
// #/users, #/account.  Node ids hold "/", "$" and "@", so they are percent-encoded.

export const DEFAULT_VIEW = "devices";

export function deviceHref(nodeid) {
  return `#/device/${encodeURIComponent(String(nodeid))}`;
}

// `location.hash` → {view, nodeid?}; unknown or malformed addresses give the default.
export function parseRoute(hash, views) {
  const path = String(hash ?? "").replace(/^#\/?/, "");
  const slash = path.indexOf("/");
  const view = slash < 0 ? path : path.slice(0, slash);
  if (view === "device") {
    let nodeid = "";
    try {
      nodeid = decodeURIComponent(path.slice(slash + 1));
    } catch (error) {
      nodeid = "";
    }
    return slash > 0 && nodeid ? { view, nodeid } : { view: DEFAULT_VIEW };
  }
  return views.includes(view) ? { view } : { view: DEFAULT_VIEW };
}
