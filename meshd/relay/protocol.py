"""``/meshrelay.ashx``: the Autobahn adapter of the relay.

The upgrade request is authenticated in ``onConnect`` (a request that identifies no
side is refused with 403 before a WebSocket exists); when the socket opens the side
joins the :class:`~meshd.relay.machine.RelayTable`, which decides everything else.

Back-pressure is Twisted's producer/consumer: each side registers a small producer on
its own transport, so the transport tells the table when its outgoing buffer is full
(``pauseProducing``) and drained (``resumeProducing``); the table then pauses or resumes
*reading* on the other side's transport.  Twisted Web registered its HTTP channel as
that producer while serving the upgrade; it is replaced here.
"""

from __future__ import annotations

from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from meshd.relay.machine import IRelayPeer, SideInfo
from meshd.relay.server import Refused, RelayServer

MAX_MESSAGE = 16 * 1024 * 1024
CLOSE_GRACE = 5.0


def _peer_host(peer: str) -> str:
    """``tcp:127.0.0.1:5555`` / ``tcp6:[::1]:5555`` -> the address."""
    if ":" not in peer:
        return peer
    host = peer.split(":", 1)[1].rsplit(":", 1)[0]
    return host.strip("[]")


@implementer(IPushProducer)
class _OutgoingWatch:
    """Registered on a side's own transport: hears when its write buffer fills and drains."""

    def __init__(self, protocol: "RelayProtocol") -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol.relay.table.send_blocked(self._protocol)

    def resumeProducing(self) -> None:
        self._protocol.relay.table.send_unblocked(self._protocol)

    def stopProducing(self) -> None:
        pass


@implementer(IRelayPeer)
class RelayProtocol(WebSocketServerProtocol):
    """Thin adapter: identity in, frames both ways, flow control on the transports."""

    _log = Logger()
    _info: Optional[SideInfo] = None
    _joined = False
    _closing = False
    _reading_paused = False
    _abort_call: Any = None

    @property
    def relay(self) -> RelayServer:
        relay: RelayServer = self.factory.relay
        return relay

    def onConnect(self, request: ConnectionRequest) -> "Deferred[None]":  # type: ignore[override]
        self._address = _peer_host(request.peer)
        headers = {str(k).lower(): str(v) for k, v in request.headers.items()}
        d: Deferred[Any] = Deferred.fromCoroutine(
            self.relay.identify(headers, request.params or {}, self._address))

        def done(info: SideInfo) -> None:
            self._info = info

        def failed(failure: Any) -> None:
            if failure.check(Refused):
                self._log.info("relay connection from {address} refused: {why}",
                               address=self._address, why=str(failure.value))
            else:
                self._log.failure("relay authentication from {address} failed", failure,
                                  address=self._address)
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN)

        d.addCallbacks(done, failed)
        return d

    def onOpen(self) -> None:
        if self._info is None:
            self.close()
            return
        transport = self.transport
        assert transport is not None
        # The HTTP channel was this transport's producer while the upgrade was served.
        transport.unregisterProducer()
        transport.registerProducer(_OutgoingWatch(self), True)
        self._joined = True
        self.relay.table.join(self, self._info)

    # -- the hot path: Autobahn's versions format debug log arguments on every call ------

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None
                 ) -> None:
        if sync or chopsize or self.send_queue or self.transport is None:
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)
        if self.state == self.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._joined:
            self.relay.table.received(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self._joined:
            self._joined = False
            self.relay.table.lost(self)

    # -- IRelayPeer ----------------------------------------------------------------------

    def send(self, payload: bytes, binary: bool) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload, isBinary=binary)

    def pause_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        # A paused socket would never read the peer's closing handshake.
        self.resume_reading()
        if self.state == self.STATE_OPEN:
            self.sendClose()
        # Do not wait for a peer that never answers the closing handshake.
        if self.state != self.STATE_CLOSED:
            self._abort_call = self.relay.clock.callLater(CLOSE_GRACE, self._abort_if_open)

    def _abort_if_open(self) -> None:
        self._abort_call = None
        if self.transport is not None and self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)

    # -- introspection (tests, /health) --------------------------------------------------

    def buffered_bytes(self) -> int:
        """Bytes written to this side and not yet handed to the kernel."""
        transport: Any = self.transport
        while transport is not None and not hasattr(transport, "dataBuffer") \
                and hasattr(transport, "transport"):
            transport = transport.transport
        if transport is None or not hasattr(transport, "dataBuffer"):
            return 0
        return (len(transport.dataBuffer) - getattr(transport, "offset", 0)
                + getattr(transport, "_tempDataLen", 0))


def relay_factory(relay: RelayServer, reactor: Any, **options: Any) -> WebSocketServerFactory:
    """The WebSocket factory; ``options`` override the protocol options (tests)."""
    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = RelayProtocol
    factory.relay = relay  # type: ignore[attr-defined]
    factory.setProtocolOptions(**{
        "maxMessagePayloadSize": MAX_MESSAGE, "maxFramePayloadSize": MAX_MESSAGE,
        "autoPingInterval": 120, "autoPingTimeout": 60, "openHandshakeTimeout": 30,
        "closeHandshakeTimeout": 5, "perMessageCompressionAccept": lambda offers: None,
        **options})
    return factory


def relay_resource(relay: RelayServer, reactor: Any, **options: Any) -> WebSocketResource:
    """The ``/meshrelay.ashx`` resource (one table for every domain's path)."""
    return WebSocketResource(relay_factory(relay, reactor, **options))
