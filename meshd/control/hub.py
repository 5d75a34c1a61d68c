"""What every user session of this server shares.

:class:`ControlHub` holds the collaborators (store, event bus, presence, agents,
accounts), the registry of live sessions (for session counts and ``userbroadcast``)
and the helpers that publish events the way MeshCentral dispatches them: logged events
get a ``time`` and go to the audit trail, and a change of a user's links or rights is
followed by a ``resubscribe`` signal to that user's sessions.

Signals (``resubscribe``, ``close``) travel on the bus like events, addressed to one
user id, with the key :data:`INTERNAL`; sessions act on them and never forward them.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from meshd.accounts import Accounts
from meshd.control.auth import Authenticator
from meshd.control.cookies import LoginCookies
from meshd.control.rights import is_full_admin
from meshd.control.views import iso_time
from meshd.events import IEventBus, publish_and_store
from meshd.presence import IPresence
from meshd.store.interface import Document, IStore, StoreUnavailable

if TYPE_CHECKING:
    from meshd.control.session import ControlSession

INTERNAL = "meshd.internal"
MAX_MESSAGE = 4 * 1024 * 1024  # largest frame a client may send (runcommands scripts fit)
RunBlocking = Callable[..., "Deferred[Any]"]


def _warning(msg: str, args: Optional[list[Any]] = None) -> dict[str, Any]:
    return {"msg": msg, "id": 0, "args": list(args or [])}


class ControlHub:
    _log = Logger()

    def __init__(self, *, store: IStore, bus: IEventBus, presence: IPresence,
                 accounts: Accounts, clock: Any, run_blocking: RunBlocking,
                 server_info: Callable[[], dict[str, Any]],
                 agents: Any = None, web_sessions: Any = None,
                 public_url: Optional[Callable[[], str]] = None,
                 random: Callable[[int], bytes] = os.urandom, limiter: Any = None,
                 max_message: int = MAX_MESSAGE, force2factor: bool = False,
                 allow_login_token: bool = False,
                 server_warnings: Sequence[str] = (), session_policy: Any = None,
                 amt_power: Any = None, mailer: Any = None, title: str = "meshd") -> None:
        self.store = store
        #: Outgoing e-mail (meshd.mail.Mailer; None: no ``smtp`` section, no e-mail).
        self.mailer = mailer
        #: The server's name in texts users receive (the default domain's title).
        self.title = title
        #: Intel AMT power actions over CIRA (meshd.mps.amtpower.AmtPower; None: no MPS).
        self.amt_power = amt_power
        #: The domain's consent bits and agent prompt texts for remote sessions
        #: (meshd.relay.tunnel.SessionPolicy; None: none).
        self.session_policy = session_policy
        #: What full administrators are told on login (``serverwarnings``): configuration
        #: problems found at start, and what :meth:`add_warning` adds while running.
        self.server_warnings: list[dict[str, Any]] = []
        for text in dict.fromkeys(server_warnings):
            self.server_warnings.append(_warning(text))
        self.bus = bus
        self.presence = presence
        self.accounts = accounts
        self.agents = agents
        self.clock = clock
        self.run_blocking = run_blocking
        self.server_info = server_info
        self.random = random
        self.max_message = max_message
        #: MeshCentral's ``settings.allowLoginToken``: the ``logincookie`` action answers.
        self.allow_login_token = allow_login_token
        self.public_url = public_url or (lambda: "https://localhost")
        self.web_sessions = web_sessions
        self.limiter = limiter
        self.cookies = LoginCookies(store, clock.seconds, random)
        self.invite_cookies = LoginCookies(store, clock.seconds, random,
                                           key_id="InvitationLinkEncryptionKey")
        self.auth = Authenticator(store=store, accounts=accounts, web_sessions=web_sessions,
                                  cookies=self.cookies, now=clock.seconds,
                                  run_blocking=run_blocking, limiter=limiter,
                                  force2factor=force2factor)
        self.sessions: dict[str, "ControlSession"] = {}
        # Device listings being built, shared by concurrent identical ``nodes`` requests
        # (see meshd.control.actions.devices.Coalescer).
        self.listings: dict[Any, Any] = {}
        #: Encoded device listings by request key: (store change marker, presence
        #: version, text); used while neither moved (see actions.devices.nodes).
        self.listing_cache: OrderedDict[Any, tuple[Any, Any, str]] = OrderedDict()

    @property
    def force2factor(self) -> bool:
        return self.auth.force2factor

    def now(self) -> float:
        return float(self.clock.seconds())

    def now_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), timezone.utc)

    # -- sessions ---------------------------------------------------------------------

    def add_warning(self, msg: str, args: Optional[list[Any]] = None) -> None:
        """A warning for full administrators, sent on their next login and to those
        logged in now (MeshCentral's ``{msg, id, args}``; id 0: no translated text, so
        MeshCentral's web app shows ``msg``)."""
        warning = _warning(msg, args)
        if warning in self.server_warnings:
            return
        self.server_warnings.append(warning)
        for session in list(self.sessions.values()):
            if is_full_admin(session.user):
                session.send({"action": "serverwarnings", "warnings": [dict(warning)]})

    def register(self, session: "ControlSession") -> None:
        self.sessions[session.session_id] = session
        self._announce_count(session)

    def unregister(self, session: "ControlSession") -> None:
        if self.sessions.pop(session.session_id, None) is not None:
            self._announce_count(session)

    def session_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for session in self.sessions.values():
            counts[session.user_id] = counts.get(session.user_id, 0) + 1
        return counts

    def _announce_count(self, session: "ControlSession") -> None:
        count = sum(1 for s in self.sessions.values() if s.user_id == session.user_id)
        self.bus.publish(["*", "server-users"], {
            "action": "wssessioncount", "userid": session.user_id,
            "username": session.user_name, "count": count, "nolog": 1, "domain": ""})

    # -- events -----------------------------------------------------------------------

    def publish(self, targets: Iterable[str], event: dict[str, Any]) -> None:
        """Dispatch an event (and store it unless ``nolog``), MeshCentral-style.

        Fields set to None are left out, as JavaScript leaves out ``undefined``.
        """
        for key in [k for k, v in event.items() if v is None]:
            del event[key]
        event.setdefault("domain", "")
        if not event.get("nolog"):
            event["time"] = iso_time(datetime.fromtimestamp(self.now(), timezone.utc))
        d = publish_and_store(self.bus, self.store, list(dict.fromkeys(targets)), event,
                              self.clock.seconds)
        if d is not None:
            d.addErrback(self._store_failed, event.get("action"))

    def _store_failed(self, failure: Any, action: Any) -> None:
        if failure.check(StoreUnavailable):
            self._log.error("event {action} not stored: {problem}", action=action,
                            problem=str(failure.value))
        else:
            self._log.failure("storing event {action} failed", failure, action=action)

    def resubscribe(self, user_id: str) -> None:
        """Tell the user's sessions that its links or rights changed."""
        self.bus.publish([user_id], {INTERNAL: "resubscribe", "userid": user_id})

    def close_user(self, user_id: str) -> None:
        """Close every session of a user (removed or locked account), web sessions too."""
        self.bus.publish([user_id], {INTERNAL: "close", "userid": user_id})
        if self.web_sessions is not None:
            d = Deferred.fromCoroutine(self.web_sessions.destroy_user(user_id))
            d.addErrback(self._store_failed, "close web sessions")

    # -- agents -----------------------------------------------------------------------

    def send_to_agent(self, node_id: str, message: dict[str, Any]) -> bool:
        if self.agents is None:
            return False
        return bool(self.agents.send_to_node(node_id, message))


def mesh_targets(mesh: Document, extra: Iterable[str] = ()) -> list[str]:
    """Dispatch ids of a device-group event: admins, the group, its user groups."""
    targets = ["*", mesh["_id"]]
    links = mesh.get("links")
    if isinstance(links, dict):
        targets += [key for key in links if key.startswith("ugrp/")]
    targets += list(extra)
    return list(dict.fromkeys(targets))


def node_targets(node: Document, mesh: Optional[Document], extra: Iterable[str] = ()
                 ) -> list[str]:
    """Dispatch ids of a device event: the device, admins, its group and user groups."""
    targets = [node["_id"], "*", node.get("meshid", "")]
    for record in (mesh, node):
        links = record.get("links") if record is not None else None
        if isinstance(links, dict):
            targets += [key for key in links if key.startswith("ugrp/")]
    targets += list(extra)
    return list(dict.fromkeys(t for t in targets if t))
