import { amtConnection, amtPowerActions, amtPowerOutcome, deviceRights } from "../amt.js";
import { runCommand } from "../commands.js";
import { coalesce, clear, h } from "../dom.js";
import { agentVersion, connectionState, formatTime, osName } from "../format.js";
import { EventLog } from "../model.js";
import { FilesPanel } from "./files.js";
import { TerminalPanel } from "./terminal.js";

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
      if (this.nodeid && event.nodeid === this.nodeid) this.log.add(event);
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
    this.dialog = h("dialog", { id: "device-dialog", class: "dialog" });
    this.events = h("tbody", { id: "device-event-rows" });
    this.noEvents = h("p", { class: "empty", text: "No events for this device." });
    this.overview = h("div", { class: "device-page", id: "device-overview", role: "tabpanel" },
      h("div", { class: "card" }, h("h2", { text: "General" }), this.facts),
      this.amtCard,
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
        this.events), this.noEvents));
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
