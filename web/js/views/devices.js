import {
  FULL_ADMIN, MESH_PRESETS, MESH_RIGHTS, groupMembers, meshRightsText, presetOf, rightsFromBits,
} from "../accounts.js";
import { coalesce, clear, h } from "../dom.js";
import { connectionState, formatTime, matchesFilter, osName, shortId } from "../format.js";
import { deviceHref } from "../route.js";

// Device groups with their devices: create, delete, add an agent, filter; live state.
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
    this.render = coalesce(() => this._render());
    this._build();
    model.onChange(() => {
      this.render();
      this.members?.render();
    });
  }

  _build() {
    const input = h("input", { name: "meshname", id: "new-group-name", required: true,
      maxlength: "128", placeholder: "New device group name", autocomplete: "off",
      "aria-label": "New device group name" });
    this.createForm = h("form", { class: "inline-form", id: "new-group",
      onsubmit: (e) => { e.preventDefault(); this._create(input); } },
    input, h("button", { type: "submit", class: "primary", text: "Create group" }));
    const search = h("input", { type: "search", id: "device-filter", placeholder: "Filter devices",
      "aria-label": "Filter devices", oninput: (e) => { this.filter = e.target.value; this.render(); } });
    this.summary = h("p", { class: "summary", id: "device-summary" });
    this.list = h("div", { id: "groups", class: "groups" });
    this.dialog = h("dialog", { id: "dialog", class: "dialog" });
    clear(this.root).append(
      h("div", { class: "toolbar" }, this.createForm, search), this.summary, this.list, this.dialog);
    this.render();
  }

  async _create(input) {
    const name = input.value.trim();
    if (!name) return;
    const button = this.createForm.querySelector("button");
    button.disabled = true;
    try {
      await this.client.call("createmesh", { meshname: name, meshtype: 2 });
      input.value = "";
      this.toasts.show(`Device group "${name}" created`, "ok");
    } catch (error) {
      this.toasts.show(`Could not create the group: ${error.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  _confirmDelete(mesh) {
    const dialog = this.dialog;
    const count = this.model.devicesOf(mesh._id).length;
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
    let total = 0;
    let online = 0;
    const sections = groups.map((mesh) => {
      const devices = this.model.devicesOf(mesh._id);
      const shown = devices.filter((node) => matchesFilter(node, this.filter));
      const up = devices.filter((node) => connectionState(node.conn).online).length;
      total += devices.length;
      online += up;
      return this._group(mesh, devices, shown, up);
    });
    if (!this.model.loaded) {
      this.summary.textContent = "Loading…";
    } else if (!groups.length) {
      this.summary.textContent = "No device groups yet. Create one to start adding devices.";
    } else {
      this.summary.textContent = `${groups.length} group${groups.length === 1 ? "" : "s"}, ` +
        `${total} device${total === 1 ? "" : "s"}, ${online} online`;
    }
    this.list.replaceChildren(...sections);
  }

  _group(mesh, devices, shown, up) {
    const heading = h("h2", { class: "group-name", text: mesh.name || "(unnamed group)" });
    const counts = h("span", { class: "counts",
      text: `${devices.length} device${devices.length === 1 ? "" : "s"} · ${up} online` });
    // What our own link allows (no link of ours: the server decides, buttons stay).
    const link = mesh.links?.[this.me()];
    const rights = link ? (Number(link.rights) || 0) >>> 0 : FULL_ADMIN;
    const actions = h("div", { class: "group-actions" },
      h("button", { type: "button", class: "add-agent", text: "Add agent",
        "aria-label": `Add an agent to ${mesh.name}`, onclick: () => this._addAgent(mesh) }),
      rights & 0x1 ? h("button", { type: "button", class: "edit-group", text: "Edit",
        "aria-label": `Edit group ${mesh.name}`, onclick: () => this._edit(mesh) }) : null,
      rights & 0x2 ? h("button", { type: "button", class: "group-users", text: "Users",
        "aria-label": `Users of ${mesh.name}`, onclick: () => this._members(mesh._id) }) : null,
      rights !== FULL_ADMIN ? null : h("button", { type: "button",
        class: "delete-group danger-outline", text: "Delete",
        "aria-label": `Delete group ${mesh.name}`, onclick: () => this._confirmDelete(mesh) }));
    let body;
    if (!devices.length) {
      body = h("p", { class: "empty", text: "No devices yet. Use “Add agent” to install one." });
    } else if (!shown.length) {
      body = h("p", { class: "empty", text: "No device matches the filter." });
    } else {
      body = h("table", { class: "devices" },
        h("thead", {}, h("tr", {}, ["Device", "State", "Operating system", "Address", "Since"]
          .map((title) => h("th", { scope: "col", text: title })))),
        h("tbody", {}, shown.map((node) => this._row(node))));
    }
    return h("section", { class: "group", dataset: { meshid: mesh._id, name: mesh.name } },
      h("header", {}, h("div", { class: "group-title" }, heading, counts), actions),
      mesh.desc ? h("p", { class: "desc", text: mesh.desc }) : null,
      body);
  }

  _row(node) {
    const state = connectionState(node.conn);
    const since = state.online ? formatTime(node.agct) : formatTime(node.lastseen);
    return h("tr", { class: state.online ? "device online" : "device offline",
      dataset: { nodeid: node._id, name: node.name, online: state.online ? "1" : "0" } },
    h("td", { class: "name" }, h("span", { class: "dot", "aria-hidden": "true" }),
      h("a", { href: deviceHref(node._id), class: "device-link", text: node.name || "(unnamed)" })),
    h("td", { class: "state", text: state.label }),
    h("td", { text: osName(node) }),
    h("td", { text: node.ip || node.host || "" }),
    h("td", { text: since }));
  }
}
