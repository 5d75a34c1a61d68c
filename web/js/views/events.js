import { coalesce, clear, h } from "../dom.js";
import {
  EVENT_KINDS, EVENT_PERIODS, eventKind, eventKindLabel, eventText, filterEvents,
} from "../eventfilter.js";
import { formatTime } from "../format.js";

const SHOWN = 500;

// The audit trail, newest first; live events are added at the top as they happen.
// Filters: kind, age and words (typed words apply after a short pause).
export class EventsView {
  constructor({ root, log }) {
    this.root = root;
    this.log = log;
    this.filter = { kind: "all", period: "all", query: "" };
    this.render = coalesce(() => this._render());
    let timer = null;
    const search = h("input", { type: "search", placeholder: "Filter events",
      "aria-label": "Filter events", id: "event-filter", autocomplete: "off",
      oninput: (e) => {
        clearTimeout(timer);
        timer = setTimeout(() => this._set({ query: e.target.value }), 150);
      } });
    const select = (id, label, options, key) => h("select", { id, "aria-label": label,
      onchange: (e) => this._set({ [key]: e.target.value }) },
    options.map(([value, text]) => h("option", { value, text })));
    this.table = h("tbody", { id: "event-rows" });
    this.empty = h("p", { class: "empty", id: "events-empty", text: "No events yet." });
    this.count = h("p", { class: "summary", id: "events-summary", role: "status" });
    clear(root).append(h("div", { class: "toolbar" },
      h("div", { class: "filters" }, search,
        select("event-kind", "Kind of events", EVENT_KINDS, "kind"),
        select("event-period", "Time", EVENT_PERIODS, "period"))),
    this.count,
    h("table", { class: "events" }, h("thead", {}, h("tr", {},
      ["Time", "Kind", "User", "Event"].map((title) => h("th", { scope: "col", text: title })))),
    this.table), this.empty);
    log.onChange(() => this.render());
    this.render();
  }

  _set(change) {
    Object.assign(this.filter, change);
    this.render();
  }

  _render() {
    const shown = filterEvents(this.log.events, { ...this.filter, limit: SHOWN });
    this.table.replaceChildren(...shown.map((event) => h("tr", { class: "event",
      dataset: { action: event.action ?? "", kind: eventKind(event) } },
    h("td", { class: "time", text: formatTime(event.time) }),
    h("td", { class: "kind" }, h("span", { class: `tag kind-${eventKind(event)}`,
      text: eventKindLabel(event) })),
    h("td", { text: `${event.username ?? ""}` }),
    h("td", { text: eventText(event) }))));
    const total = this.log.events.length;
    const filtering = this.filter.kind !== "all" || this.filter.period !== "all" ||
      this.filter.query.trim() !== "";
    this.empty.hidden = shown.length > 0;
    this.empty.textContent = total && filtering ? "No event matches the filters."
      : "No events yet.";
    let count = "";
    if (total && filtering) {
      count = `${shown.length}${shown.length >= SHOWN ? "+" : ""} of ${total} events`;
    } else if (total) {
      count = `${total} event${total === 1 ? "" : "s"}` +
        (shown.length < total ? `, the latest ${shown.length} shown` : "");
    }
    this.count.textContent = count;
  }
}
