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

// Where the user was when the session ended, kept for the tab (sessionStorage) across the
// login page, so logging in again leads back there.  Only an address of this app is kept
// or given back; reading it forgets it.
const RETURN_KEY = "meshd.returnTo";

export function rememberRoute(storage, hash) {
  const text = String(hash ?? "");
  try {
    if (/^#\/[^\s]{0,1000}$/.test(text)) storage?.setItem(RETURN_KEY, text);
  } catch (error) { /* storage refused (private mode, quota): nothing to return to */ }
}

export function takeRememberedRoute(storage) {
  let text = null;
  try {
    text = storage?.getItem(RETURN_KEY) ?? null;
    storage?.removeItem(RETURN_KEY);
  } catch (error) {
    return null;
  }
  return typeof text === "string" && /^#\/[^\s]{0,1000}$/.test(text) ? text : null;
}
