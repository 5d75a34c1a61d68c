import { clear, h } from "../dom.js";
import { formatTime } from "../format.js";

const FULL_ADMIN = 0xFFFFFFFF;

// The logged-in account: name, rights, and logging out.
export class AccountView {
  constructor({ root, client, user }) {
    this.root = root;
    this.user = user || {};
    client.on("userinfo", (message) => this.update(message.userinfo));
    this.render();
  }

  update(userinfo) {
    if (userinfo && typeof userinfo === "object") {
      this.user = userinfo;
      this.render();
    }
  }

  render() {
    const user = this.user;
    const rows = [["User name", user.name], ["E-mail", user.email],
      ["Rights", user.siteadmin === FULL_ADMIN ? "Site administrator"
        : user.siteadmin ? `Site rights 0x${Number(user.siteadmin).toString(16)}` : "Standard user"],
      ["Account created", user.creation ? formatTime(user.creation * 1000) : ""],
      ["Last login", user.login ? formatTime(user.login * 1000) : ""]];
    clear(this.root).append(
      h("dl", { class: "facts", id: "account-facts" },
        rows.filter(([, value]) => value).map(([label, value]) =>
          [h("dt", { text: label }), h("dd", { text: value })])),
      h("p", {}, h("a", { href: "/logout", class: "button danger-outline", id: "logout-account",
        text: "Log out" })));
  }
}
