import {
  describeLogins, enrolCodeProblem, groupSecret, hasSecondFactor, normalEnrolCode, parseOtpauth,
  passwordProblem, setupErrorText, siteRightsText,
} from "../accounts.js";
import { clear, h } from "../dom.js";
import { formatTime } from "../format.js";
import { qrSvg } from "../qr.js";

// The logged-in account: facts, changing the password, two-factor authentication, the
// recent logins and failed logins.  When the server requires a second factor and the
// account has none (setPolicy), only enrolment is offered: the password, an enrolment
// code from an administrator and a code of the app; `onEnrolled` is called after it.
export class AccountView {
  constructor({ root, client, toasts, user, onEnrolled = () => {} }) {
    this.root = root;
    this.client = client;
    this.toasts = toasts;
    this.user = user || {};
    this.onEnrolled = onEnrolled;
    this.forced = false;    // the server requires a second factor (force2factor)
    this.required = false;  // ... and this account has none yet: enrolment only
    this.enrolling = null;  // {secret, url} while an authenticator is being added
    this.codes = null;      // backup codes just made, shown once
    client.on("userinfo", (message) => this.update(message.userinfo));
    this._build();
    this.render();
  }

  // A new view of the account (userinfo, or the account of an accountchange event).
  update(userinfo) {
    if (userinfo && typeof userinfo === "object") {
      this.user = { ...userinfo };
      this.render();
    }
  }

  _build() {
    this.facts = h("dl", { class: "facts", id: "account-facts" });
    this.passwordCard = this._passwordCard();
    this.twoFactor = h("div", { class: "card", id: "two-factor" });
    this.loginsCard = this._loginsCard();
    clear(this.root).append(h("div", { class: "account-page" },
      h("div", { class: "card" }, h("h2", { text: "Account" }), this.facts,
        h("p", {}, h("a", { href: "/logout", class: "button danger-outline",
          id: "logout-account", text: "Log out" }))),
      this.passwordCard, this.twoFactor, this.loginsCard));
  }

  // What the server requires: {forced, required} (see the constructor).
  setPolicy({ forced, required }) {
    const changed = this.forced !== Boolean(forced) || this.required !== Boolean(required);
    this.forced = Boolean(forced);
    this.required = Boolean(required);
    this.passwordCard.hidden = this.required;
    this.loginsCard.hidden = this.required;
    if (changed) this._renderTwoFactor();
  }

  // Called by the router when the page is shown (and again after a reconnection).
  show() {
    if (!this.required) this.loadLogins();
  }

  _loginsCard() {
    this.loginRows = h("tbody", { id: "login-rows" });
    this.loginStatus = h("p", { class: "empty", id: "logins-status", role: "status",
      text: "Loading…" });
    this.loginTable = h("table", { class: "events logins", id: "logins", hidden: true },
      h("caption", { class: "visually-hidden", text: "Recent logins, newest first" }),
      h("thead", {}, h("tr", {}, ["Time", "What", "Address", "Browser", "Operating system"]
        .map((title) => h("th", { scope: "col", text: title })))),
      this.loginRows);
    return h("div", { class: "card wide", id: "logins-card" },
      h("div", { class: "card-title" }, h("h2", { text: "Recent logins" }),
        h("button", { type: "button", id: "logins-refresh", text: "Refresh",
          onclick: () => this.loadLogins() })),
      h("p", { class: "hint", text: "Logins and failed login attempts on this account, " +
        "newest first. A failed attempt you do not know of may mean someone is guessing " +
        "your password." }),
      this.loginTable, this.loginStatus);
  }

  async loadLogins() {
    if (this.client.state !== "open") return;
    try {
      const reply = await this.client.request("previousLogins", {}, { untagged: true,
        accepts: (m) => m.action === "previousLogins" && m.userid === undefined });
      this.renderLogins(reply.events);
    } catch (error) {
      this.loginStatus.hidden = false;
      this.loginStatus.textContent = `Could not load the logins: ${error.message}`;
    }
  }

  renderLogins(events) {
    const logins = describeLogins(events);
    this.loginRows.replaceChildren(...logins.map((login) =>
      h("tr", { class: login.failed ? "login failed" : "login",
        dataset: { failed: login.failed ? "1" : "0" } },
      h("td", { class: "time", text: formatTime(login.time) || String(login.time) }),
      h("td", { class: "what", text: login.what }),
      h("td", { class: "address", text: login.address }),
      h("td", { class: "browser", text: login.browser }),
      h("td", { class: "os", text: login.os }))));
    this.loginTable.hidden = logins.length === 0;
    this.loginStatus.hidden = logins.length > 0;
    this.loginStatus.textContent = logins.length ? "" : "No logins recorded.";
  }

  render() {
    const user = this.user;
    const rows = [["User name", user.name], ["E-mail", user.email],
      ["Rights", siteRightsText(user.siteadmin)],
      ["Account created", user.creation ? formatTime(user.creation * 1000) : ""],
      ["Last login", user.login ? formatTime(user.login * 1000) : ""],
      ["Password changed", user.passchange > 0 ? formatTime(user.passchange * 1000) : ""]];
    this.facts.replaceChildren(...rows.filter(([, value]) => value).map(([label, value]) =>
      [h("dt", { text: label }), h("dd", { text: value })]).flat());
    this._renderTwoFactor();
  }

  _passwordCard() {
    const field = (id, label, autocomplete) => {
      const input = h("input", { id, type: "password", required: true, autocomplete });
      return [input, h("label", {}, label, input)];
    };
    const [current, currentLabel] = field("current-password", "Current password",
      "current-password");
    const [next, nextLabel] = field("new-password", "New password (at least 8 characters)",
      "new-password");
    const [confirm, confirmLabel] = field("confirm-password", "New password again",
      "new-password");
    const message = h("p", { class: "message", id: "password-message", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary", id: "change-password",
      text: "Change password" });
    const form = h("form", { class: "stacked", id: "password-form", onsubmit: async (e) => {
      e.preventDefault();
      const problem = passwordProblem(next.value, confirm.value);
      message.className = "message error";
      if (problem) {
        message.textContent = problem;
        return;
      }
      submit.disabled = true;
      message.textContent = "";
      try {
        await this.client.call("changepassword", { oldpass: current.value, newpass: next.value });
        form.reset();
        message.className = "message ok";
        message.textContent = "Password changed.";
        this.toasts.show("Password changed", "ok");
      } catch (error) {
        message.textContent = `Could not change the password: ${error.message}`;
      } finally {
        submit.disabled = false;
      }
    } }, currentLabel, nextLabel, confirmLabel, message, h("div", { class: "buttons" }, submit));
    return h("div", { class: "card" }, h("h2", { text: "Password" }), form);
  }

  _renderTwoFactor() {
    const on = Boolean(this.user.otpsecret);
    const parts = [h("h2", { text: "Two-factor authentication" }),
      h("p", { id: "totp-state", dataset: { on: on ? "1" : "0" }, text: on
        ? "On: logging in asks for a code of your authenticator app."
        : this.forced ? "Not set up yet: this server requires it of every account."
          : "Off: logging in needs only your password." })];
    if (this.enrolling) {
      parts.push(this._enrolForm());
    } else if (on) {
      parts.push(h("div", { class: "buttons start" },
        h("button", { type: "button", id: "backup-codes-new", text: "New backup codes",
          onclick: () => this._newCodes() }),
        // Under force2factor the app cannot be turned off here: the account would be
        // back to enrolment only, needing a new code from an administrator.
        this.forced ? null : h("button", { type: "button", class: "danger-outline",
          id: "totp-clear", text: "Turn off", onclick: () => this._clear() })));
      if (this.forced) {
        parts.push(h("p", { class: "hint", text: "This server requires two-factor " +
          "authentication, so it cannot be turned off." }));
      }
    } else {
      parts.push(h("div", { class: "buttons start" },
        h("button", { type: "button", class: "primary", id: "totp-start",
          text: "Set up an authenticator app", onclick: () => this._start() })));
    }
    if (this.codes) {
      parts.push(h("div", { class: "codes" },
        h("p", { text: "Backup codes: each works once instead of an app code. Keep them " +
          "somewhere safe; they are not shown again." }),
        h("ol", { id: "backup-codes" }, this.codes.map((code) =>
          h("li", { class: code.u === false ? "used" : "", text: String(code.p) })))));
    }
    this.twoFactor.replaceChildren(...parts);
  }

  async _start() {
    try {
      const reply = await this.client.request("otpauth-request");
      if (!reply.secret || !reply.url) {
        throw new Error(reply.err === 5 ? "your account settings are locked"
          : reply.err === 3 ? "not possible in a session opened with a login token"
            : "the server refused");
      }
      this.enrolling = { secret: reply.secret, url: reply.url };
      this.codes = null;
      this._renderTwoFactor();
      this.twoFactor.querySelector("#totp-code")?.focus();
    } catch (error) {
      this.toasts.show(`Could not start: ${error.message}`, "error");
    }
  }

  _enrolForm() {
    const { secret, url } = this.enrolling;
    const key = parseOtpauth(url);
    const code = h("input", { id: "totp-code", inputmode: "numeric", autocomplete: "one-time-code",
      required: true, pattern: "[0-9]{6}", maxlength: "6", placeholder: "123456" });
    // Under force2factor the server wants the password, and for a first factor an
    // enrolment code issued by an administrator.
    const needsCode = this.forced && !hasSecondFactor(this.user);
    const password = h("input", { id: "totp-password", type: "password",
      autocomplete: "current-password", required: this.forced });
    const enrolCode = needsCode ? h("input", { id: "totp-enrolcode", autocomplete: "off",
      autocapitalize: "characters", spellcheck: "false", required: true, maxlength: "32",
      placeholder: "ABCD-EFGH-JKLM-NPQR", "aria-describedby": "totp-enrolcode-hint" }) : null;
    const message = h("p", { class: "message error", id: "totp-message", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary", id: "totp-verify",
      text: "Verify and turn on" });
    const qr = h("div", { class: "qr", id: "totp-qr", "aria-busy": "true" });
    qrSvg(url, { label: "QR code of the authenticator key" }).then((svg) => {
      qr.replaceChildren(svg);
      qr.removeAttribute("aria-busy");
    }, (error) => {
      qr.removeAttribute("aria-busy");
      qr.replaceChildren(h("p", { class: "hint", text: `The QR code could not be drawn ` +
        `(${error.message}); use the key below.` }));
    });
    return h("form", { class: "stacked", id: "totp-form", onsubmit: async (e) => {
      e.preventDefault();
      message.className = "message error";
      const problem = enrolCode ? enrolCodeProblem(enrolCode.value) : "";
      if (problem) {
        message.textContent = problem;
        enrolCode.focus();
        return;
      }
      submit.disabled = true;
      message.textContent = "";
      try {
        const fields = { secret, token: code.value.trim() };
        if (password.value) fields.password = password.value;
        if (enrolCode) fields.enrolcode = normalEnrolCode(enrolCode.value);
        const reply = await this.client.request("otpauth-setup", fields);
        if (!reply.success) throw new Error(setupErrorText(reply.msg));
        const wasRequired = this.required;
        this.enrolling = null;
        this.user = { ...this.user, otpsecret: 1 };
        this.toasts.show("Two-factor authentication is on", "ok");
        this._renderTwoFactor();
        if (wasRequired) this.onEnrolled();
      } catch (error) {
        message.textContent = `Could not turn it on: ${error.message}`;
        submit.disabled = false;
      }
    } },
    h("ol", { class: "steps" },
      h("li", {}, "Scan this QR code with your authenticator app:", qr),
      h("li", {}, "Or add an account in the app with this key (time-based):",
        h("code", { class: "secret", id: "totp-secret", text: groupSecret(secret) }),
        key?.issuer ? h("span", { class: "hint", text: ` Issuer: ${key.issuer}, account: ` +
          `${key.account}.` }) : null),
      h("li", {}, "Or give it this address (what the QR code contains):",
        h("code", { class: "command", id: "totp-url", text: url })),
      h("li", {}, "Enter the 6-digit code the app shows.")),
    h("label", {}, "Code", code),
    h("label", {}, this.forced ? "Current password"
      : "Current password (needed when the server asks for it)", password),
    enrolCode ? h("label", {}, "Enrolment code", enrolCode,
      h("span", { class: "hint", id: "totp-enrolcode-hint", text: "The one-time code an " +
        "administrator issued for your account." })) : null,
    message,
    h("div", { class: "buttons" },
      h("button", { type: "button", text: "Cancel", onclick: () => {
        this.enrolling = null;
        this._renderTwoFactor();
      } }), submit));
  }

  async _newCodes() {
    try {
      const reply = await this.client.request("otpauth-getpasswords", { subaction: 1 });
      if (!Array.isArray(reply.passwords)) throw new Error("the server made no codes");
      this.codes = reply.passwords;
      this._renderTwoFactor();
    } catch (error) {
      this.toasts.show(`Could not make backup codes: ${error.message}`, "error");
    }
  }

  async _clear() {
    try {
      const reply = await this.client.request("otpauth-clear");
      if (!reply.success) throw new Error(reply.msg || "the server refused");
      this.user = { ...this.user };
      delete this.user.otpsecret;
      this.codes = null;
      this.toasts.show("Two-factor authentication is off", "ok");
      this._renderTwoFactor();
    } catch (error) {
      this.toasts.show(`Could not turn it off: ${error.message}`, "error");
    }
  }
}
