"""Guests of device-sharing links on the relay (spec relay.md §3.5–§3.7, §7.2).

A guest has no account: it opens ``/meshrelay.ashx?c=<link cookie>[&p=P][&nodeid=N]``
with the cookie of its link (``/sharing?c=…``, see :mod:`meshd.sharing`).  It is let in
only when, at that moment:

* the cookie is this server's sharing cookie and its share record still exists;
* the share's window is open (start reached, end not reached; recurring shares: today's
  or this week's occurrence);
* ``p`` (default: the first protocol the share opens) is one the share opens — terminal
  1/6/8/9, desktop 2, files 5/10 — and ``nodeid``, if given, is the shared device;
* the device exists, its agent is connected here, and the user who made the share still
  exists, is not locked and still may share that (remote control, guest sharing, no
  limited input, not the protocol's "no" right).  MeshCentral 1.1.55 checks only remote
  control or relay rights here.

Then the relay itself asks the agent to dial back (relay-initiated routing): the server
picks the relay id (a guest cannot choose one, so it can never meet another session) and
sends on the agent's control channel::

    {"action":"msg","type":"tunnel",
     "value":"*/meshrelay.ashx?p=P&id=I&rauth=R&nodeid=N",
     "soptions":{"usages":[…]}, "rights":8 (|256 view only), "consent":C,
     "guestuserid":<sharer>, "guestname":<guest>, "userid":<sharer>,
     "username":…, "realname":…, "remoteaddr":<guest address>, "servertlshash":…}

``R`` is a relay cookie ``{ruserid:<sharer>, nodeid, pid}``; the ``pid`` marks the agent
side as belonging to this share, and the pairing table only pairs sides of the same share.
``rights`` are the share's (remote control, plus view-only for view-only shares), not the
sharer's: MeshCentral 1.1.55 sends the sharer's own rights.  ``consent`` is the share's
flags with the device's and group's.  The guest side is closed when the window ends and
when the share is removed (:meth:`~meshd.relay.machine.RelayTable.close_share`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

from meshd.accounts import is_locked
from meshd.control.rights import MESHRIGHT_REMOTECONTROL, MESHRIGHT_REMOTEVIEWONLY, Access
from meshd.relay.machine import SideInfo
from meshd.relay.tunnel import SessionPolicy, relay_value
from meshd.sharing import (
    SHARE_DESKTOP,
    SHARE_FILES,
    SHARE_TERMINAL,
    may_share,
    relay_id,
    share_bits,
    share_from_cookie,
    usages,
    window,
)
from meshd.store.interface import Document, IStore

_BIT_OF = {p: SHARE_TERMINAL for p in (1, 6, 8, 9)} | {2: SHARE_DESKTOP} | {
    5: SHARE_FILES, 10: SHARE_FILES}


class GuestRefused(Exception):
    """The guest may not open this session; the text says why (for the log)."""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class GuestAdmission:
    """Checks a guest's upgrade request and tells the shared device's agent to dial back."""

    _log = Logger()

    def __init__(self, *, store: IStore, clock: Any, invite_cookies: Any, cookies: Any,
                 send_to_agent: Callable[[str, dict[str, Any]], bool],
                 tls_hash: Callable[[], str], random: Callable[[int], bytes],
                 policy: Optional[SessionPolicy] = None) -> None:
        self._store = store
        self._policy = policy if policy is not None else SessionPolicy()
        self._clock = clock
        self._invite_cookies = invite_cookies
        self._cookies = cookies
        self._send_to_agent = send_to_agent
        self._tls_hash = tls_hash
        self._random = random

    async def admit(self, cookie: str, protocol: Optional[int], node_id: Optional[str],
                    address: str) -> SideInfo:
        """The guest's side, once its agent was asked to dial; raises GuestRefused."""
        now_ms = self._clock.seconds() * 1000
        share, why = await share_from_cookie(self._store, self._invite_cookies, cookie, now_ms)
        if share is None:
            raise GuestRefused(why)
        public = share["publicid"]
        state = window(share, now_ms)
        if state.state(now_ms) != "open":
            raise GuestRefused(f"share {public} is not valid now ({state.state(now_ms)})")
        if node_id is not None and node_id != share["nodeid"]:
            raise GuestRefused(f"share {public} is for another device")
        allowed = usages(share_bits(share))
        if protocol is None and allowed:
            protocol = allowed[0]
        if protocol not in allowed:
            raise GuestRefused(f"share {public} does not open protocol {protocol}")
        assert protocol is not None
        node, mesh, sharer = await self._records(share)
        if node is None or sharer is None:
            raise GuestRefused(f"the device or the user of share {public} is gone")
        access = await Access.load(self._store, sharer)
        if not may_share(access.node_rights(node, mesh), _BIT_OF[protocol]):
            raise GuestRefused(f"the user of share {public} may no longer share this")

        session_id = relay_id(self._random)
        rauth = await self._cookies.encode({"ruserid": sharer["_id"], "nodeid": node["_id"],
                                            "pid": public})
        consent = self._policy.consent | _int(share.get("consent")) | _int(
            node.get("consent")) | _int(mesh.get("consent") if mesh is not None else 0)
        rights = MESHRIGHT_REMOTECONTROL | (
            MESHRIGHT_REMOTEVIEWONLY if share.get("viewOnly") is True else 0)
        message: dict[str, Any] = {
            "action": "msg", "type": "tunnel",
            "value": relay_value("meshrelay.ashx", {"p": str(protocol), "id": session_id,
                                                    "rauth": rauth, "nodeid": node["_id"]}),
            "soptions": self._policy.soptions(usages=allowed), "rights": rights,
            "consent": consent,
            "guestuserid": sharer["_id"], "guestname": share.get("guestName"),
            "userid": sharer["_id"], "username": sharer.get("name"),
            "realname": sharer.get("realname"), "remoteaddr": address,
            "servertlshash": self._tls_hash().lower() or None}
        message = {k: v for k, v in message.items() if v is not None}
        if not self._send_to_agent(node["_id"], message):
            raise GuestRefused(f"the device of share {public} is not connected")
        name = share.get("guestName")
        guest = name if isinstance(name, str) else ""
        self._log.info("guest {guest} of share {share_id} admitted to {node_id}, protocol "
                       "{protocol}, from {address}", guest=guest[:128], share_id=public,
                       node_id=node["_id"], protocol=protocol, address=address)
        return SideInfo(relay_id=session_id, user_id=sharer["_id"],
                        user_name=sharer.get("name"), authenticated=True, protocol=protocol,
                        node_id=node["_id"], browser=True, address=address,
                        guest_name=guest, share_id=public,
                        expires=state.end / 1000 if state.end is not None else None)

    async def _records(self, share: Document
                       ) -> tuple[Optional[Document], Optional[Document], Optional[Document]]:
        node = await self._store.get(share["nodeid"])
        if node is None or node.get("type") != "node":
            return None, None, None
        mesh = await self._store.get(node["meshid"]) if isinstance(node.get("meshid"), str) \
            else None
        if mesh is not None and (mesh.get("type") != "mesh" or mesh.get("deleted")):
            mesh = None
        sharer = await self._store.get(share.get("userid", "")) \
            if isinstance(share.get("userid"), str) else None
        if sharer is None or sharer.get("type", "user") != "user" or is_locked(sharer):
            sharer = None
        return node, mesh, sharer
