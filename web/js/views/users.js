import {
  FULL_ADMIN, UserList, expiresIn, isFullAdmin, passwordProblem, siteRightsText,
  userNameProblem,
} from "../accounts.js";
import { coalesce, clear, h } from "../dom.js";
import { formatTime } from "../format.js";

// The server's accounts, for administrators: list, add, delete; kept live by events.
export class UsersView {
  constructor({ root, client, toasts, me, forced = () => false }) {
    this.root = root;
    this.client = client;
    this.toasts = toasts;
    this.me = me;  // () => the logged-in user's id
    this.forced = forced;  // () => whether the server requires a second factor
    this.list = new UserList();
    this.active = false;
    this.render = coalesce(() => this._render());
    this._build();
    this.list.onChange(() => this.render());
    client.on("event", (event) => this.list.applyEvent(event));
    client.on("open", () => { if (this.active) this.load(); });
  }

  _build() {
    this.rows = h("tbody", { id: "user-rows" });
    this.summary = h("p", { class: "summary", id: "user-summary", text: "Loading…" });
    this.dialog = h("dialog", { class: "dialog", id: "user-dialog" });
    clear(this.root).append(
      h("div", { class: "toolbar" },
        h("button", { type: "button", class: "primary", id: "add-user", text: "Add user",
          onclick: () => this._addDialog() })),
      this.summary,
      h("div", { class: "card flush" }, h("table", { class: "users" },
        h("thead", {}, h("tr", {}, ["User", "E-mail", "Rights", "Last login", ""]
          .map((title) => h("th", { scope: "col", text: title })))), this.rows)),
      this.dialog);
  }

  // Called when the view is shown (and, while shown, after a reconnect).
  async load() {
    this.active = true;
    try {
      const reply = await this.client.call("users");
      this.list.load(reply.users);
    } catch (error) {
      this.summary.textContent = `Could not load the users: ${error.message}`;
    }
  }

  hide() {
    this.active = false;
  }

  _render() {
    const users = this.list.sorted();
    this.summary.textContent = `${users.length} user${users.length === 1 ? "" : "s"}`;
    this.rows.replaceChildren(...users.map((user) => {
      const self = user._id === this.me();
      return h("tr", { class: "user", dataset: { userid: user._id, name: user.name ?? "" } },
        h("td", { class: "name" }, user.name ?? user._id,
          self ? h("span", { class: "tag", text: "you" }) : null,
          user.otpsecret ? h("span", { class: "tag", text: "2FA", title: "Two-factor on" }) : null),
        h("td", { text: user.email ?? "" }),
        h("td", { class: "rights", text: siteRightsText(user.siteadmin) }),
        h("td", { text: user.login ? formatTime(user.login * 1000) : "never" }),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "edit-user", text: "Edit",
            "aria-label": `Edit user ${user.name}`, onclick: () => this._editDialog(user) }),
          // Under force2factor a user enrols with a code another administrator issues.
          self || !this.forced() ? null : h("button", { type: "button", class: "enrol-code",
            text: "Enrolment code", "aria-label": `Two-factor enrolment code for ${user.name}`,
            onclick: () => this._enrolCodeDialog(user) }),
          self ? null : h("button", { type: "button",
            class: "delete-user danger-outline", text: "Delete",
            "aria-label": `Delete user ${user.name}`, onclick: () => this._confirmDelete(user) })));
    }));
  }

  _addDialog() {
    const name = h("input", { id: "new-user-name", name: "username", required: true,
      maxlength: "64", autocomplete: "off" });
    const password = h("input", { id: "new-user-password", name: "password", type: "password",
      required: true, minlength: "8", autocomplete: "new-password" });
    const email = h("input", { id: "new-user-email", name: "email", type: "email",
      autocomplete: "off" });
    const admin = h("input", { id: "new-user-admin", name: "siteadmin", type: "checkbox" });
    const error = h("p", { class: "error", id: "add-user-error", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary", id: "add-user-submit",
      text: "Add user" });
    const dialog = this.dialog;
    dialog.onclose = null;
    const form = h("form", { class: "stacked", onsubmit: async (e) => {
      e.preventDefault();
      const problem = userNameProblem(name.value) || passwordProblem(password.value);
      if (problem) {
        error.textContent = problem;
        return;
      }
      const fields = { username: name.value, pass: password.value };
      if (email.value.trim()) fields.email = email.value.trim();
      if (admin.checked) fields.siteadmin = FULL_ADMIN;
      submit.disabled = true;
      error.textContent = "";
      try {
        await this.client.call("adduser", fields);
        dialog.close();
        this.toasts.show(`User "${fields.username}" added`, "ok");
      } catch (err) {
        error.textContent = `Could not add the user: ${err.message}`;
      } finally {
        submit.disabled = false;
      }
    } },
    h("h2", { text: "Add a user" }),
    h("label", {}, "User name", name),
    h("label", {}, "Password (at least 8 characters)", password),
    h("label", {}, "E-mail (optional)", email),
    h("label", { class: "check" }, admin, "Site administrator (full rights on the server)"),
    error,
    h("div", { class: "buttons" },
      h("button", { type: "button", text: "Cancel", onclick: () => dialog.close() }), submit));
    clear(dialog).append(form);
    dialog.showModal();
    name.focus();
  }

  // E-mail and site administrator (`edituser`); the server refuses to change one's own rights.
  _editDialog(user) {
    const self = user._id === this.me();
    const wasAdmin = isFullAdmin(user);
    const email = h("input", { id: "edit-user-email", name: "email", type: "email",
      autocomplete: "off", value: user.email ?? "" });
    const admin = h("input", { id: "edit-user-admin", name: "siteadmin", type: "checkbox",
      checked: wasAdmin, disabled: self });
    const error = h("p", { class: "error", id: "edit-user-error", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary", id: "edit-user-submit",
      text: "Save" });
    const dialog = this.dialog;
    dialog.onclose = null;
    const form = h("form", { class: "stacked", onsubmit: async (e) => {
      e.preventDefault();
      const fields = { userid: user._id };
      const address = email.value.trim();
      if (address !== (user.email ?? "")) fields.email = address;
      if (!self && admin.checked !== wasAdmin) fields.siteadmin = admin.checked ? FULL_ADMIN : 0;
      if (Object.keys(fields).length === 1) {
        dialog.close();
        return;
      }
      submit.disabled = true;
      error.textContent = "";
      try {
        await this.client.call("edituser", fields);
        dialog.close();
        this.toasts.show(`User "${user.name}" changed`, "ok");
      } catch (err) {
        error.textContent = `Could not change the user: ${err.message}`;
      } finally {
        submit.disabled = false;
      }
    } },
    h("h2", { text: `Edit the user "${user.name}"` }),
    h("label", {}, "E-mail", email),
    h("label", { class: "check" }, admin, "Site administrator (full rights on the server)"),
    self ? h("p", { class: "hint", text: "You cannot change your own site rights." }) : null,
    error,
    h("div", { class: "buttons" },
      h("button", { type: "button", text: "Cancel", onclick: () => dialog.close() }), submit));
    clear(dialog).append(form);
    dialog.showModal();
    email.focus();
  }

  // A one-time two-factor enrolment code for the user (`otpauth-enrolcode`), shown once.
  _enrolCodeDialog(user) {
    const dialog = this.dialog;
    dialog.onclose = null;
    const error = h("p", { class: "error", id: "enrolcode-error", role: "alert" });
    const result = h("div", { id: "enrolcode-result", hidden: true });
    const issue = h("button", { type: "button", class: "primary", id: "enrolcode-issue",
      text: "Issue code" });
    const close = h("button", { type: "button", id: "enrolcode-close", text: "Cancel",
      onclick: () => dialog.close() });
    issue.addEventListener("click", async () => {
      issue.disabled = true;
      error.textContent = "";
      try {
        const reply = await this.client.call("otpauth-enrolcode", { userid: user._id });
        if (typeof reply.code !== "string" || !reply.code) {
          throw new Error("The server sent no code");
        }
        this._showEnrolCode(user, reply, result);
        issue.hidden = true;
        close.textContent = "Close";
        result.querySelector("#enrolcode-copy")?.focus();
      } catch (err) {
        error.textContent = `Could not issue an enrolment code: ${err.message}`;
        issue.disabled = false;
      }
    });
    const enrolled = Boolean(user.otpsecret);
    clear(dialog).append(h("div", { class: "stacked enrolcode" },
      h("h2", { text: `Two-factor enrolment code for "${user.name}"` }),
      h("p", { text: "This server requires two-factor authentication. With a one-time " +
        "enrolment code and their password, the user sets up an authenticator app at their " +
        "next login. Hand the code over in person or by another channel than e-mail." }),
      enrolled ? h("p", { class: "hint", text: "This user already has an authenticator " +
        "app; the code is only needed if they set one up again." }) : null,
      h("p", { class: "hint", text: "Issuing a code cancels any earlier one for this user." }),
      result, error,
      h("div", { class: "buttons" }, close, issue)));
    dialog.showModal();
    issue.focus();
  }

  _showEnrolCode(user, reply, result) {
    const code = String(reply.code);
    const expire = Number(reply.expire);
    const copy = h("button", { type: "button", id: "enrolcode-copy", text: "Copy code",
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(code);
          this.toasts.show("Enrolment code copied", "ok");
        } catch (err) {
          this.toasts.show("Copying needs clipboard permission; select the code instead",
            "error");
        }
      } });
    result.replaceChildren(
      h("p", { text: `The enrolment code for "${user.name}", shown only now:` }),
      h("p", { class: "enrolcode-line" },
        h("code", { class: "enrolcode-value", id: "enrolcode-value", text: code }), copy),
      Number.isFinite(expire) ? h("p", { class: "hint", id: "enrolcode-expire",
        text: `Valid until ${formatTime(expire)} (${expiresIn(expire)}); it works once.` })
        : null);
    result.hidden = false;
  }

  _confirmDelete(user) {
    const dialog = this.dialog;
    clear(dialog).append(h("form", { method: "dialog" },
      h("h2", { text: `Delete the user "${user.name}"?` }),
      h("p", { text: "The account, its rights on device groups and its login tokens are " +
        "removed. Their open sessions end." }),
      h("div", { class: "buttons" },
        h("button", { value: "cancel", text: "Cancel", autofocus: true }),
        h("button", { value: "delete", class: "danger", id: "confirm-delete-user",
          text: "Delete" }))));
    dialog.onclose = async () => {
      if (dialog.returnValue !== "delete") return;
      try {
        await this.client.call("deleteuser", { userid: user._id });
        this.toasts.show(`User "${user.name}" deleted`, "ok");
      } catch (error) {
        this.toasts.show(`Could not delete the user: ${error.message}`, "error");
      }
    };
    dialog.returnValue = "";
    dialog.showModal();
  }
}
