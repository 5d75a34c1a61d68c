import {
  FULL_ADMIN, MESH_PRESETS, MESH_RIGHTS, groupMembers, meshRightsText, presetOf, rightsFromBits,
} from "../accounts.js";
import {
  COLUMNS, DeviceIndex, STATE_FILTERS, deviceAddress, filterWords, sortDevices, windowRange,
} from "../devicelist.js";
import {
  MESHTYPE_AGENT, MESHTYPE_AMT_ONLY, ciraCredentialsCommand, ciraUserName, isAmtOnlyGroup,
} from "../amt.js";
import { coalesce, clear, h } from "../dom.js";
import { agentVersion, connectionState, formatTime, osName, shortId } from "../format.js";
import { isOnline } from "../model.js";
import { deviceHref } from "../route.js";

// How many devices in all may be shown with every row in the DOM; above that, each
// group's table holds only the rows in view (and OVERSCAN more each side), with spacer
// rows standing for the others, so 5000 devices cost what about a hundred do.
const FULL_LIMIT = 400;
const OVERSCAN = 15;
const FILTER_DELAY_MS = 150;
const ROW_HEIGHT = 37;  // first guess; measured on the first rows drawn

// Moves `parent`'s children into the order of `wanted` (removing the others), touching
// only those out of place: a row that stays keeps its focus and is not laid out again.
function reorder(parent, wanted) {
  const keep = new Set(wanted);
  for (const child of [...parent.children]) if (!keep.has(child)) child.remove();
  let cursor = parent.firstElementChild;
  for (const element of wanted) {
    if (element === cursor) {
      cursor = cursor.nextElementSibling;
    } else {
      parent.insertBefore(element, cursor);
    }
  }
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

// Device groups with their devices: create, delete, add an agent, filter and sort; live
// state.  Each group keeps its DOM between renders (a "block"); a change re-renders only
// the groups it touched, once per frame however many events arrived.
export class DevicesView {
  constructor({ root, model, client, toasts, origin, me = () => undefined }) {
    this.root = root;
    this.me = me;  // () => the logged-in user's id
    this.members = null;  // the open "users of a group" dialog: {meshid, render}
    this.model = model;
    this.client = client;
    this.toasts = toasts;
    this.origin = origin;
    this.filter = "";
    this.words = [];
    this.stateFilter = "all";
    this.sort = { key: "name", descending: false };
    this.index = new DeviceIndex();
    this.blocks = new Map();  // meshid → the group's elements and its shown devices
    this.where = new Map();   // nodeid → meshid, as last rendered
    this.dirty = new Set();   // groups to render again
    this.dirtyAll = true;
    this.rowHeight = ROW_HEIGHT;
    this.measured = false;
    this.shownTotal = 0;
    this.render = coalesce(() => this._render());
    this.paint = coalesce(() => this._paint());
    this._build();
    model.onChange((change) => this._changed(change));
    globalThis.addEventListener?.("scroll", () => this.paint(), { passive: true });
    globalThis.addEventListener?.("resize", () => { this.measured = false; this.paint(); });
    // Shown again after another view, or the width changed: the rows in view differ.
    this._observer = globalThis.ResizeObserver ? new ResizeObserver(() => this.paint()) : null;
    this._observer?.observe(this.list);
  }

  _changed(change) {
    if (change.kind === "reset") {
      this.index.clear();
      this.dirtyAll = true;
    } else if (change.kind === "mesh") {
      this.dirty.add(change.id);
    } else if (change.kind === "node") {
      this.index.forget(change.id);
      const before = this.where.get(change.id);
      if (before) this.dirty.add(before);
      const meshid = this.model.nodes.get(change.id)?.meshid;
      if (meshid) this.dirty.add(meshid);
    } else {
      this.dirtyAll = true;
    }
    this.render();
    if (change.kind !== "node") this.members?.render();
  }

  _build() {
    const input = h("input", { name: "meshname", id: "new-group-name", required: true,
      maxlength: "128", placeholder: "New device group name", autocomplete: "off",
      "aria-label": "New device group name" });
    const type = h("select", { name: "meshtype", id: "new-group-type",
      "aria-label": "Type of the new device group" },
    h("option", { value: String(MESHTYPE_AGENT), text: "Agents" }),
    h("option", { value: String(MESHTYPE_AMT_ONLY), text: "Intel AMT only" }));
    this.createForm = h("form", { class: "inline-form", id: "new-group",
      onsubmit: (e) => { e.preventDefault(); this._create(input, type); } },
    input, type, h("button", { type: "submit", class: "primary", text: "Create group" }));
    let timer = null;
    const search = h("input", { type: "search", id: "device-filter", placeholder: "Filter devices",
      "aria-label": "Filter devices", autocomplete: "off",
      oninput: (e) => {
        // Typing fast filters once, after a short pause.
        clearTimeout(timer);
        timer = setTimeout(() => this._setFilter(e.target.value), FILTER_DELAY_MS);
      },
      onkeydown: (e) => {
        if (e.key !== "Enter") return;
        clearTimeout(timer);
        this._setFilter(e.target.value);
      } });
    const state = h("select", { id: "device-state-filter", "aria-label": "Show devices",
      onchange: (e) => {
        this.stateFilter = e.target.value;
        this.dirtyAll = true;
        this.render();
      } },
    STATE_FILTERS.map(([value, label]) => h("option", { value, text: label })));
    this.summary = h("p", { class: "summary", id: "device-summary" });
    this.list = h("div", { id: "groups", class: "groups",
      onkeydown: (e) => this._rowKey(e),
      onclick: (e) => {
        const button = e.target.closest?.("button.sort");
        if (button) this._sortBy(button.dataset.sort);
      } });
    this.dialog = h("dialog", { id: "dialog", class: "dialog" });
    clear(this.root).append(
      h("div", { class: "toolbar" }, this.createForm,
        h("div", { class: "filters" }, search, state)),
      this.summary, this.list, this.dialog);
    this.render();
  }

  _setFilter(text) {
    if (text === this.filter) return;
    this.filter = text;
    this.words = filterWords(text);
    this.dirtyAll = true;
    this.render();
  }

  _sortBy(key) {
    this.sort = key === this.sort.key
      ? { key, descending: !this.sort.descending } : { key, descending: false };
    for (const block of this.blocks.values()) this._showSort(block);
    this.dirtyAll = true;
    this.render();
  }

  async _create(input, type) {
    const name = input.value.trim();
    if (!name) return;
    const meshtype = Number(type.value) === MESHTYPE_AMT_ONLY ? MESHTYPE_AMT_ONLY : MESHTYPE_AGENT;
    const button = this.createForm.querySelector("button");
    button.disabled = true;
    try {
      await this.client.call("createmesh", { meshname: name, meshtype });
      input.value = "";
      type.value = String(MESHTYPE_AGENT);
      this.toasts.show(`Device group "${name}" created`, "ok");
    } catch (error) {
      this.toasts.show(`Could not create the group: ${error.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  _confirmDelete(mesh) {
    const dialog = this.dialog;
    const count = this.model.nodesOf(mesh._id).length;
    clear(dialog).append(h("form", { method: "dialog" },
      h("h2", { text: `Delete the group "${mesh.name}"?` }),
      h("p", { text: count
        ? `Its ${count} device${count === 1 ? "" : "s"} will be removed from the server as well.`
        : "The group has no devices." }),
      h("div", { class: "buttons" },
        h("button", { value: "cancel", text: "Cancel", autofocus: true }),
        h("button", { value: "delete", class: "danger", id: "confirm-delete", text: "Delete" }))));
    dialog.onclose = async () => {
      if (dialog.returnValue !== "delete") return;
      try {
        await this.client.call("deletemesh", { meshid: mesh._id });
        this.toasts.show(`Device group "${mesh.name}" deleted`, "ok");
      } catch (error) {
        this.toasts.show(`Could not delete the group: ${error.message}`, "error");
      }
    };
    dialog.returnValue = "";
    dialog.showModal();
  }

  // Rename a group and change its description (`editmesh`); every session sees the
  // `meshchange` event.
  _edit(mesh) {
    const dialog = this.dialog;
    const name = h("input", { id: "edit-group-name", name: "meshname", required: true,
      maxlength: "128", autocomplete: "off", value: mesh.name ?? "" });
    const desc = h("textarea", { id: "edit-group-desc", name: "desc", maxlength: "1024",
      rows: "3" });
    desc.value = mesh.desc ?? "";
    const error = h("p", { class: "error", id: "edit-group-error", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary", id: "edit-group-save",
      text: "Save" });
    dialog.onclose = null;
    clear(dialog).append(h("form", { class: "stacked", id: "edit-group", onsubmit: async (e) => {
      e.preventDefault();
      const meshname = name.value.trim();
      if (!meshname) {
        error.textContent = "Enter a name for the group";
        return;
      }
      const fields = { meshid: mesh._id };
      if (meshname !== mesh.name) fields.meshname = meshname;
      if (desc.value !== (mesh.desc ?? "")) fields.desc = desc.value;
      if (Object.keys(fields).length === 1) {
        dialog.close();
        return;
      }
      submit.disabled = true;
      error.textContent = "";
      try {
        await this.client.call("editmesh", fields);
        dialog.close();
        this.toasts.show(`Device group "${meshname}" saved`, "ok");
      } catch (err) {
        error.textContent = `Could not save the group: ${err.message}`;
      } finally {
        submit.disabled = false;
      }
    } },
    h("h2", { text: `Edit the group "${mesh.name}"` }),
    h("label", {}, "Name", name),
    h("label", {}, "Description", desc),
    error,
    h("div", { class: "buttons" },
      h("button", { type: "button", text: "Cancel", id: "edit-group-cancel",
        onclick: () => dialog.close() }), submit)));
    dialog.showModal();
    name.select();
  }

  // Who may use a group, with which rights: list, add with a preset or chosen rights,
  // remove.  The list follows the group's `meshchange` events while the dialog is open.
  _members(meshid) {
    const dialog = this.dialog;
    const mesh = this.model.meshes.get(meshid);
    if (!mesh) return;
    const title = h("h2", {});
    const rows = h("tbody", { id: "member-rows" });
    const name = h("input", { id: "member-name", name: "username", required: true,
      maxlength: "64", autocomplete: "off", list: "member-names" });
    const names = h("datalist", { id: "member-names" });
    const preset = h("select", { id: "member-preset", name: "preset" },
      MESH_PRESETS.map(([id, label]) => h("option", { value: id, text: label })),
      h("option", { value: "custom", text: "Chosen rights…" }));
    const boxes = MESH_RIGHTS.map(([bit, label]) => h("label", { class: "check" },
      h("input", { type: "checkbox", class: "right-bit", id: `right-${bit.toString(16)}`,
        value: String(bit), dataset: { bit: String(bit) } }), label));
    const rights = h("fieldset", { class: "rights-bits", id: "member-rights" },
      h("legend", { text: "Rights" }), boxes);
    const inputs = boxes.map((label) => label.querySelector("input"));
    const chosen = () => preset.value === "full" ? FULL_ADMIN
      : rightsFromBits(inputs.filter((box) => box.checked).map((box) => box.value));
    const showPreset = () => {
      const value = MESH_PRESETS.find(([id]) => id === preset.value)?.[2];
      if (value !== undefined) for (const box of inputs) box.checked = (value & box.value) !== 0;
      rights.disabled = preset.value === "full";
    };
    preset.addEventListener("change", showPreset);
    for (const box of inputs) {
      box.addEventListener("change", () => { preset.value = presetOf(chosen()); });
    }
    preset.value = "remote";
    showPreset();
    const error = h("p", { class: "error", id: "member-error", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary", id: "member-add",
      text: "Add user" });
    const form = h("form", { class: "stacked", id: "add-member", onsubmit: async (e) => {
      e.preventDefault();
      const username = name.value.trim();
      if (!username) {
        error.textContent = "Enter the name of a user";
        return;
      }
      const value = chosen();
      if (!value) {
        error.textContent = "Choose at least one right";
        return;
      }
      submit.disabled = true;
      error.textContent = "";
      try {
        const reply = await this.client.request("addmeshuser",
          { meshid, meshadmin: value, usernames: [username] });
        if (!(Number(reply.success) > 0)) {
          error.textContent = reply.result === "Nothing done"
            ? `There is no user "${username}"` : String(reply.result ?? "Not added");
          return;
        }
        name.value = "";
        this.toasts.show(`${username} may now use "${this._meshName(meshid)}": ` +
          meshRightsText(value), "ok");
      } catch (err) {
        error.textContent = `Could not add the user: ${err.message}`;
      } finally {
        submit.disabled = false;
      }
    } },
    h("h3", { text: "Add a user" }),
    h("label", {}, "User name", name), names,
    h("label", {}, "Rights", preset), rights, error,
    h("div", { class: "buttons" },
      h("button", { type: "button", text: "Close", id: "members-close",
        onclick: () => dialog.close() }), submit));
    const render = () => {
      const current = this.model.meshes.get(meshid);
      if (!current) {
        dialog.close();
        return;
      }
      title.textContent = `Users of "${current.name}"`;
      const me = this.me();
      rows.replaceChildren(...groupMembers(current).map((member) => h("tr", {
        class: "member", dataset: { userid: member.id, name: member.name } },
      h("td", { class: "name" }, member.name,
        member.kind !== "user" ? h("span", { class: "tag", text: member.kind }) : null,
        member.id === me ? h("span", { class: "tag", text: "you" }) : null),
      h("td", { class: "rights", text: meshRightsText(member.rights),
        title: `0x${member.rights.toString(16)}` }),
      h("td", { class: "actions" }, member.id === me ? null : h("button", { type: "button",
        class: "remove-member danger-outline", text: "Remove",
        "aria-label": `Remove ${member.name} from the group`,
        onclick: (e) => this._removeMember(meshid, member, e.currentTarget, error) })))));
    };
    this.members = { meshid, render };
    dialog.onclose = () => {
      if (this.members?.render === render) this.members = null;
    };
    clear(dialog).append(h("div", { class: "members" }, title,
      h("table", { class: "members" },
        h("thead", {}, h("tr", {}, ["User", "Rights", ""].map((text) =>
          h("th", { scope: "col", text })))), rows),
      form));
    render();
    dialog.showModal();
    name.focus();
    // Names to pick from, for those allowed to list the accounts.
    this.client.request("users").then((reply) => {
      if (!Array.isArray(reply.users)) return;
      names.replaceChildren(...reply.users.map((user) => h("option", { value: user.name })));
    }, () => {});
  }

  _meshName(meshid) {
    return this.model.meshes.get(meshid)?.name ?? "";
  }

  async _removeMember(meshid, member, button, error) {
    button.disabled = true;
    error.textContent = "";
    try {
      await this.client.call("removemeshuser", { meshid, userid: member.id });
      this.toasts.show(`${member.name} removed from "${this._meshName(meshid)}"`, "ok");
    } catch (err) {
      error.textContent = `Could not remove ${member.name}: ${err.message}`;
      button.disabled = false;
    }
  }

  _addAgent(mesh) {
    const id = encodeURIComponent(shortId(mesh._id));
    const command = `curl -fsSk '${this.origin}/meshagents/install.sh?id=${id}' | sudo sh`;
    const code = h("code", { class: "command", id: "install-command", text: command });
    const dialog = this.dialog;
    dialog.onclose = null;
    clear(dialog).append(h("form", { method: "dialog" },
      h("h2", { text: `Add an agent to "${mesh.name}"` }),
      h("p", { text: "On a Linux machine, run as root:" }),
      h("pre", {}, code),
      h("p", {}, "Or install MeshCentral's agent with this group's settings file: ",
        h("a", { href: `/meshsettings?id=${id}`, download: "meshagent.msh", id: "msh-link",
          text: "meshagent.msh" })),
      h("div", { class: "buttons" },
        h("button", { type: "button", text: "Copy command", onclick: async () => {
          try {
            await navigator.clipboard.writeText(command);
            this.toasts.show("Command copied", "ok");
          } catch (error) {
            this.toasts.show("Copying needs clipboard permission; select the text instead", "error");
          }
        } }),
        h("button", { value: "close", text: "Close", autofocus: true }))));
    dialog.showModal();
  }

  _render() {
    const groups = this.model.groups();
    for (const [meshid, block] of this.blocks) {
      if (!this.model.meshes.has(meshid)) {
        block.section.remove();
        this.blocks.delete(meshid);
      }
    }
    const filtering = this.words.length > 0 || this.stateFilter !== "all";
    let total = 0;
    let online = 0;
    let shown = 0;
    this.order = groups.map((mesh) => {
      let block = this.blocks.get(mesh._id);
      if (!block) {
        block = this._block(mesh._id);
        this.blocks.set(mesh._id, block);
        this.dirty.add(mesh._id);
      }
      if (this.dirtyAll || this.dirty.has(mesh._id)) this._update(block, mesh, filtering);
      total += block.total;
      online += block.up;
      shown += block.shown.length;
      return block;
    });
    this.dirty.clear();
    this.dirtyAll = false;
    this.shownTotal = shown;
    let summary;
    if (!this.model.loaded) {
      summary = "Loading…";
    } else if (!groups.length) {
      summary = "No device groups yet. Create one to start adding devices.";
    } else {
      summary = `${plural(groups.length, "group")}, ${plural(total, "device")}, ${online} online` +
        (filtering ? ` · ${shown} shown` : "");
    }
    if (this.summary.textContent !== summary) this.summary.textContent = summary;
    reorder(this.list, this.order.map((block) => block.section));
    this._paint();
  }

  // The DOM of one group, kept while the group exists.
  _block(meshid) {
    // One cell, no colspan: a spanning cell would add columns where a narrow screen hides
    // some.
    const spacer = () => h("tr", { class: "spacer", "aria-hidden": "true", hidden: true },
      h("td", {}));
    const block = { meshid, rows: new Map(), shown: [], total: 0, up: 0, actionsKey: null,
      start: 0, end: 0, top: spacer(), bottom: spacer() };
    block.heading = h("h2", { class: "group-name" });
    block.counts = h("span", { class: "counts" });
    block.actions = h("div", { class: "group-actions" });
    block.desc = h("p", { class: "desc", hidden: true });
    block.empty = h("p", { class: "empty", hidden: true });
    block.provision = h("div", { class: "provision", hidden: true });
    block.provisionKey = null;
    block.headers = COLUMNS.map(([key, title]) => h("th", { scope: "col", class: `col-${key}` },
      h("button", { type: "button", class: "sort", dataset: { sort: key }, text: title,
        title: `Sort by ${title.toLowerCase()}` })));
    block.tbody = h("tbody", {}, block.top, block.bottom);
    block.table = h("table", { class: "devices", hidden: true },
      h("thead", {}, h("tr", {}, block.headers)), block.tbody);
    block.section = h("section", { class: "group", dataset: { meshid } },
      h("header", {}, h("div", { class: "group-title" }, block.heading, block.counts),
        block.actions),
      block.desc, block.provision, block.empty, block.table);
    this._showSort(block);
    return block;
  }

  _showSort(block) {
    for (const th of block.headers) {
      const button = th.firstElementChild;
      if (button.dataset.sort === this.sort.key) {
        th.setAttribute("aria-sort", this.sort.descending ? "descending" : "ascending");
        button.dataset.direction = this.sort.descending ? "down" : "up";
      } else {
        th.removeAttribute("aria-sort");
        delete button.dataset.direction;
      }
    }
  }

  // A group's heading, counts, actions and the devices it shows (filtered, sorted).
  _update(block, mesh, filtering) {
    const devices = this.model.nodesOf(mesh._id);
    let up = 0;
    for (const node of devices) {
      if (isOnline(node.conn)) up += 1;
      this.where.set(node._id, mesh._id);
    }
    block.total = devices.length;
    block.up = up;
    const matching = filtering
      ? devices.filter((node) => this.index.matches(node, this.words, this.stateFilter))
      : devices;
    block.shown = sortDevices(matching, this.sort.key, this.sort.descending);

    const name = mesh.name ?? "";
    block.section.dataset.name = name;
    setText(block.heading, name || "(unnamed group)");
    setText(block.counts, `${plural(devices.length, "device")} · ${up} online`);
    setText(block.desc, mesh.desc ? String(mesh.desc) : "");
    block.desc.hidden = !mesh.desc;
    // What our own link allows (no link of ours: the server decides, buttons stay).
    const link = mesh.links?.[this.me()];
    const rights = link ? (Number(link.rights) || 0) >>> 0 : FULL_ADMIN;
    const amtOnly = isAmtOnlyGroup(mesh);
    block.section.dataset.mtype = String(Number(mesh.mtype) || "");
    const actionsKey = `${rights}\u0001${name}\u0001${amtOnly}`;
    if (block.actionsKey !== actionsKey) {
      block.actionsKey = actionsKey;
      block.actions.replaceChildren(...this._actions(mesh._id, name, rights, amtOnly));
    }
    this._showProvision(block, mesh, amtOnly);
    let empty = "";
    if (!devices.length) {
      empty = amtOnly ? "No devices yet. Provision Intel AMT with this group's CIRA " +
        "credentials to add one." : "No devices yet. Use “Add agent” to install one.";
    }
    else if (!block.shown.length) empty = "No device matches the filter.";
    setText(block.empty, empty);
    block.empty.hidden = !empty;
    block.table.hidden = !block.shown.length;
  }

  // How to bring Intel AMT devices into an AMT-only group: over CIRA, as the group's
  // CIRA user with a password the server's `meshd-admin ciracredentials` issues (no
  // control action hands that password to a browser).
  _showProvision(block, mesh, amtOnly) {
    const info = this.client.serverinfo || {};
    const host = String(info.mpsname || globalThis.location?.hostname || "");
    const port = Number(info.mpsport) || 4433;
    const key = amtOnly ? `${mesh._id}\u0001${host}\u0001${port}` : "";
    block.provision.hidden = !amtOnly;
    if (key === block.provisionKey) return;
    block.provisionKey = key;
    if (!amtOnly) {
      block.provision.replaceChildren();
      return;
    }
    const user = ciraUserName(mesh._id);
    const command = ciraCredentialsCommand(mesh._id);
    block.provision.replaceChildren(
      h("span", { class: "tag kind-amt", text: "Intel AMT only" }),
      h("p", { class: "hint", text: "Devices join this group when Intel AMT connects to " +
        "the server over CIRA with the group's credentials:" }),
      h("dl", { class: "facts provision-facts" },
        h("dt", { text: "CIRA server" }),
        h("dd", { class: "cira-server", text: `${host}:${port}` }),
        h("dt", { text: "CIRA user" }),
        h("dd", { class: "cira-user", text: user || "(this group's id is too short)" }),
        h("dt", { text: "CIRA password" }),
        h("dd", {}, "Issued on the server, shown once; run there:",
          h("div", { class: "copy-row" },
            h("code", { class: "command cira-command", text: command }),
            h("button", { type: "button", class: "copy-cira", text: "Copy",
              "aria-label": `Copy the CIRA credentials command of ${mesh.name ?? ""}`,
              onclick: async () => {
                try {
                  await navigator.clipboard.writeText(command);
                  this.toasts.show("Command copied", "ok");
                } catch (error) {
                  this.toasts.show("Copying needs clipboard permission; select the text " +
                    "instead", "error");
                }
              } }))),
      ),
      h("p", { class: "hint", text: "Running it again issues a new password: devices " +
        "provisioned with the old one are then refused." }));
  }

  _actions(meshid, name, rights, amtOnly = false) {
    const mesh = () => this.model.meshes.get(meshid);
    return [
      amtOnly ? null : h("button", { type: "button", class: "add-agent", text: "Add agent",
        "aria-label": `Add an agent to ${name}`,
        onclick: () => { if (mesh()) this._addAgent(mesh()); } }),
      rights & 0x1 ? h("button", { type: "button", class: "edit-group", text: "Edit",
        "aria-label": `Edit group ${name}`,
        onclick: () => { if (mesh()) this._edit(mesh()); } }) : null,
      rights & 0x2 ? h("button", { type: "button", class: "group-users", text: "Users",
        "aria-label": `Users of ${name}`, onclick: () => this._members(meshid) }) : null,
      rights !== FULL_ADMIN ? null : h("button", { type: "button",
        class: "delete-group danger-outline", text: "Delete",
        "aria-label": `Delete group ${name}`,
        onclick: () => { if (mesh()) this._confirmDelete(mesh()); } }),
    ].filter(Boolean);
  }

  // Rows into the DOM: every shown row while the fleet is small; otherwise, per group,
  // only those in view.  All positions are read before anything is written.
  _paint() {
    const order = this.order || [];
    const windowed = this.shownTotal > FULL_LIMIT;
    // Hidden behind another view nothing is in view; the ResizeObserver paints on return.
    if (windowed && this.root.hidden) return;
    const height = globalThis.innerHeight || 800;
    const tops = order.map((block) => (windowed && block.shown.length
      ? block.tbody.getBoundingClientRect().top : 0));
    order.forEach((block, i) => {
      const count = block.shown.length;
      const range = windowed
        ? windowRange({ count, rowHeight: this.rowHeight, top: tops[i], height,
          overscan: OVERSCAN })
        : { start: 0, end: count };
      this._paintRows(block, range);
    });
    if (windowed && !this.measured) this._measure(order);
  }

  _paintRows(block, { start, end }) {
    const focused = document.activeElement;
    let refocus = null;
    const rows = new Map();
    const elements = [block.top];
    for (let i = start; i < end; i += 1) {
      const node = block.shown[i];
      const key = rowKey(node);
      let row = block.rows.get(node._id);
      if (!row || row.key !== key) {
        const fresh = { key, tr: this._row(node) };
        if (row && focused && row.tr.contains(focused)) refocus = fresh.tr;
        row = fresh;
      }
      rows.set(node._id, row);
      elements.push(row.tr);
    }
    elements.push(block.bottom);
    block.rows = rows;
    block.start = start;
    block.end = end;
    setSpacer(block.top, start * this.rowHeight);
    setSpacer(block.bottom, (block.shown.length - end) * this.rowHeight);
    reorder(block.tbody, elements);
    refocus?.querySelector("a")?.focus({ preventScroll: true });
  }

  // The real height of a row (fonts, zoom, a phone's narrower padding) for the spacers.
  _measure(order) {
    for (const block of order) {
      const count = block.end - block.start;
      if (count < 2) continue;
      const first = block.top.nextElementSibling.getBoundingClientRect();
      const last = block.bottom.previousElementSibling.getBoundingClientRect();
      const pitch = (last.bottom - first.top) / count;
      if (!(pitch > 0)) return;  // not laid out (another view is shown)
      this.measured = true;
      if (Math.abs(pitch - this.rowHeight) > 0.25) {
        this.rowHeight = pitch;
        this.paint();
      }
      return;
    }
  }

  // Arrow keys, Page Up/Down, Home and End move between the devices of a group, rows
  // that are not in the DOM yet included.
  _rowKey(event) {
    const link = event.target.closest?.("a.device-link");
    const steps = { ArrowDown: 1, ArrowUp: -1, PageDown: 10, PageUp: -10,
      Home: -Infinity, End: Infinity };
    if (!link || !(event.key in steps) || event.altKey || event.ctrlKey || event.metaKey) return;
    const nodeid = link.closest("tr.device")?.dataset.nodeid;
    const block = this.blocks.get(link.closest("section.group")?.dataset.meshid);
    if (!block || !nodeid) return;
    const index = block.shown.findIndex((node) => node._id === nodeid);
    const target = Math.max(0, Math.min(block.shown.length - 1, index + steps[event.key]));
    event.preventDefault();
    if (index < 0 || target === index) return;
    const rowTop = block.tbody.getBoundingClientRect().top + target * this.rowHeight;
    const height = globalThis.innerHeight || 800;
    const header = document.querySelector(".topbar")?.getBoundingClientRect().bottom ?? 0;
    if (rowTop < header || rowTop + this.rowHeight > height) {
      globalThis.scrollBy(0, rowTop - (header + height) / 2);
    }
    this._paint();
    block.rows.get(block.shown[target]._id)?.tr.querySelector("a.device-link")?.focus();
  }

  _row(node) {
    const state = connectionState(node.conn);
    const since = state.online ? formatTime(node.agct) : formatTime(node.lastseen);
    const name = node.name || "(unnamed)";
    const os = osName(node);
    const address = deviceAddress(node);
    return h("tr", { class: state.online ? "device online" : "device offline",
      dataset: { nodeid: node._id, name: node.name ?? "", online: state.online ? "1" : "0" } },
    h("td", { class: "name", title: name }, h("span", { class: "dot", "aria-hidden": "true" }),
      h("a", { href: deviceHref(node._id), class: "device-link", text: name })),
    h("td", { class: "state", text: state.label, title: state.label }),
    h("td", { class: "os", text: os, title: os || undefined }),
    h("td", { class: "agent", text: agentVersion(node) }),
    h("td", { class: "address", text: address, title: address || undefined }),
    h("td", { class: "since", text: since }));
  }
}

// What a row shows, as one string: the row is made again only when this changes.
function rowKey(node) {
  return [node.name, node.conn, node.agct, node.lastseen, node.ip, node.host, osName(node),
    agentVersion(node)].join("\u0001");
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function setSpacer(row, pixels) {
  row.hidden = pixels <= 0;
  const cell = row.firstElementChild;
  const height = `${Math.max(0, pixels)}px`;
  if (cell.style.height !== height) cell.style.height = height;
}
