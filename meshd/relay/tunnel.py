"""Tunnel routing: the user's ``msg``/``tunnel`` → the agent's control channel
(spec relay.md §7.1, agent-protocol.md §6).

User → server on ``/control.ashx``::

    {"action":"msg","type":"tunnel","nodeid":N,"usage":P,
     "value":"*/meshrelay.ashx?p=P&nodeid=N&id=I&rauth=R"[,"responseid":…]}

Checked: ``value`` is a same-server relay path (``*/`` then ``[domain/]meshrelay.ashx``;
unlike MeshCentral, a full URL to another host is refused, so a user cannot make an agent
dial elsewhere) whose ``nodeid`` is the command's; the user holds REMOTECONTROL or
REMOTEVIEWONLY on the device, and not the protocol's "no" right (NOTERMINAL for 1/6/8/9,
NOFILES for 4/5/10, NODESKTOP for 2; full rights are exempt).

Server → agent: the same ``value`` with a **fresh** relay cookie ``rauth`` =
``{ruserid, x}`` minted here, plus ``usage``, ``servertlshash`` (hex SHA-384 of the web
certificate, for the agent to pin), ``soptions``, ``userid``, ``username``, ``realname``,
``sessionid``, ``rights``, ``consent``, ``remoteaddr``.  The user gets
``{action:"msg", result:"OK"|"Unable to route", responseid}`` when it asked with one.
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import parse_qs, quote

from meshd.control.actions._util import node_with_rights, valid_str
from meshd.control.rights import (
    MESHRIGHT_ADMIN,
    MESHRIGHT_NODESKTOP,
    MESHRIGHT_NOFILES,
    MESHRIGHT_NOTERMINAL,
    MESHRIGHT_REMOTECONTROL,
    MESHRIGHT_REMOTEVIEWONLY,
)

MAX_VALUE = 4096
_NOT_RIGHTS = {1: MESHRIGHT_NOTERMINAL, 6: MESHRIGHT_NOTERMINAL, 8: MESHRIGHT_NOTERMINAL,
               9: MESHRIGHT_NOTERMINAL, 4: MESHRIGHT_NOFILES, 5: MESHRIGHT_NOFILES,
               10: MESHRIGHT_NOFILES, 2: MESHRIGHT_NODESKTOP}
_SAFE = "/@$=:-_.~!*'()"


def parse_relay_value(value: Any) -> Optional[tuple[str, dict[str, str]]]:
    """``*/[domain/]meshrelay.ashx?query`` → (path after ``*/``, first value of each
    query parameter); None for anything else."""
    if not valid_str(value, 4, MAX_VALUE) or not value.startswith("*/"):
        return None
    path, _, query = value[2:].partition("?")
    parts = path.split("/")
    if parts[-1] != "meshrelay.ashx" or len(parts) > 2 or any(
            not p or p in (".", "..") for p in parts):
        return None
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        return None
    return path, {k: v[0] for k, v in params.items() if v}


def relay_value(path: str, params: dict[str, str]) -> str:
    """The ``*/`` relay URL the agent dials (MeshCentral's look: ids left readable)."""
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe=_SAFE)}" for k, v in params.items())
    return f"*/{path}?{query}"


def protocol_of(params: dict[str, str], usage: Any) -> Optional[int]:
    for value in (params.get("p"), usage):
        try:
            number = int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if 0 <= number <= 0xFFFF:
            return number
    return None


def allowed(rights: int, protocol: Optional[int]) -> bool:
    """May a user with these device rights open this protocol's tunnel?"""
    if not rights & (MESHRIGHT_REMOTECONTROL | MESHRIGHT_REMOTEVIEWONLY):
        return False
    if rights == MESHRIGHT_ADMIN:
        return True
    forbidden = _NOT_RIGHTS.get(protocol or 0, 0)
    return not rights & forbidden


async def route_tunnel(call: Any) -> None:
    """The ``msg`` action with ``type:"tunnel"`` (see the module docstring)."""
    cmd = call.command
    routed = await _route(call, cmd)
    if call.responseid is not None:
        reply: dict[str, Any] = {"action": "msg", "result": "OK" if routed else
                                 "Unable to route"}
        if "tag" in cmd:
            reply["tag"] = cmd["tag"]
        reply["responseid"] = call.responseid
        call.send(reply)


async def _route(call: Any, cmd: dict[str, Any]) -> bool:
    node_id = cmd.get("nodeid")
    parsed = parse_relay_value(cmd.get("value"))
    if not valid_str(node_id, 1, 1024) or parsed is None:
        return False
    path, params = parsed
    if params.get("nodeid", node_id) != node_id or not params.get("id"):
        return False
    access = await call.access()
    node, mesh, rights = await node_with_rights(call.store, access, node_id)
    protocol = protocol_of(params, cmd.get("usage"))
    if node is None or not allowed(rights, protocol):
        return False
    node_id = node["_id"]
    rauth = await call.hub.cookies.encode({"ruserid": call.user_id,
                                           "x": call.session.session_id[-12:]})
    query = {k: params[k] for k in ("p", "nodeid", "id") if k in params}
    if "p" not in query and protocol is not None:
        query["p"] = str(protocol)
    query["nodeid"] = node_id
    query["rauth"] = rauth
    consent = 0
    for record in (node, mesh, call.user):
        value = record.get("consent") if record is not None else None
        if isinstance(value, int) and not isinstance(value, bool):
            consent |= value
    tls_hash = str(call.hub.server_info().get("tlshash", "")).lower()
    message: dict[str, Any] = {
        "action": "msg", "type": "tunnel", "value": relay_value(path, query),
        "usage": protocol, "servertlshash": tls_hash or None, "soptions": {},
        "userid": call.user_id, "username": call.user.get("name"),
        "realname": call.user.get("realname"), "sessionid": call.session.session_id,
        "rights": rights, "consent": consent, "remoteaddr": call.session.peer}
    message = {k: v for k, v in message.items() if v is not None}
    call.session.watch_agent(node_id)
    return bool(call.hub.send_to_agent(node_id, message))
