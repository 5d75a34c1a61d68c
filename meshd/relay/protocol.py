"""``/meshrelay.ashx``: the Autobahn adapter of the relay.

The upgrade request is authenticated in ``onConnect`` (a request that identifies no
side is refused with 403 before a WebSocket exists); when the socket opens the side
joins the :class:`~meshd.relay.machine.RelayTable`, which decides everything else.

Back-pressure is Twisted's producer/consumer: each side registers a small producer on
its own transport, so the transport tells the table when its outgoing buffer is full
(``pauseProducing``) and drained (``resumeProducing``); the table then pauses or resumes
*reading* on the other side's transport.  Twisted Web registered its HTTP channel as
that producer while serving the upgrade; it is replaced here.

The data path: until a side is paired, Autobahn parses its frames (whole messages go to
the table, which keeps early ones).  Once paired, at the next boundary between two
messages, the side's bytes go to a :class:`~meshd.relay.frames.FrameForwarder` instead:
each binary frame is unmasked into the server frame the partner gets and written to the
partner's transport as it is (no reassembly, no re-framing); the table's byte count and
the recording are kept up to date here.  Text frames, pings, pongs and closes are handed
to Autobahn whole, which validates, answers and closes exactly as before; anything odd
is handed to Autobahn for good, which fails the connection.  Frames reach the partner's
transport whole, so Autobahn's own frames to the partner (pings, close) never land in
the middle of one.
"""

from __future__ import annotations

from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from meshd.relay.frames import Forward, Frame, FrameForwarder, Handoff, Violation
from meshd.relay.machine import IRelayPeer, SideInfo
from meshd.relay.server import Refused, RelayServer

MAX_MESSAGE = 16 * 1024 * 1024
CLOSE_GRACE = 5.0
# The TCP connection under a relay side (TLS or not): bytes read per ``recv``, and the
# outgoing buffer above which the partner's reading is paused (Twisted uses one number
# for both; its default, 64 KiB, is smaller than one 64 KiB frame with its headers, so
# every frame paused and resumed the partner's socket).  Memory per direction stays
# bounded by about twice this plus one frame.
SOCKET_BUFFER = 256 * 1024
SEND_LIMIT = 512 * 1024  # bytes handed to one ``send``


def _peer_host(peer: str) -> str:
    """``tcp:127.0.0.1:5555`` / ``tcp6:[::1]:5555`` -> the address."""
    if ":" not in peer:
        return peer
    host = peer.split(":", 1)[1].rsplit(":", 1)[0]
    return host.strip("[]")


def _size_socket_buffers(transport: Any) -> None:
    """Set :data:`SOCKET_BUFFER` and :data:`SEND_LIMIT` on the TCP transport under
    ``transport`` (through the TLS layer if there is one)."""
    inner = transport
    for _ in range(4):
        if inner is None or isinstance(inner, FileDescriptor):
            break
        inner = getattr(inner, "transport", None)
    if isinstance(inner, FileDescriptor):
        inner.bufferSize = SOCKET_BUFFER
        inner.SEND_LIMIT = SEND_LIMIT  # type: ignore[misc]


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
    _forwarder: Optional[FrameForwarder] = None
    _forwarding_over = False  # Autobahn took the connection back for good
    _relay_side: Any = None  # the table's Side of this protocol while forwarding
    _recorded_parts: Optional[list[bytes]] = None

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
        _size_socket_buffers(transport)
        self._joined = True
        self.relay.table.join(self, self._info)

    # -- the hot path: Autobahn's versions format debug log arguments on every call ------

    def dataReceived(self, data: bytes) -> None:
        if self._forwarder is None:
            side = self._paired_side()
            if side is None:
                self._dataReceived(data)
                return
            rest = self._rest_of_message()
            if rest is None or rest >= len(data):
                self._dataReceived(data)
                return
            if rest:  # Autobahn finishes the message it is in, the forwarder takes the rest
                self._dataReceived(data[:rest])
                data = data[rest:]
                if self._paired_side() is None or self._rest_of_message() != 0:
                    self._dataReceived(data)
                    return
            # The limits Autobahn applies to this connection (set from the factory).
            limits: Any = self
            self._forwarder = FrameForwarder(limits.maxFramePayloadSize or MAX_MESSAGE,
                                             limits.maxMessagePayloadSize or MAX_MESSAGE)
            self._relay_side = side
            leftover, self.data = self.data, b""  # the start of the next frame's header
            data = bytes(leftover) + data
        self._forward(data)

    def _paired_side(self) -> Any:
        """The table's Side of this protocol if it may forward frames now: open, paired,
        and the partner is a relay protocol too."""
        if not self._joined or self._forwarding_over or self.state != self.STATE_OPEN:
            return None
        side = self.relay.table.side_of(self)
        if side is None or side.partner is None or side.gone \
                or not isinstance(side.partner.peer, RelayProtocol):
            return None
        return side

    def _rest_of_message(self) -> Optional[int]:
        """Bytes Autobahn needs to finish the frame it is in when that frame ends a
        message (0 between messages); None inside a message of several frames."""
        frame = self.current_frame
        if frame is None:
            return None if self.inside_message else 0
        if not frame.fin or (frame.opcode > 7 and self.inside_message):
            return None
        return int(frame.length - self.current_frame_masker.pointer())

    def _forward(self, data: bytes) -> None:
        forwarder, side = self._forwarder, self._relay_side
        assert forwarder is not None
        for event in forwarder.feed(data):
            if self.state == self.STATE_CLOSED:
                return
            if type(event) is Forward:
                partner = side.partner
                if partner is None or side.gone or self.state != self.STATE_OPEN:
                    continue  # the pair is gone or closing (as the table drops such frames)
                side.received_bytes += len(event.frame) - event.start
                relay = side.relay
                if relay is not None and relay.recording is not None:
                    self._record(relay, event)
                partner.peer.forward_frame(event.frame)
                if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                    self._cancelAutoPingTimeoutCall()  # as Autobahn does on data frames
            elif type(event) is Frame:
                self._dataReceived(event.data)
            elif type(event) is Handoff:
                self._forwarder, self._forwarding_over = None, True
                self._dataReceived(event.data)
            elif type(event) is Violation:
                self._forwarder, self._forwarding_over = None, True
                self._fail_connection(event.code, event.reason)

    def _record(self, relay: Any, event: Forward) -> None:
        """The recording gets whole messages, as the table gives it."""
        if not event.fin:
            self._recorded_parts = (self._recorded_parts or []) + [event.payload]
            return
        payload = event.payload
        if self._recorded_parts:
            payload, self._recorded_parts = b"".join(self._recorded_parts + [payload]), None
        relay.recording.frame(payload, True, from_user=self._relay_side is relay.user_side)

    def forward_frame(self, frame: bytes) -> None:
        """A whole server frame from the partner's forwarder."""
        if self.state == self.STATE_OPEN and self.transport is not None:
            self.transport.write(frame)

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
