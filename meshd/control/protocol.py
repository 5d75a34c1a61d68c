"""``/control.ashx``: the Autobahn adapter of the user control channel.

The upgrade request is authenticated in ``onConnect`` (spec control-protocol §2); the
WebSocket then always opens, because clients expect the refusal as a JSON frame:
``{"action":"close","cause":…,"msg":…}`` followed by a close without status (what
meshctrl turns into "Invalid login.").  A client that announced ``x-meshauth: *`` has
:data:`INNER_AUTH_SECONDS` to send ``{"action":"userAuth",…}``.  Everything after login
is the :class:`~meshd.control.session.ControlSession`'s business; this class only moves
text frames and drops the session when the socket closes.  Binary frames are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from meshd.control.auth import AuthResult, close_message
from meshd.control.hub import ControlHub
from meshd.control.session import ControlSession

INNER_AUTH_SECONDS = 30
MAX_AUTH_FRAME = 4096


def _peer_host(peer: str) -> str:
    """``tcp:127.0.0.1:5555`` / ``tcp6:[::1]:5555`` -> the address."""
    if ":" not in peer:
        return peer
    host = peer.split(":", 1)[1].rsplit(":", 1)[0]
    return host.strip("[]")


class ControlProtocol(WebSocketServerProtocol):
    """Thin adapter: authentication result in, text frames both ways."""

    _log = Logger()
    session: Optional[ControlSession] = None
    _auth: Optional[AuthResult] = None
    _inner_timer: Any = None
    _authenticating = False

    @property
    def hub(self) -> ControlHub:
        hub: ControlHub = self.factory.hub
        return hub

    def onConnect(self, request: ConnectionRequest) -> "Deferred[None]":  # type: ignore[override]
        self._peer = _peer_host(request.peer)
        headers = {str(k).lower(): str(v) for k, v in request.headers.items()}
        d: Deferred[Any] = Deferred.fromCoroutine(
            self.hub.auth.upgrade(headers, request.params or {}, self._peer, enrolment=True))

        def done(result: AuthResult) -> None:
            self._auth = result

        def failed(failure: Any) -> None:
            self._log.failure("control channel authentication from {peer} failed", failure,
                              peer=self._peer)
            self._auth = AuthResult(close=close_message("noauth"))

        d.addCallbacks(done, failed)
        return d

    def onOpen(self) -> None:
        result = self._auth
        if result is None:
            self._refuse(close_message("noauth"))
        elif result.inner:
            self._inner_timer = self.hub.clock.callLater(INNER_AUTH_SECONDS, self._close)
        elif result.user is not None:
            self._start(result)
        else:
            self._refuse(result.close or close_message("noauth"))

    def _start(self, result: AuthResult) -> None:
        assert result.user is not None
        self.session = ControlSession(self.hub, result.user, self._send_text, self._close,
                                      self._peer, login_token=result.login_token,
                                      failed_logins=result.failed_logins,
                                      web_session=result.web_session)
        self.session.start()

    def _refuse(self, message: dict[str, Any]) -> None:
        self._send_text(json.dumps(message, separators=(",", ":")))
        self._close()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            return
        if self.session is not None:
            try:
                self.session.frame_received(payload)
            except Exception:
                # A bug must cost this one connection, never the server.
                self._log.failure("control session of {peer} failed", peer=self._peer)
                self.session.close()
        elif self._auth is not None and self._auth.inner and not self._authenticating:
            self._inner_auth(payload)

    def _inner_auth(self, payload: bytes) -> None:
        if len(payload) > MAX_AUTH_FRAME:
            return self._refuse(close_message("noauth-2c"))
        try:
            command = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(command, dict) or command.get("action") != "userAuth":
            return  # serverAuth and the rest: not offered by this server
        try:
            name = base64.b64decode(str(command.get("username", "")), validate=True
                                    ).decode("utf-8")
            password = base64.b64decode(str(command.get("password", "")), validate=True
                                        ).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return self._refuse(close_message("noauth-2c"))
        token = command.get("token")
        self._authenticating = True
        d = Deferred.fromCoroutine(self.hub.auth.password(name, password, token, "noauth-2c",
                                                          peer=self._peer, enrolment=True))

        def done(result: AuthResult) -> None:
            self._authenticating = False
            if self._inner_timer is not None and self._inner_timer.active():
                self._inner_timer.cancel()
            if self.state != self.STATE_OPEN:
                return
            if result.user is not None:
                self._auth = result
                self._start(result)
            else:
                self._refuse(result.close or close_message("noauth-2c"))

        def failed(failure: Any) -> None:
            self._log.failure("control channel userAuth from {peer} failed", failure,
                              peer=self._peer)
            self._refuse(close_message("noauth-2c"))

        d.addCallbacks(done, failed)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        if self._inner_timer is not None and self._inner_timer.active():
            self._inner_timer.cancel()
        if self.session is not None:
            self.session.connection_lost()
            self.session = None

    def _send_text(self, text: str) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(text.encode("utf-8"), isBinary=False)

    def _close(self) -> None:
        if self.state in (self.STATE_CLOSING, self.STATE_CLOSED):
            return
        self.sendClose()
        # Do not wait for a peer that never answers the closing handshake.
        self.hub.clock.callLater(5, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self.transport is not None and self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)


def control_resource(hub: ControlHub, reactor: Any) -> WebSocketResource:
    """The ``/control.ashx`` resource."""
    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = ControlProtocol
    factory.hub = hub  # type: ignore[attr-defined]
    factory.setProtocolOptions(
        maxMessagePayloadSize=hub.max_message, maxFramePayloadSize=hub.max_message,
        autoPingInterval=60, autoPingTimeout=30, openHandshakeTimeout=30,
        closeHandshakeTimeout=5, perMessageCompressionAccept=lambda offers: None)
    return WebSocketResource(factory)
