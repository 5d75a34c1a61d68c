"""What every relay connection of this server shares: who a side is, and session events.

Identity of a side (spec relay.md §3), resolved from the upgrade request:

* a **user** logged in the way ``/control.ashx`` accepts (``?auth=`` cookie, ``xid``
  session cookie, ``x-meshauth`` header, ``?user=&pass=``; the same ``Origin`` check);
* else a **relay cookie** ``?rauth=`` (240 minutes): ``{ruserid}`` — the agent side of a
  tunnel the server announced for that user — or ``{nouser:1}``;
* else a **guest** of a device-sharing link: ``?c=`` the link's cookie
  (:mod:`meshd.relay.guest`; the relay then asks the agent to dial back itself);
* neither: the upgrade is refused (403) before any WebSocket opens.

A logged-in side naming a ``nodeid`` must hold REMOTECONTROL or RELAY rights on it.
Session start and end are dispatched as MeshCentral's ``relaylog`` events (msgid 13–16,
162 / 9–12, 112) to administrators and the user (with ``guestname`` for guests), and
kept in the audit trail.  A removed share (event ``removedDeviceShare`` on
``server-shareremove``) closes its live guest sessions at once.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from twisted.logger import Logger

from meshd.accounts import is_locked
from meshd.control.auth import Authenticator
from meshd.control.cookies import LoginCookies
from meshd.control.rights import MESHRIGHT_RELAY, MESHRIGHT_REMOTECONTROL, Access
from meshd.control.views import iso_time
from meshd.events import IEventBus, publish_and_store
from meshd.relay.guest import GuestAdmission, GuestRefused
from meshd.relay.machine import Relay, RelayTable, SideInfo
from meshd.store.interface import IStore, StoreUnavailable

RELAY_COOKIE_MINUTES = 240
MAX_ID = 256

TERMINAL_PROTOCOLS = (1, 6, 8, 9)
_START = {2: ("Started desktop session", 15), 5: ("Started file management session", 16),
          200: ("Started messenger session", 162)}
_END = {2: ("Ended desktop session", 11), 5: ("Ended file management session", 12),
        200: ("Ended messenger session", 112)}


def _first(params: dict[str, list[str]], name: str) -> Optional[str]:
    values = params.get(name)
    return values[0] if values else None


def _protocol(value: Any) -> Optional[int]:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number <= 0xFFFF else None


def start_text(protocol: Optional[int]) -> tuple[str, int]:
    if protocol in TERMINAL_PROTOCOLS:
        return "Started terminal session", 14
    return _START.get(protocol or 0, ("Started relay session", 13))


def end_text(protocol: Optional[int]) -> tuple[str, int]:
    if protocol in TERMINAL_PROTOCOLS:
        return "Ended terminal session", 10
    return _END.get(protocol or 0, ("Ended relay session", 9))


class Refused(Exception):
    """The upgrade request does not identify a side that may use the relay."""


class RelayServer:
    """The pairing table plus authentication and events, for the Autobahn adapter."""

    _log = Logger()

    def __init__(self, *, store: IStore, bus: IEventBus, clock: Any, auth: Authenticator,
                 cookies: LoginCookies, lonely_seconds: Optional[float] = None,
                 recorder_for: Optional[Callable[[str], Any]] = None,
                 invite_cookies: Optional[LoginCookies] = None,
                 send_to_agent: Optional[Callable[[str, dict[str, Any]], bool]] = None,
                 tls_hash: Callable[[], str] = lambda: "",
                 random: Callable[[int], bytes] = os.urandom,
                 session_policy: Any = None) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self.auth = auth
        self.cookies = cookies
        extra = {} if lonely_seconds is None else {"lonely_seconds": lonely_seconds}
        self.table = RelayTable(clock, on_start=self._started, on_end=self._ended,
                                recorder_for=recorder_for, **extra)
        # Guests of sharing links: only when the server can reach agents.
        self.guests: Optional[GuestAdmission] = None
        if invite_cookies is not None and send_to_agent is not None:
            self.guests = GuestAdmission(store=store, clock=clock, invite_cookies=invite_cookies,
                                         cookies=cookies, send_to_agent=send_to_agent,
                                         tls_hash=tls_hash, random=random,
                                         policy=session_policy)
        self._shares_watch = bus.subscribe(["server-shareremove"], self._share_event)

    @classmethod
    def from_hub(cls, hub: Any, **kwargs: Any) -> "RelayServer":
        """A relay that authenticates like the control channel ``hub`` and reaches its
        agents (for guests of sharing links)."""
        return cls(store=hub.store, bus=hub.bus, clock=hub.clock, auth=hub.auth,
                   cookies=hub.cookies, invite_cookies=hub.invite_cookies,
                   send_to_agent=hub.send_to_agent,
                   tls_hash=lambda: str(hub.server_info().get("tlshash", "")),
                   random=hub.random, session_policy=hub.session_policy, **kwargs)

    def _share_event(self, event: dict[str, Any]) -> None:
        public = event.get("publicid")
        if event.get("action") == "removedDeviceShare" and isinstance(public, str):
            closed = self.table.close_share(public)
            if closed:
                self._log.info("share {share_id} removed: {count} guest session(s) closed",
                               share_id=public, count=closed)

    # -- identity -------------------------------------------------------------------------

    async def identify(self, headers: dict[str, str], params: dict[str, list[str]],
                       address: str) -> SideInfo:
        """The side an upgrade request describes; raises :class:`Refused`."""
        share_cookie = _first(params, "c")
        if share_cookie is not None:
            return await self._guest(share_cookie, params, address)
        relay_id = _first(params, "id")
        if not relay_id or len(relay_id) > MAX_ID:
            raise Refused("no relay id")
        protocol = _protocol(_first(params, "p"))
        node_id = _first(params, "nodeid")
        if node_id is not None and not 1 <= len(node_id) <= 1024:
            raise Refused("bad nodeid")
        user_id: Optional[str] = None
        user_name: Optional[str] = None
        share_id: Optional[str] = None
        authenticated = nouser = False
        result = await self.auth.upgrade(headers, params, address)
        if result.user is not None:
            user_id, user_name, authenticated = (result.user["_id"], result.user.get("name"),
                                                 True)
        else:
            rauth = _first(params, "rauth")
            payload = await self.cookies.decode(rauth, RELAY_COOKIE_MINUTES) if rauth else None
            if payload is None:
                raise Refused("no authentication")
            ruserid = payload.get("ruserid")
            if isinstance(ruserid, str) and ruserid.startswith("user/"):
                user = await self.store.get(ruserid)
                if user is None or user.get("type", "user") != "user" or is_locked(user):
                    raise Refused("relay cookie of an unknown or locked user")
                user_id, user_name = ruserid, user.get("name")
            elif payload.get("nouser") == 1:
                nouser = True
            else:
                raise Refused("relay cookie without a user")
            if protocol is None:
                protocol = _protocol(payload.get("p"))
            if isinstance(payload.get("pid"), str):
                share_id = payload["pid"]  # the agent side of a guest's session
        if authenticated and node_id is not None:
            assert result.user is not None
            if not await self._may_relay(result.user, node_id):
                raise Refused("no relay rights on the device")
        return SideInfo(relay_id=relay_id, user_id=user_id, user_name=user_name,
                        authenticated=authenticated, nouser=nouser, protocol=protocol,
                        node_id=node_id, browser=_first(params, "browser") == "1",
                        address=address, share_id=share_id)

    async def _guest(self, cookie: str, params: dict[str, list[str]], address: str
                     ) -> SideInfo:
        if self.guests is None:
            raise Refused("guest links are not served here")
        node_id = _first(params, "nodeid")
        if node_id is not None and not 1 <= len(node_id) <= 1024:
            raise Refused("bad nodeid")
        try:
            return await self.guests.admit(cookie, _protocol(_first(params, "p")), node_id,
                                           address)
        except GuestRefused as e:
            raise Refused(f"guest: {e}") from None

    async def _may_relay(self, user: dict[str, Any], node_id: str) -> bool:
        node = await self.store.get(node_id)
        if node is None or node.get("type") != "node":
            return False
        mesh = await self.store.get(node["meshid"]) if isinstance(node.get("meshid"), str) \
            else None
        access = await Access.load(self.store, user)
        rights = access.node_rights(node, mesh if mesh and mesh.get("type") == "mesh" else None)
        return bool(rights & (MESHRIGHT_REMOTECONTROL | MESHRIGHT_RELAY))

    # -- events ---------------------------------------------------------------------------

    def _publish(self, targets: list[str], event: dict[str, Any]) -> None:
        now = self.clock.seconds()
        event["time"] = iso_time(datetime.fromtimestamp(now, timezone.utc))
        d = publish_and_store(self.bus, self.store, [t for t in dict.fromkeys(targets) if t],
                              event, self.clock.seconds)
        if d is not None:
            d.addErrback(self._store_failed)

    def _store_failed(self, failure: Any) -> None:
        if failure.check(StoreUnavailable):
            self._log.error("relay event not stored: {problem}", problem=str(failure.value))
        else:
            self._log.failure("storing a relay event failed", failure)

    @staticmethod
    def _addresses(relay: Relay) -> tuple[str, str]:
        second = relay.second.info.address if relay.second is not None else ""
        return relay.first.info.address, second

    def _started(self, relay: Relay) -> None:
        side = relay.user_side
        first, second = self._addresses(relay)
        self._log.info("relay {relay_id} paired ({first} <-> {second}), protocol {protocol}",
                       relay_id=relay.relay_id[:64], first=first, second=second,
                       protocol=relay.protocol)
        if side is None or side.info.user_id is None:
            return
        text, msgid = start_text(relay.protocol)
        event = {
            "etype": "relay", "action": "relaylog", "domain": "", "userid": side.info.user_id,
            "username": side.info.user_name, "msgid": msgid,
            "msgArgs": [relay.relay_id, first, second],
            "msg": f'{text} "{relay.relay_id}" from {first} to {second}',
            "protocol": relay.protocol, "nodeid": relay.node_id}
        if relay.guest_name is not None:
            event["guestname"] = relay.guest_name
        self._publish(["*", side.info.user_id], event)

    def _ended(self, relay: Relay) -> None:
        side = relay.user_side
        first, second = self._addresses(relay)
        seconds = int(self.clock.seconds() - (relay.started or self.clock.seconds()))
        bytes_in = relay.first.received_bytes
        bytes_out = relay.second.received_bytes if relay.second is not None else 0
        self._log.info("relay {relay_id} ended after {seconds} s ({bytes_in} + {bytes_out} "
                       "bytes)", relay_id=relay.relay_id[:64], seconds=seconds,
                       bytes_in=bytes_in, bytes_out=bytes_out)
        if side is None or side.info.user_id is None:
            return
        text, msgid = end_text(relay.protocol)
        event = {
            "etype": "relay", "action": "relaylog", "domain": "", "userid": side.info.user_id,
            "username": side.info.user_name, "msgid": msgid,
            "msgArgs": [relay.relay_id, first, second, seconds],
            "msg": f'{text} "{relay.relay_id}" from {first} to {second}, {seconds} second(s)',
            "protocol": relay.protocol, "nodeid": relay.node_id, "duration": seconds,
            "bytesin": bytes_in, "bytesout": bytes_out}
        if relay.guest_name is not None:
            event["guestname"] = relay.guest_name
        self._publish(["*", side.info.user_id, relay.node_id or ""], event)


