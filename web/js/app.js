import { canManageUsers, forcesTwoFactor, mustEnrol } from "./accounts.js";
import { ControlClient, STATES } from "./control.js";
import { ConnectionNotices } from "./devicelist.js";
import { h } from "./dom.js";
import { DeviceModel, EventLog } from "./model.js";
import { relayBase } from "./relay.js";
import { parseRoute, rememberRoute, takeRememberedRoute } from "./route.js";
import { AccountView } from "./views/account.js";
import { DeviceView } from "./views/device.js";
import { DevicesView } from "./views/devices.js";
import { EventsView } from "./views/events.js";
import { Toasts } from "./views/toasts.js";
import { UsersView } from "./views/users.js";

// Views in the navigation bar; "device" (one device's page) is reached from the list.
const VIEWS = [
  ["devices", "Devices"],
  ["events", "Events"],
  ["users", "Users"],
  ["account", "My account"],
];

const STATE_TEXT = {
  [STATES.CONNECTING]: "Connecting…",
  [STATES.OPEN]: "Connected",
  [STATES.RECONNECTING]: "Connection lost, reconnecting…",
  [STATES.DENIED]: "Signed out",
  [STATES.CLOSED]: "Disconnected",
};

// The device groups an account is linked to, as one comparable string.
function meshKeys(account) {
  const links = account?.links && typeof account.links === "object" ? account.links : {};
  return Object.keys(links).filter((id) => id.startsWith("mesh/")).sort().join(" ");
}

// The whole app: shell, router, control channel, models and views.
// `createWebSocket`, `location` and `storage` are injected (main.js passes the browser's).
export function startApp({ root, bootstrap, createWebSocket, url, location,
                           storage = globalThis.sessionStorage }) {
  // Back where the user was when the last session ended (see the "denied" handler).
  const returnTo = takeRememberedRoute(storage);
  if (returnTo && (!location.hash || location.hash === "#" || location.hash === "#/")) {
    globalThis.history?.replaceState(null, "", returnTo);
  }
  const client = new ControlClient({ url, createWebSocket });
  const devices = new DeviceModel();
  const events = new EventLog();
  let user = bootstrap.user || {};

  const status = h("span", { class: "status", id: "connection", role: "status" });
  const nav = h("nav", { "aria-label": "Sections" }, VIEWS.map(([id, title]) =>
    h("a", { href: `#/${id}`, id: `nav-${id}`, text: title })));
  const userLabel = h("span", { class: "who", id: "current-user", text: user.name || "" });
  const header = h("header", { class: "topbar" },
    h("a", { class: "brand", href: "#/devices", text: bootstrap.title || "meshd" }), nav,
    h("div", { class: "session" }, status, userLabel,
      h("a", { href: "/logout", class: "button", id: "logout", text: "Log out" })));
  const sections = Object.fromEntries([...VIEWS, ["device", "Device"]].map(([id, title]) =>
    [id, h("section", { id: `view-${id}`, class: "view", "aria-label": title, hidden: true })]));
  const toastRoot = h("div", { id: "toasts" });
  // What the server tells full administrators (configuration problems and the like).
  const warnings = h("div", { id: "server-warnings", class: "server-warnings", role: "alert",
    hidden: true });
  // Under force2factor, an account without a second factor can only enrol one.
  const enrolText = h("p", { id: "enrol-required-status", role: "status" });
  const enrolBanner = h("section", { id: "enrol-required", class: "enrol-banner",
    "aria-labelledby": "enrol-required-title", hidden: true },
  h("h2", { id: "enrol-required-title", text: "Two-factor authentication is required" }),
  h("p", { text: "This server requires two-factor authentication of every account. Set " +
    "up an authenticator app below to use the server." }),
  h("p", { text: "You need your current password and an enrolment code: a one-time code " +
    "an administrator issues for your account. Ask an administrator for one if you do " +
    "not have it." }),
  enrolText);
  const main = h("main", { id: "main" }, enrolBanner, Object.values(sections));
  root.replaceChildren(header, warnings, main, toastRoot);

  const toasts = new Toasts(toastRoot);
  const notices = new ConnectionNotices((text, kind) => toasts.show(text, kind));
  const origin = `${location.protocol}//${location.host}`;
  new DevicesView({ root: sections.devices, model: devices, client, toasts, origin,
    me: () => client.userinfo?._id });
  const deviceView = new DeviceView({ root: sections.device, model: devices, client, toasts,
    createWebSocket, relayBase: relayBase(location), user: () => user });
  new EventsView({ root: sections.events, log: events });
  const usersView = new UsersView({ root: sections.users, client, toasts,
    me: () => client.userinfo?._id, forced: () => forcesTwoFactor(client.serverinfo) });
  const account = new AccountView({ root: sections.account, client, toasts, user,
    onEnrolled: () => finishEnrolment() });

  let current = null;
  // Only enrolment of a second factor is possible (force2factor, none yet): the account
  // page alone, under the banner.
  let enrolOnly = false;
  let finishing = false;
  function updateNav() {
    for (const link of nav.querySelectorAll("a")) {
      link.hidden = (enrolOnly && link.id !== "nav-account") ||
        (link.id === "nav-users" && !canManageUsers(user));
    }
  }
  // What the server requires of this account, from serverinfo and the user's factors.
  function applyPolicy() {
    // Known once the session's userinfo came (the bootstrap data has no factors).
    const required = client.userinfo !== null && mustEnrol(client.serverinfo, user);
    account.setPolicy({ forced: forcesTwoFactor(client.serverinfo), required: enrolOnly &&
      !required ? true : required });
    if (enrolOnly && !required) {
      // Enrolled (here or in another window): the next connection is a normal session.
      finishEnrolment();
      return;
    }
    if (required === enrolOnly) return;
    enrolOnly = required;
    enrolBanner.hidden = !enrolOnly;
    updateNav();
    route();
  }
  // After enrolment the page reloads: a new connection is a full session (with what the
  // server sends at its start), and the app loads its data from scratch.
  function finishEnrolment() {
    if (finishing) return;
    finishing = true;
    enrolText.textContent = "Two-factor authentication is on. Loading the app…";
    setTimeout(() => {
      if (parseRoute(location.hash, VIEWS.map(([id]) => id)).view === "account") {
        globalThis.history?.replaceState(null, "", "#/devices");
      }
      location.reload();
    }, 1000);
  }
  // The logged-in user (bootstrap, then userinfo and account events) decides what shows.
  function setUser(next) {
    user = next;
    const allowed = canManageUsers(user);
    updateNav();
    if (current === "users" && !allowed) route();
    deviceView.renderInfo();
    applyPolicy();
  }
  function route() {
    const wanted = parseRoute(location.hash, VIEWS.map(([id]) => id));
    let id = wanted.view === "users" && !canManageUsers(user) ? "devices" : wanted.view;
    if (enrolOnly) id = "account";
    for (const [name, section] of Object.entries(sections)) section.hidden = name !== id;
    const navId = id === "device" ? "devices" : id;
    for (const link of nav.querySelectorAll("a")) {
      if (link.id === `nav-${navId}`) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (id === "device") deviceView.show(wanted.nodeid);
    else if (current === "device") deviceView.hide();
    if (id === "users" && current !== "users") usersView.load();
    if (id === "account" && current !== "account") account.show();
    if (id !== "users") usersView.hide();
    if (current !== null && id !== current) globalThis.scrollTo?.(0, 0);
    current = id;
  }
  globalThis.addEventListener?.("hashchange", route);
  setUser(user);
  route();

  async function reload() {
    if (enrolOnly) return;
    try {
      const [meshes, nodes, log] = await Promise.all([
        client.request("meshes"), client.request("nodes"),
        client.request("events", { limit: 500 })]);
      devices.load(meshes.meshes, nodes.nodes);
      events.load(log.events);
    } catch (error) {
      toasts.show(`Could not load the device list: ${error.message}`, "error");
    }
  }
  const reloadSoon = (() => {
    let timer = null;
    return () => {
      if (timer) return;
      timer = setTimeout(() => { timer = null; reload(); }, 200);
    };
  })();

  client.on("state", (state) => {
    status.textContent = STATE_TEXT[state] || state;
    status.dataset.state = state;
  });
  // A session starts with serverinfo and userinfo: then it is known whether this account
  // can only enrol a second factor, or the data can be loaded.
  let starting = false;
  client.on("open", () => { starting = true; });
  client.on("userinfo", (message) => {
    if (message.userinfo && typeof message.userinfo === "object") setUser(message.userinfo);
    if (!starting) return;
    starting = false;
    if (enrolOnly) return;
    reload();
    if (current === "account") account.show();
  });
  client.on("serverwarnings", (message) => {
    const shown = new Set([...warnings.children].map((item) => item.textContent));
    for (const warning of Array.isArray(message.warnings) ? message.warnings : []) {
      const text = typeof warning === "string" ? warning : warning?.msg;
      if (typeof text !== "string" || !text || shown.has(text)) continue;
      shown.add(text);
      warnings.append(h("p", { class: "server-warning", text }));
    }
    warnings.hidden = warnings.children.length === 0;
  });
  client.on("msg", (message) => {
    // Notices for this user, such as failed logins since the last one.
    if (message.type === "notify" && typeof message.value === "string") {
      const title = typeof message.title === "string" && message.title ? `${message.title}: ` : "";
      toasts.show(`${title}${message.value}`, "warn");
    }
  });
  client.on("event", (event) => {
    events.add(event);
    if (event.action === "accountchange" && event.account &&
        event.account._id === client.userinfo?._id) {
      // Our own account changed (password, second factor, rights), by us or an
      // administrator; given or taken device groups mean other lists.
      const groupsBefore = meshKeys(user);
      account.update(event.account);
      setUser(event.account);
      if (meshKeys(event.account) !== groupsBefore) reloadSoon();
    }
    const change = devices.applyEvent(event);
    if (!change) return;
    if (change.reload) reloadSoon();
    if (change.connected !== undefined) notices.add(change.id, change.name, change.connected);
  });
  client.on("denied", ({ cause }) => {
    // The session ended (logout elsewhere, expiry): back to the login page, which leads
    // back here after logging in again.
    rememberRoute(storage, location.hash);
    deviceView.hide();
    const text = cause === "expired" ? "Your session expired" : "Your session has ended";
    toasts.show(`${text}: log in again to continue`, "warn");
    status.textContent = "Signed out, going to the login page…";
    setTimeout(() => location.assign("/"), 1500);
  });
  client.connect();
  return { client, devices, events };
}
