"""Server-wide actions: ``serverstats`` (the "My Server" statistics) and ``logincookie``.

* ``serverstats {interval}``: site administrators with the backup, restore or update
  right (``siteadmin & 21``, as MeshCentral) get the statistics at once and then every
  ``interval`` ms (1000..1000000); any other ``interval`` stops them.  Others: no answer.
* ``logincookie``: a ``{u, a:3}`` cookie usable as ``?auth=`` — only when the hub allows
  login tokens (MeshCentral's ``settings.allowLoginToken``); otherwise no answer, as
  MeshCentral.  meshd also refuses a session that itself logged in with a login token,
  so an application password cannot be turned into a cookie that outlives its removal.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

from meshd.control.rights import (
    SITERIGHT_SERVERBACKUP,
    SITERIGHT_SERVERRESTORE,
    SITERIGHT_SERVERUPDATE,
    site_rights,
)
from meshd.control.session import Call
from meshd.presence import CONN_AGENT

STATS_RIGHTS = SITERIGHT_SERVERBACKUP | SITERIGHT_SERVERRESTORE | SITERIGHT_SERVERUPDATE
STATS_TIMER = "serverstats"


def _meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return {}
    return {m.group(1): int(m.group(2)) * 1024
            for m in re.finditer(r"^(\w+):\s+(\d+)", text, re.MULTILINE)}


def _memory() -> dict[str, Any]:
    info = _meminfo()
    fields: dict[str, Any] = {}
    total = info.get("MemTotal")
    free = info.get("MemFree")
    if total is None:
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            total = page * os.sysconf("SC_PHYS_PAGES")
            free = page * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = free = 0
    fields["totalmem"] = total
    fields["freemem"] = free
    try:
        fields["cpuavg"] = list(os.getloadavg())
    except (OSError, AttributeError):
        pass
    if "MemAvailable" in info:
        fields["availablemem"] = info["MemAvailable"]
    return fields


def _agent_sessions(presence: Any) -> int:
    online = getattr(presence, "online", None)
    if online is None:
        return 0
    return sum(1 for node_id in online() if presence.get(node_id, CONN_AGENT) is not None)


async def server_stats(hub: Any) -> dict[str, Any]:
    """The ``serverstats`` message (spec §7.6)."""
    store = hub.store
    meshes = await store.find_by_type("mesh", "")
    sessions = list(hub.sessions.values())
    relays = getattr(hub, "relay_stats", None)
    relay_sessions, relay_count = relays() if callable(relays) else (0, 0)
    state = {
        "UserAccounts": await store.count_by_type("user", ""),
        "DeviceGroups": sum(1 for m in meshes if not m.get("deleted")),
        "AgentSessions": _agent_sessions(hub.presence),
        "ConnectedUsers": len({s.user_id for s in sessions}),
        "UsersSessions": len(sessions),
        "RelaySessions": relay_sessions,
        "RelayCount": relay_count,
        "ConnectedIntelAMT": 0,
        "ConnectedIntelAMTCira": 0,
    }
    return {"action": "serverstats", **_memory(), "values": {"ServerState": state}}


async def serverstats(call: Call) -> None:
    """``{interval}`` → ``serverstats`` now and every ``interval`` ms; else stop."""
    if not site_rights(call.user) & STATS_RIGHTS:
        return
    session = call.session
    session.cancel_timer(STATS_TIMER)
    interval = call.command.get("interval")
    if not isinstance(interval, int) or isinstance(interval, bool) \
            or not 1000 <= interval <= 1000000:
        return
    call.send(await server_stats(call.hub))
    session.start_timer(STATS_TIMER, interval / 1000.0, _send_stats)


async def _send_stats(session: Any) -> None:
    """A tick of the statistics timer: the user is read again, so a user who lost the
    right (or was removed) stops getting them."""
    user: Optional[dict[str, Any]] = await session.hub.store.get(session.user_id)
    if user is None or not site_rights(user) & STATS_RIGHTS:
        session.cancel_timer(STATS_TIMER)
        return
    session.send(await server_stats(session.hub))


async def logincookie(call: Call) -> None:
    """→ ``{action, cookie}`` where login tokens are allowed; else no answer."""
    if not call.hub.allow_login_token or call.session.login_token is not None:
        return
    cookie = await call.hub.cookies.encode({"u": call.user_id, "a": 3})
    call.send({"action": "logincookie", "cookie": cookie})
