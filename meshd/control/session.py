"""One logged-in user on ``/control.ashx``: frames in, frames and events out.

Order on the wire (spec control-protocol §3, §4):

* server → client right after login: ``serverinfo``, ``userinfo`` and, for full
  administrators, ``traceinfo``; the session is subscribed to events before these go;
* client → server: one JSON object per text frame with a string ``action`` of 3–32
  characters; anything else is dropped silently, as are unknown actions;
* each request is handled to the end before the next one starts (a client that sends
  ``meshes`` then ``nodes`` gets the answers in that order), and the events an action
  causes are delivered before its reply;
* events: ``{"action":"event","event":{…}}`` for every event whose dispatch ids meet
  the session's subscription (§8).

Limits: a frame is at most ``hub.max_message`` bytes (the adapter enforces it); at most
:data:`MAX_PENDING` requests may wait — a client flooding faster than the server
answers is disconnected.  Every request re-reads the user record, so rights removed by
someone else apply to the very next request; a removed or locked account is closed.
With ``settings.force2factor``, while the user has no second factor only the
enrolment actions (:data:`ENROLMENT_ACTIONS`) are served; every other request is
answered ``Two-factor authentication required`` (see :mod:`meshd.control.twofactor`).
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from meshd.accounts import is_locked
from meshd.control.hub import INTERNAL, ControlHub
from meshd.control.rights import (
    MESHRIGHT_ADMIN,
    MESHRIGHT_LIMITEVENTS,
    Access,
    is_full_admin,
    link_rights,
    subscription_ids,
)
from meshd.control.views import dumps, safe_user
from meshd.events import Subscription
from meshd.store.interface import Document, StoreUnavailable

MAX_PENDING = 256
ENROLMENT_ACTIONS = frozenset({"otpauth-request", "otpauth-setup"})
ENROLMENT_REQUIRED = "Two-factor authentication required"


class Call:
    """One request being handled: the command, the caller (fresh from the store), replies."""

    def __init__(self, session: "ControlSession", command: dict[str, Any], user: Document
                 ) -> None:
        self.session = session
        self.hub = session.hub
        self.store = session.hub.store
        self.command = command
        self.action: str = command["action"]
        self.user = user
        self.user_id: str = user["_id"]
        rid = command.get("responseid")
        self.responseid = rid if isinstance(rid, (str, int, float)) and not isinstance(
            rid, bool) else None
        self._access: Optional[Access] = None

    async def access(self) -> Access:
        if self._access is None:
            self._access = await Access.load(self.store, self.user)
        return self._access

    def send(self, message: dict[str, Any]) -> None:
        self.session.send(message)

    def send_text(self, text: str) -> None:
        """Send a frame already encoded (a shared ``nodes`` answer)."""
        self.session.send_text(text)

    def respond(self, **fields: Any) -> None:
        """Always answer, with ``responseid`` when the request had one."""
        message: dict[str, Any] = {"action": self.action}
        if self.responseid is not None:
            message["responseid"] = self.responseid
        message.update(fields)
        self.send(message)

    def result(self, result: str, **fields: Any) -> None:
        """Answer ``{action, responseid, result}`` only when the request had a responseid."""
        if self.responseid is not None:
            self.respond(result=result, **fields)

    def publish(self, targets: Any, event: dict[str, Any]) -> None:
        self.hub.publish(targets, event)

    def actor(self) -> dict[str, Any]:
        return {"userid": self.user_id, "username": self.user.get("name")}


Handler = Callable[[Call], Any]


class ControlSession:
    _log = Logger()

    def __init__(self, hub: ControlHub, user: Document, send: Callable[[str], None],
                 close: Callable[[], None], peer: str = "",
                 login_token: Optional[str] = None, failed_logins: int = 0,
                 web_session: Optional[str] = None) -> None:
        from meshd.control.actions import ACTIONS  # the table imports Call from here

        self.hub = hub
        self.user = user
        self.user_id: str = user["_id"]
        self.user_name: str = user.get("name", "")
        self.peer = peer
        self.login_token = login_token
        self.failed_logins = failed_logins
        self.web_session = web_session
        self.session_id = f"{self.user_id}/{hub.random(20).hex()}"
        self._actions: dict[str, Handler] = ACTIONS
        self._send_text = send
        self._close_transport = close
        self._subscription: Optional[Subscription] = None
        self._pending: deque[dict[str, Any]] = deque()
        self._running = False
        self.closed = False
        self.sent_to_nodes: set[str] = set()
        #: (secret, expiry in seconds) from otpauth-request, awaiting otpauth-setup.
        self.pending_otp: Optional[tuple[str, float]] = None
        #: Repeating timers of this session (``serverstats``), by name; ended on close.
        self._timers: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        # Others hear of this session first; it hears everything from now on.
        self.hub.register(self)
        self._subscription = self.hub.bus.subscribe(self._subscription_ids(self.user),
                                                    self._on_event)
        info = dict(self.hub.server_info())
        info["serverTime"] = int(self.hub.now() * 1000)
        if not is_full_admin(self.user):
            info.pop("certExpire", None)
        self.send({"action": "serverinfo", "serverinfo": info})
        self.send({"action": "userinfo", "userinfo": safe_user(self.user)})
        if is_full_admin(self.user):
            self.send({"action": "traceinfo", "traceSources": None})
            if self.hub.server_warnings:
                self.send({"action": "serverwarnings",
                           "warnings": [dict(w) for w in self.hub.server_warnings]})
        if self.failed_logins > 0:
            count = self.failed_logins
            self.send({"action": "msg", "type": "notify", "title": "Security Warning",
                       "tag": "ServerNotify",
                       "id": int.from_bytes(self.hub.random(6), "big") / 2 ** 48,
                       "value": f"There has been {count} failed login attempts on this "
                                f"account since the last login.",
                       "titleid": 3, "msgid": 12, "args": [count]})

    def connection_lost(self) -> None:
        self._cancel_timers()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if not self.closed:
            self.closed = True
        self._pending.clear()
        self.hub.unregister(self)

    def close(self) -> None:
        self._cancel_timers()
        if not self.closed:
            self.closed = True
            self._pending.clear()
            self._close_transport()

    # -- timers ------------------------------------------------------------------------

    def start_timer(self, name: str, seconds: float,
                    tick: Callable[["ControlSession"], Any]) -> None:
        """Call ``tick(self)`` (a coroutine function) every ``seconds`` until
        :meth:`cancel_timer` or the session ends; a tick that fails is logged."""
        self.cancel_timer(name)
        if self.closed:
            return
        current: list[Any] = []  # the pending DelayedCall of this timer

        def fire() -> None:
            if self._timers.get(name) is not current[0] or self.closed:
                return
            d = Deferred.fromCoroutine(tick(self))
            d.addErrback(lambda f: self._log.failure("session timer {name}", f, name=name))

            def again(_: Any) -> None:
                if self._timers.get(name) is current[0] and not self.closed:
                    current[0] = self._timers[name] = self.hub.clock.callLater(seconds, fire)
            d.addBoth(again)

        current.append(self.hub.clock.callLater(seconds, fire))
        self._timers[name] = current[0]

    def cancel_timer(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _cancel_timers(self) -> None:
        for name in list(self._timers):
            self.cancel_timer(name)

    def send(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self._send_text(dumps(message))

    def send_text(self, text: str) -> None:
        if not self.closed:
            self._send_text(text)

    # -- requests ----------------------------------------------------------------------

    def frame_received(self, payload: bytes | str) -> None:
        if self.closed:
            return
        try:
            command = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        if not isinstance(command, dict):
            return
        action = command.get("action")
        if not isinstance(action, str) or not 3 <= len(action) <= 32:
            return
        if action == "ping":
            self.send({"action": "pong"})
            return
        if action == "pong":
            return
        if action == "close":
            self.close()
            return
        if action not in self._actions:
            return
        if len(self._pending) >= MAX_PENDING:
            self._log.warn("{user_id} from {peer} sent requests faster than they are "
                           "answered; closing", user_id=self.user_id, peer=self.peer)
            self.close()
            return
        self._pending.append(command)
        if not self._running:
            Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        self._running = True
        try:
            while self._pending and not self.closed:
                await self._dispatch(self._pending.popleft())
        finally:
            self._running = False

    async def _dispatch(self, command: dict[str, Any]) -> None:
        action = command["action"]
        try:
            user = await self.hub.store.get(self.user_id)
            if user is None or is_locked(user):
                self.close()
                return
            self.refresh(user)
            if action not in ENROLMENT_ACTIONS and \
                    self.hub.auth.must_enrol(user, self.login_token):
                self._error_reply(command, ENROLMENT_REQUIRED)
                return
            call = Call(self, command, user)
            await self._actions[action](call)
        except StoreUnavailable as e:
            self._log.error("{action} for {user_id} failed: {problem}", action=action,
                            user_id=self.user_id, problem=str(e))
            self._error_reply(command, "Database unavailable")
        except Exception:
            # A bug costs this one request, never the session or the server.
            self._log.failure("{action} for {user_id} failed", action=action,
                              user_id=self.user_id)
            self._error_reply(command, "Internal error")

    def _error_reply(self, command: dict[str, Any], text: str) -> None:
        rid = command.get("responseid")
        if isinstance(rid, (str, int, float)) and not isinstance(rid, bool):
            self.send({"action": command["action"], "responseid": rid, "result": text})

    # -- events ------------------------------------------------------------------------

    def _subscription_ids(self, user: Document) -> set[str]:
        ids = subscription_ids(user)
        ids.update("agent:" + node for node in self.sent_to_nodes)
        return ids

    def refresh(self, user: Document) -> None:
        self.user = user
        self.user_name = user.get("name", self.user_name)
        if self._subscription is not None:
            ids = frozenset(self._subscription_ids(user))
            if ids != self._subscription.ids:
                self._subscription.update(ids)

    def watch_agent(self, node_id: str) -> None:
        """Hear what this device's agent sends to this session (replies to our requests)."""
        if node_id not in self.sent_to_nodes:
            self.sent_to_nodes.add(node_id)
            self.refresh(self.user)

    def _on_event(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        signal = event.get(INTERNAL)
        if signal is not None:
            # A signal for one web session (its logout) is for the channels it opened.
            if event.get("userid") == self.user_id and event.get(
                    "websession", self.web_session) == self.web_session:
                self._on_signal(signal)
            return
        if event.get("action") == "agentmsg":
            self._on_agent_message(event)
            return
        if event.get("domain", "") != "" or self._limited(event):
            return
        self.send({"action": "event", "event": event})

    def _limited(self, event: dict[str, Any]) -> bool:
        """LIMITEVENTS on a group: of the group's events done by users, only this user's
        own get through (connection changes, done by nobody, do)."""
        node = event.get("node")
        mesh_id = event.get("meshid") or (node.get("meshid") if isinstance(node, dict)
                                          else None)
        if not isinstance(mesh_id, str):
            return False
        rights = link_rights(self.user.get("links"), mesh_id)
        if not rights & MESHRIGHT_LIMITEVENTS or rights == MESHRIGHT_ADMIN:
            return False
        return "userid" in event and event["userid"] != self.user_id

    def _on_signal(self, signal: str) -> None:
        if signal == "close":
            self.close()
        elif signal == "resubscribe":
            Deferred.fromCoroutine(self._reload()).addErrback(
                lambda f: self._log.failure("reloading {user_id} failed", f,
                                            user_id=self.user_id))

    async def _reload(self) -> None:
        user = await self.hub.store.get(self.user_id)
        if user is None or is_locked(user):
            self.close()
        elif not self.closed:
            self.refresh(user)

    def _on_agent_message(self, event: dict[str, Any]) -> None:
        message = event.get("message")
        node_id = event.get("nodeid")
        if not isinstance(message, dict) or not isinstance(node_id, str):
            return
        if message.get("sessionid") == self.session_id:
            reply = {k: v for k, v in message.items() if k != "sessionid"}
        elif message.get("sessionid") is None and message.get("userid") == self.user_id:
            reply = {k: v for k, v in message.items() if k != "userid"}
        else:
            return
        reply["nodeid"] = node_id
        self.send(reply)
