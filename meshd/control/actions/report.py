"""``report`` (meshctrl ``report``): remote sessions, traffic, logins, database records.

``{type 1..4, groupBy 1 user|2 device|3 day, start, end (s), devGroup?, showTraffic?, l?,
tz?}`` → ``{"action":"report","data":{"columns":[…],"groups":{…}}}``; bad input gets no
answer, as MeshCentral.  Rights as MeshCentral: a user without ``SITERIGHT_MANAGEUSERS``
only sees its own sessions, traffic and logins; a ``devGroup`` must be one the user is
linked to (directly or by a user group); the database report is for full administrators.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional
from zoneinfo import ZoneInfo

from meshd.control.actions._util import DOMAIN, valid_int
from meshd.control.rights import SITERIGHT_MANAGEUSERS
from meshd.control.session import Call
from meshd.store.interface import Document

SESSION_MSGIDS = (5, 10, 11, 12, 122, 123, 124, 125, 126, 144)
LOGIN_MSGIDS = (107, 108, 109, 110)
#: Record types counted by the database report.
DB_RECORD_TYPES = ("user", "mesh", "node", "ugrp", "sysinfo", "ifinfo", "lastconnect",
                   "logintoken", "deviceshare", "note", "smbios", "cfile")


async def report(call: Call) -> None:
    cmd = call.command
    kind, group_by = cmd.get("type"), cmd.get("groupBy")
    start, end = cmd.get("start"), cmd.get("end")
    if not valid_int(kind, 1, 4) or not valid_int(group_by, 1, 3):
        return
    if not isinstance(start, (int, float)) or isinstance(start, bool) \
            or not isinstance(end, (int, float)) or isinstance(end, bool) or start >= end:
        return
    access = await call.access()
    dev_group = cmd.get("devGroup")
    if dev_group is not None and (not isinstance(dev_group, str)
                                  or dev_group not in access.linked_ids("mesh/")):
        return
    if kind == 4:
        if not access.full_admin:
            return
        data = await _database_report(call)
    else:
        manager = access.site(SITERIGHT_MANAGEUSERS)
        if kind == 1:
            ids = [call.user_id]
            if manager:
                ids = [call.user_id, dev_group] if dev_group is not None else (
                    [call.user_id] + [k for k in (call.user.get("links") or {})])
        else:
            ids = ["*"] if manager else [call.user_id]
        msgids = LOGIN_MSGIDS if kind == 3 else SESSION_MSGIDS
        events = await _events(call, ids, msgids, start, end)
        if kind == 1:
            data = _session_report(cmd, events, group_by, dev_group)
        elif kind == 2:
            data = _traffic_report(events, dev_group)
        else:
            data = _login_report(cmd, events, group_by)
    call.send({"action": "report", "data": data})


def _ms(when: Any) -> Any:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return int(when.timestamp() * 1000)
    if isinstance(when, str):
        try:
            return int(datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return when
    return when


async def _events(call: Call, ids: list[str], msgids: tuple[int, ...], start: float,
                  end: float) -> list[Document]:
    """Events with one of ``ids`` (``*``: all), one of ``msgids``, in [start, end], oldest
    first, ``time`` in ms."""
    wanted = None if "*" in ids else ids
    found = []
    for event in await call.store.get_events(wanted, DOMAIN):
        if event.get("msgid") not in msgids:
            continue
        when = _ms(event.get("time"))
        if isinstance(when, (int, float)) and start * 1000 <= when <= end * 1000:
            found.append({**event, "time": when})
    found.reverse()
    return found


def _session_length(event: Document) -> Optional[Any]:
    msgid, args = event.get("msgid"), event.get("msgArgs")
    if not isinstance(args, list):
        return None

    def num(index: int) -> Optional[Any]:
        value = args[index] if len(args) > index else None
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else None

    if isinstance(msgid, int) and 10 <= msgid <= 12:
        return num(3)
    if isinstance(msgid, int) and 122 <= msgid <= 126:
        return num(0)
    if msgid == 144:
        return num(1)
    return None


def _day(cmd: dict[str, Any], when: Any) -> Any:
    """The day of an event, as the client's ``toLocaleDateString(l, {timeZone: tz})``
    writes it for English (M/D/YYYY); else the time itself."""
    if isinstance(cmd.get("l"), str) and isinstance(cmd.get("tz"), str) \
            and isinstance(when, (int, float)):
        try:
            zone = ZoneInfo(cmd["tz"])
        except (ValueError, KeyError, OSError):
            zone = timezone.utc  # type: ignore[assignment]
        day = datetime.fromtimestamp(when / 1000, zone)
        return f"{day.month}/{day.day}/{day.year}"
    return when


def _in_group(event: Document, dev_group: Optional[str]) -> bool:
    ids = event.get("ids")
    return dev_group is None or not isinstance(ids, list) or dev_group in ids


def _session_report(cmd: dict[str, Any], events: list[Document], group_by: int,
                    dev_group: Optional[str]) -> dict[str, Any]:
    length = {"id": "length", "title": "length", "format": "seconds", "align": "center",
              "sumBy": "protocol"}
    session = {"id": "protocol", "title": "session", "format": "protocol", "align": "center"}
    guest = {"id": "guestname", "title": "guest", "align": "center"}
    data: dict[str, Any] = {"groups": {}}
    if group_by == 1:
        data["groupFormat"] = "user"
        data["columns"] = [{"id": "time", "title": "time", "format": "datetime"},
                           {"id": "nodeid", "title": "device", "format": "node"},
                           {"id": "meshid", "title": "devgroup", "format": "mesh"},
                           guest, session, length]
    elif group_by == 2:
        data["groupFormat"] = "nodemesh"
        data["columns"] = [{"id": "time", "title": "time", "format": "datetime"},
                           {"id": "userid", "title": "user", "format": "user"},
                           guest, session, length]
    else:
        data["columns"] = [{"id": "time", "title": "time", "format": "time"},
                           {"id": "nodeid", "title": "device", "format": "node"},
                           {"id": "meshid", "title": "devgroup", "format": "mesh"},
                           guest, {"id": "userid", "title": "user", "format": "user"},
                           session, length]
    traffic = bool(cmd.get("showTraffic"))
    if traffic:
        data["columns"] += [
            {"id": "bytesin", "title": "bytesin", "format": "bytes", "align": "center",
             "sumBy": "protocol"},
            {"id": "bytesout", "title": "bytesout", "format": "bytes", "align": "center",
             "sumBy": "protocol"}]
    guests = False
    groups: dict[str, Any] = data["groups"]
    for event in events:
        if not _in_group(event, dev_group):
            continue
        entry: dict[str, Any] = {"time": event["time"]}
        if group_by != 1:
            entry["userid"] = event.get("userid")
        if group_by != 2:
            entry["nodeid"] = event.get("nodeid")
        entry["protocol"] = event.get("protocol")
        for key in event.get("ids") or []:
            if isinstance(key, str) and key.startswith("mesh/"):
                entry["meshid"] = key
        if traffic:
            entry["bytesin"], entry["bytesout"] = event.get("bytesin"), event.get("bytesout")
        if event.get("guestname") is not None:
            entry["guestname"] = event["guestname"]
            guests = True
        seconds = _session_length(event)
        if seconds is not None:
            entry["length"] = seconds
        if group_by == 1:
            key = str(event.get("userid"))
        elif group_by == 2:
            key = f"{event.get('nodeid')}/{entry['meshid']}" if "meshid" in entry \
                else str(event.get("nodeid"))
        else:
            key = str(_day(cmd, event["time"]))
        groups.setdefault(key, {"entries": []})["entries"].append(
            {k: v for k, v in entry.items() if v is not None})
    if not guests:
        del data["columns"][2 if group_by == 2 else 3]
    return data


def _traffic_report(events: list[Document], dev_group: Optional[str]) -> dict[str, Any]:
    users: dict[str, dict[str, Any]] = {}
    for event in events:
        if not _in_group(event, dev_group):
            continue
        user_id = str(event.get("userid"))
        entry = users.setdefault(user_id, {"userid": event.get("userid"), "length": 0,
                                           "bytesin": 0, "bytesout": 0})
        for field in ("bytesin", "bytesout"):
            if isinstance(event.get(field), (int, float)) and event[field]:
                entry[field] += event[field]
        seconds = _session_length(event)
        if seconds is not None:
            entry["length"] += seconds
    return {"groups": {"0": {"entries": list(users.values())}}, "columns": [
        {"id": "userid", "title": "user", "format": "user"},
        {"id": "length", "title": "length", "format": "seconds", "align": "center",
         "sumBy": True},
        {"id": "bytesin", "title": "bytesin", "format": "bytes", "align": "center",
         "sumBy": True},
        {"id": "bytesout", "title": "bytesout", "format": "bytes", "align": "center",
         "sumBy": True}]}


def _login_report(cmd: dict[str, Any], events: list[Document], group_by: int
                  ) -> dict[str, Any]:
    data: dict[str, Any] = {"groups": {}}
    tail = [{"id": "ip", "title": "ip"}, {"id": "browser", "title": "browser"},
            {"id": "os", "title": "os"}, {"id": "twofactor", "title": "twofactor",
                                          "format": "2fa"}]
    if group_by == 1:
        data["groupFormat"] = "user"
        data["columns"] = [{"id": "time", "title": "time", "format": "datetime"}] + tail
    elif group_by == 3:
        data["columns"] = [{"id": "time", "title": "time", "format": "time"},
                           {"id": "userid", "title": "user", "format": "user"}] + tail
    else:
        data["columns"] = []
    data["columns"].append({"id": "msg", "title": "msg", "format": "msg"})
    for event in events:
        args: list[Any] = event["msgArgs"] if isinstance(event.get("msgArgs"), list) else []
        entry: dict[str, Any] = {"time": event["time"]}
        if group_by == 3:
            entry["userid"] = event.get("userid")
        entry.update({"ip": args[0] if len(args) > 0 else None,
                      "browser": args[1] if len(args) > 1 else None,
                      "os": args[2] if len(args) > 2 else None,
                      "twofactor": event.get("twoFactorType") or "",
                      "msg": event.get("msgid")})
        entry = {k: v for k, v in entry.items() if v is not None}
        if group_by == 1:
            key = str(event.get("userid"))
        elif group_by == 3:
            key = str(_day(cmd, event["time"]))
        else:
            continue
        data["groups"].setdefault(key, {"entries": []})["entries"].append(entry)
    return data


async def _database_report(call: Call) -> dict[str, Any]:
    entries = []
    for record_type in DB_RECORD_TYPES:
        count = await call.store.count_by_type(record_type)
        if count > 0:
            entries.append({"record": record_type, "recordcount": count})
    return {"groups": {"0": {"entries": entries}}, "columns": [
        {"id": "record", "title": "Record", "format": "records"},
        {"id": "recordcount", "title": "Count", "align": "center", "sumBy": True}]}
