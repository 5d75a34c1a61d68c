import { coalesce, clear, h } from "../dom.js";
import { formatTime } from "../format.js";

// The audit trail, newest first; live events are added at the top as they happen.
export class EventsView {
  constructor({ root, log }) {
    this.root = root;
    this.log = log;
    this.filter = "";
    this.render = coalesce(() => this._render());
    const search = h("input", { type: "search", placeholder: "Filter events",
      "aria-label": "Filter events", id: "event-filter",
      oninput: (e) => { this.filter = e.target.value.toLowerCase(); this.render(); } });
    this.table = h("tbody", { id: "event-rows" });
    this.empty = h("p", { class: "empty", text: "No events yet." });
    clear(root).append(h("div", { class: "toolbar" }, search),
      h("table", { class: "events" }, h("thead", {}, h("tr", {},
        ["Time", "User", "Event"].map((title) => h("th", { scope: "col", text: title })))),
      this.table), this.empty);
    log.onChange(() => this.render());
    this.render();
  }

  _render() {
    const rows = [];
    for (const event of this.log.events) {
      const text = `${event.msg ?? event.action ?? ""}`;
      const user = `${event.username ?? ""}`;
      if (this.filter && !`${text} ${user}`.toLowerCase().includes(this.filter)) continue;
      rows.push(h("tr", { class: "event", dataset: { action: event.action ?? "" } },
        h("td", { class: "time", text: formatTime(event.time) }),
        h("td", { text: user }),
        h("td", { text })));
      if (rows.length >= 500) break;
    }
    this.table.replaceChildren(...rows);
    this.empty.hidden = rows.length > 0;
  }
}
