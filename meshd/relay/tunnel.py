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

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional
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

#: consentMessages keys → the ``soptions`` names the agent's core reads.  (MeshCentral
#: 1.1.55 sends ``consentAautoAcceptIfFileNoUser``, which its agents never read.)
_CONSENT_OPTIONS = (
    ("title", "consentTitle"), ("desktop", "consentMsgDesktop"),
    ("terminal", "consentMsgTerminal"), ("files", "consentMsgFiles"),
    ("auto_accept_on_timeout", "consentAutoAccept"),
    ("auto_accept_if_no_user", "consentAutoAcceptIfNoUser"),
    ("auto_accept_if_desktop_no_user", "consentAutoAcceptIfDesktopNoUser"),
    ("auto_accept_if_terminal_no_user", "consentAutoAcceptIfTerminalNoUser"),
    ("auto_accept_if_file_no_user", "consentAutoAcceptIfFileNoUser"),
    ("auto_accept_if_locked", "consentAutoAcceptIfLocked"),
    ("auto_accept_if_desktop_locked", "consentAutoAcceptIfDesktopLocked"),
    ("auto_accept_if_terminal_locked", "consentAutoAcceptIfTerminalLocked"),
    ("auto_accept_if_file_locked", "consentAutoAcceptIfFileLocked"),
    ("old_style", "oldStyle"))
_NOTIFY_OPTIONS = (("title", "notifyTitle"), ("desktop", "notifyMsgDesktop"),
                   ("terminal", "notifyMsgTerminal"), ("files", "notifyMsgFiles"))


@dataclass(frozen=True)
class SessionPolicy:
    """What a domain adds to every remote session it routes: consent bits
    (``userConsentFlags``) and the texts and automatic answers of the device user's
    prompt and notifications (``consentMessages``/``notificationMessages``), which the
    agent gets as the tunnel's ``soptions``."""

    consent: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_domain(cls, domain: Any) -> "SessionPolicy":
        """From a :class:`meshd.config.Domain`."""
        options: dict[str, Any] = {}
        messages = getattr(domain, "consent_messages", None)
        if messages is not None:
            for attribute, key in _CONSENT_OPTIONS:
                value = getattr(messages, attribute)
                if value is not None and value is not False:
                    options[key] = value
            if messages.consent_timeout > 0:
                options["consentTimeout"] = messages.consent_timeout
        notify = getattr(domain, "notification_messages", None)
        if notify is not None:
            for attribute, key in _NOTIFY_OPTIONS:
                if getattr(notify, attribute) is not None:
                    options[key] = getattr(notify, attribute)
        return cls(consent=int(getattr(domain, "user_consent_flags", 0) or 0),
                   options=options)

    def soptions(self, **extra: Any) -> dict[str, Any]:
        """A fresh ``soptions`` object, with ``extra`` keys added."""
        return {**self.options, **extra}
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


def _bits(record: Optional[dict[str, Any]]) -> int:
    value = record.get("consent") if record is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def _consent(call: Any, node: dict[str, Any], mesh: Optional[dict[str, Any]]) -> int:
    """The consent bits of the device, its group, the user, and each user group of the
    user that is linked to the device or its group (as MeshCentral adds them)."""
    consent = _bits(node) | _bits(mesh) | _bits(call.user)
    links = call.user.get("links")
    groups = sorted(k for k in links if k.startswith("ugrp/")) if isinstance(links, dict) \
        else []
    if groups:
        for group in await call.store.get_many(groups):
            group_links = group.get("links")
            if isinstance(group_links, dict) and (
                    node["_id"] in group_links or (mesh is not None
                                                   and mesh.get("_id") in group_links)):
                consent |= _bits(group)
    return consent


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
    policy: SessionPolicy = getattr(call.hub, "session_policy", None) or SessionPolicy()
    consent = policy.consent | await _consent(call, node, mesh)
    tls_hash = str(call.hub.server_info().get("tlshash", "")).lower()
    message: dict[str, Any] = {
        "action": "msg", "type": "tunnel", "value": relay_value(path, query),
        "usage": protocol, "servertlshash": tls_hash or None, "soptions": policy.soptions(),
        "userid": call.user_id, "username": call.user.get("name"),
        "realname": call.user.get("realname"), "sessionid": call.session.session_id,
        "rights": rights, "consent": consent, "remoteaddr": call.session.peer}
    message = {k: v for k, v in message.items() if v is not None}
    call.session.watch_agent(node_id)
    return bool(call.hub.send_to_agent(node_id, message))
