import {
  amtConnection, amtCredentials, amtCredentialsError, amtPowerActions, amtPowerOutcome,
  deviceRights, hasAmt, mayManageAmt,
} from "../amt.js";
import { runCommand } from "../commands.js";
import { coalesce, clear, h } from "../dom.js";
import { agentVersion, connectionState, formatTime, osName } from "../format.js";
import { SHARE_DURATIONS, SHARE_FILES, SHARE_TERMINAL, shareRequest, shareRow, shareableParts }
  from "../guestlinks.js";
import { EventLog } from "../model.js";
import { FilesPanel } from "./files.js";
import { TerminalPanel } from "./terminal.js";

// Events that change a device's guest links.
const SHARE_EVENTS = new Set(["addedDeviceShare", "removedDeviceShare", "deviceShareUpdate"]);

const TABS = [["overview", "Overview"], ["terminal", "Terminal"], ["files", "Files"]];

// One device: general facts (kept live by the model), running a command, its events.
export class DeviceView {
  constructor({ root, model, client, toasts, createWebSocket, relayBase, user }) {
    this.root = root;
    this.tab = "overview";
    this.terminal = new TerminalPanel({ client, createWebSocket, relayBase });
    this.files = new FilesPanel({ client, createWebSocket, relayBase, toasts });
    this.model = model;
    this.client = client;
    this.toasts = toasts;
    this.user = user || (() => client.userinfo);
    this.nodeid = null;
    this.lastconnect = null;
    this.running = false;
    this.log = new EventLog(500);
    this.renderInfo = coalesce(() => this._renderInfo());
    this.renderEvents = coalesce(() => this._renderEvents());
    this._build();
    model.onChange((change) => {
      if (change.kind === "reset" || change.id === this.nodeid) this.renderInfo();
    });
    client.on("event", (event) => {
      if (this.nodeid && event.nodeid === this.nodeid) {
        this.log.add(event);
        if (SHARE_EVENTS.has(event.action)) this._loadShares();
      }
      this._amtOutcome(event);
    });
    client.on("open", () => { if (this.nodeid && !this.root.hidden) this._load(); });
    this.log.onChange(() => this.renderEvents());
  }

  _build() {
    this.title = h("h1", { id: "device-name" });
    this.badge = h("span", { class: "badge", id: "device-state" });
    this.facts = h("dl", { class: "facts", id: "device-facts" });
    this.script = h("textarea", { id: "run-script", rows: "4", spellcheck: "false",
      placeholder: "uname -a", "aria-label": "Commands to run", autocomplete: "off",
      onkeydown: (e) => {
        if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); this._run(); }
      } });
    this.runButton = h("button", { type: "submit", class: "primary", id: "run-button",
      text: "Run" });
    this.runStatus = h("span", { class: "run-status", id: "run-status", role: "status" });
    this.output = h("pre", { class: "output", id: "run-output", tabindex: "0",
      "aria-label": "Command output", hidden: true });
    this.amtStatus = h("span", { class: "run-status", id: "amt-power-status", role: "status" });
    this.amtButtons = h("div", { class: "buttons start amt-buttons" });
    this.amtCard = h("div", { class: "card", id: "amt-power", hidden: true },
      h("h2", { text: "Intel AMT" }),
      h("p", { class: "hint", text: "Power actions done by Intel AMT over the device's " +
        "CIRA connection, whatever the operating system is doing." }),
      h("div", { class: "amt-power" }, this.amtButtons, this.amtStatus));
    this.amtActionsKey = null;
    this._buildAmtCredentials();
    this._buildShares();
    this.dialog = h("dialog", { id: "device-dialog", class: "dialog" });
    this.events = h("tbody", { id: "device-event-rows" });
    this.noEvents = h("p", { class: "empty", text: "No events for this device." });
    this.overview = h("div", { class: "device-page", id: "device-overview", role: "tabpanel" },
      h("div", { class: "card" }, h("h2", { text: "General" }), this.facts),
      this.amtCard,
      this.credCard,
      h("div", { class: "card" }, h("h2", { text: "Run command" }),
        h("form", { id: "run-form", onsubmit: (e) => { e.preventDefault(); this._run(); } },
          h("p", { class: "hint", text: "A shell script (sh on Linux and macOS, cmd on " +
            "Windows), run by the agent. Ctrl+Enter runs it." }),
          this.script,
          h("div", { class: "run-bar" }, this.runButton, this.runStatus)),
        this.output),
      h("div", { class: "card wide" }, h("h2", { text: "Events" }),
        h("table", { class: "events" }, h("thead", {}, h("tr", {},
          ["Time", "User", "Event"].map((title) => h("th", { scope: "col", text: title })))),
        this.events), this.noEvents),
      this.shareCard);
    this.tabButtons = TABS.map(([id, title]) => h("button", { type: "button", role: "tab",
      id: `device-tab-${id}`, class: "tab", dataset: { tab: id }, text: title,
      onclick: () => this.selectTab(id),
      onkeydown: (e) => this._tabKey(e, id) }));
    this.panels = {
      overview: this.overview,
      terminal: h("div", { class: "device-panel", id: "device-terminal", role: "tabpanel" },
        this.terminal.root),
      files: h("div", { class: "device-panel", id: "device-files", role: "tabpanel" },
        this.files.root),
    };
    this.body = h("div", { class: "device-body" },
      h("div", { class: "tabs", role: "tablist", "aria-label": "Device" }, this.tabButtons),
      Object.values(this.panels));
    this._showTab();
    this.missing = h("p", { class: "empty", id: "device-missing", hidden: true });
    clear(this.root).append(
      h("p", { class: "crumbs" }, h("a", { href: "#/devices", text: "← All devices" })),
      h("div", { class: "page-title" }, this.title, this.badge), this.missing, this.body,
      this.dialog);
  }

  selectTab(id) {
    if (!TABS.some(([tab]) => tab === id)) return;
    this.tab = id;
    this._showTab();
  }

  _tabKey(event, id) {
    const index = TABS.findIndex(([tab]) => tab === id);
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    event.preventDefault();
    const next = TABS[(index + step + TABS.length) % TABS.length][0];
    this.selectTab(next);
    this.tabButtons.find((b) => b.dataset.tab === next)?.focus();
  }

  _showTab() {
    for (const button of this.tabButtons) {
      const selected = button.dataset.tab === this.tab;
      button.setAttribute("aria-selected", selected ? "true" : "false");
      button.tabIndex = selected ? 0 : -1;
    }
    for (const [id, panel] of Object.entries(this.panels)) panel.hidden = id !== this.tab;
    const active = !this.root.hidden && this.nodeid;
    if (this.tab === "terminal" && active) this.terminal.show();
    else this.terminal.hide();
    if (this.tab === "files" && active) this.files.show();
    else this.files.hide();
  }

  // Called by the router when another view is shown: end the device's sessions.
  hide() {
    if (this.dialog.open) this.dialog.close();
    this.terminal.setDevice(null);
    this.files.setDevice(null);
    this.nodeid = null;
  }

  // Called by the router: show `nodeid` (again).
  show(nodeid) {
    if (nodeid !== this.nodeid) {
      this.tab = "overview";
      this.terminal.setDevice(nodeid);
      this.files.setDevice(nodeid);
      this.nodeid = nodeid;
      this.lastconnect = null;
      this.script.value = "";
      this.output.textContent = "";
      this.output.hidden = true;
      this.runStatus.textContent = "";
      this.amtStatus.textContent = "";
      delete this.amtStatus.dataset.state;
      this.log.load([]);
      this.credForm.reset();
      this.credShownUser = null;
      this.credError.textContent = "";
      this.shares = null;
      this.sharesKey = null;
      this.sharesPending = false;
      this.shareError.textContent = "";
      this.newLink.hidden = true;
      this.shareRows.replaceChildren();
    }
    this._renderInfo();
    this._showTab();
    this._load();
  }

  async _load() {
    const nodeid = this.nodeid;
    if (!nodeid || this.client.state !== "open") return;
    const [events, last, fresh] = await Promise.allSettled([
      this.client.request("events", { nodeid, limit: 200 }),
      this.client.request("lastconnect", { nodeid }, { untagged: true,
        accepts: (m) => m.action === "lastconnect" && m.nodeid === nodeid }),
      // The stored record may be newer than the list's (the agent's core version).
      this.client.request("nodes", { id: nodeid }),
    ]);
    if (nodeid !== this.nodeid) return;
    if (fresh.status === "fulfilled" && this.model.loaded) this.model.merge(fresh.value.nodes);
    if (events.status === "fulfilled") this.log.load(events.value.events);
    if (last.status === "fulfilled" && !last.value.noinfo) this.lastconnect = last.value;
    this.renderInfo();
    this._loadShares();
  }

  _renderInfo() {
    const node = this.nodeid ? this.model.nodes.get(this.nodeid) : undefined;
    this.body.hidden = !node;
    this.missing.hidden = Boolean(node);
    if (!node) {
      this.title.textContent = "Device";
      this.badge.textContent = "";
      this.missing.textContent = this.model.loaded
        ? "This device does not exist, or you may not see it." : "Loading…";
      return;
    }
    const state = connectionState(node.conn);
    const mesh = this.model.meshes.get(node.meshid);
    this.title.textContent = node.name || "(unnamed)";
    this.badge.textContent = state.online ? "Online" : "Offline";
    this.badge.className = `badge ${state.online ? "online" : "offline"}`;
    this.badge.dataset.online = state.online ? "1" : "0";
    const last = this.lastconnect;
    const rows = [
      ["Name", node.name],
      ["State", state.label],
      ["Group", mesh?.name],
      ["Operating system", osName(node)],
      ["Agent version", agentVersion(node)],
      ["Intel AMT", amtConnection(node)],
      ["Host name", node.rname],
      ["Address", node.ip || node.host],
      [state.online ? "Connected since" : "Last seen",
        state.online ? formatTime(node.agct) : formatTime(node.lastseen)],
      ["Last connection", last ? [formatTime(last.time), last.addr].filter(Boolean).join(" from ")
        : ""],
      ["Description", node.desc],
      ["Tags", Array.isArray(node.tags) ? node.tags.join(", ") : ""],
    ];
    this.facts.replaceChildren(...rows.filter(([, value]) => value).map(([label, value]) =>
      [h("dt", { text: label }), h("dd", { text: value, dataset: { fact: label } })]).flat());
    this.runButton.disabled = this.running;
    this._renderAmt(node, mesh);
    const rights = deviceRights(this.user(), node, mesh);
    this._renderCredentials(node, rights);
    // Guest links open the agent's terminal or files: none for Intel AMT-only devices.
    this._renderShares(Number(node.mtype) === 1 ? 0 : rights);
  }

  // Power buttons for the Intel AMT power actions the user's rights allow.
  _renderAmt(node, mesh) {
    const actions = amtPowerActions(node, deviceRights(this.user(), node, mesh));
    this.amtCard.hidden = actions.length === 0;
    const key = `${node._id}\u0001${actions.map((a) => a.id).join(",")}`;
    if (key === this.amtActionsKey) return;
    this.amtActionsKey = key;
    this.amtButtons.replaceChildren(...actions.map((action) => h("button", { type: "button",
      id: `amt-${action.id}`, class: action.confirm ? "danger-outline" : "",
      dataset: { actiontype: String(action.actiontype) }, text: action.label,
      onclick: () => this._amtPower(action) })));
  }

  // --- Intel AMT credentials ------------------------------------------------------------

  _buildAmtCredentials() {
    this.credUser = h("input", { id: "amt-cred-user", name: "amtuser", autocomplete: "off",
      maxlength: "64", required: true, spellcheck: "false" });
    this.credPass = h("input", { id: "amt-cred-pass", name: "amtpass", type: "password",
      autocomplete: "new-password", maxlength: "64", required: true });
    this.credState = h("p", { class: "hint", id: "amt-cred-state" });
    this.credError = h("p", { class: "error", id: "amt-cred-error", role: "alert" });
    this.credSave = h("button", { type: "submit", class: "primary", id: "amt-cred-save",
      text: "Save credentials" });
    this.credForm = h("form", { class: "stacked", id: "amt-cred-form",
      onsubmit: (e) => { e.preventDefault(); this._saveCredentials(); } },
    h("label", {}, "Intel AMT user", this.credUser),
    h("label", {}, "Intel AMT password", this.credPass),
    this.credError,
    h("div", { class: "buttons start" }, this.credSave));
    this.credCard = h("div", { class: "card", id: "amt-credentials", hidden: true },
      h("h2", { text: "Intel AMT credentials" }),
      h("p", { class: "hint", text: "The account the server logs in to Intel AMT with " +
        "(power actions over CIRA). The password is stored on the server and never shown." }),
      this.credState, this.credForm);
  }

  _renderCredentials(node, rights) {
    const shown = hasAmt(node) && mayManageAmt(rights);
    this.credCard.hidden = !shown;
    if (!shown) return;
    const { user, hasPassword } = amtCredentials(node);
    this.credState.dataset.pass = hasPassword ? "1" : "0";
    this.credState.textContent = user
      ? `Stored: user "${user}", ${hasPassword ? "password set" : "no password"}.`
      : "No Intel AMT credentials are stored for this device.";
    // The stored user fills the field when it changes (not while it is being typed).
    if (user !== this.credShownUser && document.activeElement !== this.credUser) {
      this.credUser.value = user;
      this.credShownUser = user;
    }
  }

  async _saveCredentials() {
    const nodeid = this.nodeid;
    const user = this.credUser.value;
    const pass = this.credPass.value;
    const problem = amtCredentialsError(user, pass);
    this.credError.textContent = problem;
    if (problem || !nodeid) return;
    this.credSave.disabled = true;
    try {
      await this.client.call("changedevice", { nodeid, intelamt: { user, pass } });
      if (nodeid !== this.nodeid) return;
      this.credPass.value = "";
      this.toasts.show("Intel AMT credentials saved", "ok");
    } catch (error) {
      if (nodeid === this.nodeid) {
        this.credError.textContent = `Could not save the credentials: ${error.message}`;
      }
    } finally {
      this.credSave.disabled = false;
    }
  }

  // --- guest links ------------------------------------------------------------------------

  _buildShares() {
    this.shares = null;  // the device's links as last listed, or null
    this.sharesKey = null;
    this.shareRows = h("ul", { class: "share-list", id: "share-rows" });
    this.noShares = h("p", { class: "empty", id: "share-none", text: "No guest links." });
    this.shareError = h("p", { class: "error", id: "share-error", role: "alert" });
    this.guestName = h("input", { id: "share-guest", name: "guestname", maxlength: "128",
      autocomplete: "off", required: true });
    this.shareTerminal = h("input", { type: "checkbox", id: "share-terminal", checked: true });
    this.shareFiles = h("input", { type: "checkbox", id: "share-files" });
    this.shareDuration = h("select", { id: "share-duration", name: "expire" },
      SHARE_DURATIONS.map(([minutes, label]) => h("option", { value: String(minutes),
        text: label })));
    this.shareCreate = h("button", { type: "submit", class: "primary", id: "share-create",
      text: "Create link" });
    this.newLinkUrl = h("input", { id: "share-new-url", readonly: true, class: "url",
      "aria-label": "The new guest link" });
    this.newLink = h("div", { class: "new-link", id: "share-new", hidden: true, role: "status" },
      h("p", { text: "Give this link to the guest:" }),
      h("div", { class: "copy-row" }, this.newLinkUrl,
        h("button", { type: "button", id: "share-new-copy", text: "Copy",
          onclick: () => this._copy(this.newLinkUrl.value) })));
    this.shareForm = h("form", { class: "stacked", id: "share-form",
      onsubmit: (e) => { e.preventDefault(); this._createShare(); } },
    h("h3", { text: "New guest link" }),
    h("label", {}, "Guest name", this.guestName),
    h("fieldset", { class: "share-parts" }, h("legend", { text: "Share" }),
      h("label", { class: "check", id: "share-terminal-label" }, this.shareTerminal, "Terminal"),
      h("label", { class: "check", id: "share-files-label" }, this.shareFiles, "Files")),
    h("label", {}, "Valid for", this.shareDuration),
    h("div", { class: "buttons start" }, this.shareCreate));
    this.shareCard = h("div", { class: "card wide", id: "guest-links", hidden: true },
      h("h2", { text: "Guest links" }),
      h("p", { class: "hint", text: "A guest link opens this device's terminal or files " +
        "to someone without an account, until it expires or is removed." }),
      this.shareRows, this.noShares, this.newLink, this.shareError, this.shareForm);
  }

  _renderShares(rights) {
    const parts = shareableParts(rights);
    this.shareCard.hidden = parts.length === 0;
    this.shareTerminal.disabled = !parts.includes(SHARE_TERMINAL);
    this.shareFiles.disabled = !parts.includes(SHARE_FILES);
    if (this.shareTerminal.disabled) this.shareTerminal.checked = false;
    if (this.shareFiles.disabled) this.shareFiles.checked = false;
    this.mayShare = parts.length > 0;
    if (this.mayShare && this.shares === null && !this.sharesPending) this._loadShares();
    const rows = (this.shares ?? []).map((share) => shareRow(share));
    const key = this.shares === null ? "" : JSON.stringify(rows);
    if (key === this.sharesKey) return;
    this.sharesKey = key;
    this.noShares.hidden = rows.length > 0 || this.shares === null;
    this.shareRows.replaceChildren(...rows.map((row) => h("li", { class: "share",
      dataset: { publicid: row.publicid, guest: row.guest } },
    h("div", { class: "share-info" },
      h("strong", { class: "guest", text: row.guest || "(no name)" }),
      h("span", { class: "what", text: ` · ${row.what} · ${row.window}` }),
      row.url ? h("a", { class: "share-url", href: row.url, target: "_blank",
        rel: "noopener noreferrer", text: row.url }) : null),
    h("div", { class: "buttons start" },
      row.url ? h("button", { type: "button", class: "copy-share", text: "Copy link",
        "aria-label": `Copy the link of ${row.guest}`,
        onclick: () => this._copy(row.url) }) : null,
      h("button", { type: "button", class: "remove-share danger-outline", text: "Remove",
        "aria-label": `Remove the link of ${row.guest}`,
        onclick: (e) => this._removeShare(row, e.currentTarget) })))));
  }

  async _loadShares() {
    const nodeid = this.nodeid;
    if (!nodeid || !this.mayShare || this.client.state !== "open") return;
    this.sharesPending = true;
    try {
      const reply = await this.client.request("deviceShares", { nodeid }, { untagged: true,
        accepts: (m) => m.action === "deviceShares"
          && (m.nodeid === nodeid || m.result !== undefined) });
      if (nodeid !== this.nodeid) return;
      if (!Array.isArray(reply.deviceShares)) {
        throw new Error(String(reply.result ?? "no answer"));
      }
      this.shares = reply.deviceShares;
      this.renderInfo();
    } catch (error) {
      if (nodeid === this.nodeid) {
        this.shares = [];
        this.shareError.textContent = `Could not list the guest links: ${error.message}`;
        this.renderInfo();
      }
    } finally {
      if (nodeid === this.nodeid) this.sharesPending = false;
    }
  }

  async _createShare() {
    const nodeid = this.nodeid;
    const { fields, error } = shareRequest({ nodeid, guestname: this.guestName.value,
      terminal: this.shareTerminal.checked, files: this.shareFiles.checked,
      minutes: this.shareDuration.value });
    this.shareError.textContent = error ?? "";
    if (error || !nodeid) return;
    this.shareCreate.disabled = true;
    try {
      const reply = await this.client.call("createDeviceShareLink", fields);
      if (nodeid !== this.nodeid) return;
      const row = shareRow(reply);
      this.guestName.value = "";
      this.newLinkUrl.value = row.url;
      this.newLink.hidden = !row.url;
      this.toasts.show(`Guest link for ${fields.guestname} created`, "ok");
      this._loadShares();
    } catch (err) {
      if (nodeid === this.nodeid) {
        this.shareError.textContent = `Could not create the link: ${err.message}`;
      }
    } finally {
      this.shareCreate.disabled = false;
    }
  }

  async _removeShare(row, button) {
    const nodeid = this.nodeid;
    if (!nodeid || !row.publicid) return;
    button.disabled = true;
    this.shareError.textContent = "";
    try {
      // The answer comes twice: `{removed}` then the result, which is what counts.
      const reply = await this.client.request("removeDeviceShare",
        { nodeid, publicid: row.publicid },
        { accepts: (m) => m.action === "removeDeviceShare" && m.result !== undefined });
      if (!/^ok$/i.test(String(reply.result))) throw new Error(String(reply.result));
      if (nodeid !== this.nodeid) return;
      if (this.newLinkUrl.value === row.url) this.newLink.hidden = true;
      this.toasts.show(`Guest link of ${row.guest || "(no name)"} removed`, "ok");
      this._loadShares();
    } catch (error) {
      if (nodeid === this.nodeid) {
        this.shareError.textContent = `Could not remove the link: ${error.message}`;
      }
      button.disabled = false;
    }
  }

  async _copy(text) {
    try {
      await navigator.clipboard.writeText(text);
      this.toasts.show("Link copied", "ok");
    } catch (error) {
      this.toasts.show("Copying needs clipboard permission; select the link instead", "error");
    }
  }

  _amtPower(action) {
    const node = this.model.nodes.get(this.nodeid);
    if (!node) return;
    if (!action.confirm) {
      this._sendAmtPower(node._id, action);
      return;
    }
    const dialog = this.dialog;
    const name = node.name || "(unnamed)";
    clear(dialog).append(h("form", { method: "dialog" },
      h("h2", { text: `${action.label} "${name}"?` }),
      h("p", { text: action.id === "off"
        ? "Intel AMT switches the device off at once, without shutting the operating " +
          "system down: unsaved work is lost."
        : "Intel AMT restarts the device at once, without shutting the operating system " +
          "down: unsaved work is lost." }),
      h("div", { class: "buttons" },
        h("button", { value: "cancel", id: "amt-cancel", text: "Cancel", autofocus: true }),
        h("button", { value: "confirm", class: "danger", id: "amt-confirm",
          text: action.label }))));
    dialog.onclose = () => {
      if (dialog.returnValue === "confirm" && this.nodeid === node._id) {
        this._sendAmtPower(node._id, action);
      }
    };
    dialog.returnValue = "";
    dialog.showModal();
  }

  async _sendAmtPower(nodeid, action) {
    this.amtStatus.dataset.state = "running";
    this.amtStatus.textContent = `${action.label}: sent, waiting for Intel AMT…`;
    try {
      await this.client.call("poweraction", { nodeids: [nodeid], actiontype: action.actiontype });
    } catch (error) {
      if (nodeid !== this.nodeid) return;
      this.amtStatus.dataset.state = "error";
      this.amtStatus.textContent = `${action.label}: could not send (${error.message})`;
      this.toasts.show(`Could not send ${action.label.toLowerCase()}: ${error.message}`,
        "error");
    }
  }

  // The server's `amtpower` event: a toast for the shown device or one this user switched.
  _amtOutcome(event) {
    if (event?.action !== "amtpower") return;
    const mine = typeof event.userid === "string" && event.userid === this.user()?._id;
    if (!mine && event.nodeid !== this.nodeid) return;
    const node = this.model.nodes.get(event.nodeid);
    const outcome = amtPowerOutcome(event, event.nodeid === this.nodeid ? "" : node?.name);
    if (!outcome) return;
    this.toasts.show(outcome.text, outcome.kind);
    if (event.nodeid === this.nodeid) {
      this.amtStatus.dataset.state = outcome.kind === "ok" ? "done" : "error";
      this.amtStatus.textContent = outcome.text;
    }
  }

  async _run() {
    if (this.running || !this.nodeid) return;
    const nodeid = this.nodeid;
    const script = this.script.value;
    this.running = true;
    this.runButton.disabled = true;
    this.output.hidden = false;
    this.output.textContent = "";
    this.output.classList.remove("failed");
    this.runStatus.textContent = "Running…";
    this.runStatus.dataset.state = "running";
    const started = Date.now();
    try {
      const result = await runCommand(this.client, nodeid, script, {
        onOutput: (text) => { if (nodeid === this.nodeid) this.output.append(text); },
      });
      if (nodeid !== this.nodeid) return;
      this.output.textContent = result;
      const seconds = ((Date.now() - started) / 1000).toFixed(1);
      this.runStatus.textContent = `Finished in ${seconds} s` +
        (result ? "" : " (no output)");
      this.runStatus.dataset.state = "done";
    } catch (error) {
      if (nodeid !== this.nodeid) return;
      this.output.hidden = !this.output.textContent;
      this.runStatus.textContent = `Could not run: ${error.message}`;
      this.runStatus.dataset.state = "error";
    } finally {
      this.running = false;
      this.runButton.disabled = false;
    }
  }

  _renderEvents() {
    const rows = this.log.events.slice(0, 200).map((event) =>
      h("tr", { class: "event", dataset: { action: event.action ?? "" } },
        h("td", { class: "time", text: formatTime(event.time) }),
        h("td", { text: event.username ?? "" }),
        h("td", { text: event.msg ?? event.action ?? "" })));
    this.events.replaceChildren(...rows);
    this.noEvents.hidden = rows.length > 0;
  }
}
