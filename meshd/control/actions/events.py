"""The audit trail as clients read it (spec control-protocol §7.6 ``events``, §8).

Three questions, each answered newest first with ``time`` as ISO-8601 text:

* ``{userid}`` (needs site right 0x2): events about that user;
* ``{nodeid}``: events of one device the caller sees (only the caller's own events
  when it has LIMITEVENTS on it);
* otherwise: every event dispatched to one of the caller's subscription ids, minus
  groups where it has LIMITEVENTS.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from meshd.control.actions._util import DOMAIN, full_id, in_domain, node_with_rights, valid_int
from meshd.control.rights import (
    MESHRIGHT_ADMIN,
    MESHRIGHT_LIMITEVENTS,
    SITERIGHT_MANAGEUSERS,
    link_rights,
    subscription_ids,
)
from meshd.control.session import Call
from meshd.control.views import iso_time, safe_event

FILTERS = frozenset({"agentlog", "batchupload", "changenode", "manual", "relaylog",
                     "removenode", "runcommands"})
DEFAULT_LIMIT = 10000
MAX_LIMIT = 1000000


def _tag(call: Call) -> dict[str, Any]:
    return {"tag": call.command["tag"]} if "tag" in call.command else {}


async def events(call: Call) -> None:
    """``{userid? | nodeid?, limit?, filter?}`` → ``{action:"events", events:[…], tag}``."""
    cmd = call.command
    action: Optional[str] = cmd.get("filter") if cmd.get("filter") in FILTERS else None
    limit = cmd["limit"] if valid_int(cmd.get("limit"), 1, MAX_LIMIT) else None
    access = await call.access()
    user_id = cmd.get("userid")
    if user_id is not None and access.site(SITERIGHT_MANAGEUSERS):
        if not isinstance(user_id, str) or not in_domain(user_id, "user"):
            return
        found = await call.store.get_events([user_id], DOMAIN, limit=limit, user_id=user_id,
                                            action=action)
        call.send({"action": "events", "events": [safe_event(e) for e in found],
                   "userid": user_id, **_tag(call)})
        return
    node_id = cmd.get("nodeid")
    if node_id is not None:
        node_id = full_id("node", node_id) if isinstance(node_id, str) else ""
        node, _mesh, rights = await node_with_rights(call.store, access, node_id)
        if node is None:
            call.send({"action": "events", "events": [], "nodeid": node_id, **_tag(call)})
            return
        limited = bool(rights & MESHRIGHT_LIMITEVENTS) and rights != MESHRIGHT_ADMIN
        found = await call.store.get_events(None, DOMAIN, limit=limit or DEFAULT_LIMIT,
                                            node_id=node["_id"], action=action)
        if limited:
            found = [e for e in found if e.get("userid") == call.user_id]
        shown = []
        for event in found:
            view = safe_event(event)
            view.pop("nodeid", None)
            view.pop("etype", None)
            shown.append(view)
        call.send({"action": "events", "events": shown, "nodeid": node["_id"], **_tag(call)})
        return
    ids = subscription_ids(call.user)
    links = call.user.get("links")
    if isinstance(links, dict):
        for key in list(links):
            rights = link_rights(links, key)
            if rights & MESHRIGHT_LIMITEVENTS and rights != MESHRIGHT_ADMIN:
                ids.discard(key)
    found = await call.store.get_events(sorted(ids), DOMAIN, limit=limit, action=action)
    reply: dict[str, Any] = {"action": "events", "events": [safe_event(e) for e in found]}
    if "user" in cmd:
        reply["user"] = cmd["user"]
    call.send({**reply, **_tag(call)})


async def previous_logins(call: Call) -> None:
    """``{userid?}`` → ``{action:"previousLogins", userid?, events:[{t, m, a, tn?}]}``:
    the logins and failed logins of the caller, or of ``userid`` for a caller with
    site right 0x2 (MeshCentral 1.1.55 answers nothing otherwise), newest first."""
    access = await call.access()
    user_id = call.command.get("userid")
    if user_id is None:
        target = call.user_id
    elif isinstance(user_id, str) and in_domain(user_id, "user") \
            and access.site(SITERIGHT_MANAGEUSERS):
        target = user_id
    else:
        return
    found = []
    for action in ("login", "authfail"):
        found += await call.store.get_events([target], DOMAIN, user_id=target, action=action)
    found = [e for e in found if e.get("userid") == target and "msgArgs" in e]
    found.sort(key=lambda e: e.get("time"), reverse=True)
    entries = []
    for event in found:
        when = event.get("time")
        entry = {"t": iso_time(when) if isinstance(when, datetime) else when,
                 "m": event.get("msgid"),
                 "a": event.get("msgArgs")}
        if user_id is None and event.get("tokenName") is not None:
            entry["tn"] = event["tokenName"]
        entries.append(entry)
    reply: dict[str, Any] = {"action": "previousLogins", "events": entries}
    if user_id is not None:
        reply["userid"] = target
    call.send(reply)
