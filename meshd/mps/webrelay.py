"""``/[domain/]webrelay.ashx``: a browser's WebSocket to an Intel AMT port over CIRA.

The web app's WSMAN and redirection (SOL/KVM/IDER) code runs in the browser and speaks
HTTP or the AMT redirection protocol itself; the server only carries bytes between the
WebSocket and an APF channel of the device's CIRA connection (spec mps-apf.md 7)::

    browser: GET /webrelay.ashx?host=<nodeid>&p=1|2[&tls=0|1][&tls1only=1]   (Upgrade)
    server:  authenticate (xid session cookie, ?auth= cookie, ?user=&pass=, x-meshauth),
             load the device, check REMOTECONTROL on it     -> 101, else 401/403, nothing opened
    server:  CHANNEL_OPEN to the port (below); the WebSocket is not read meanwhile
             [port 16993/16995: TLS client handshake inside the channel]
    both:    binary messages <-> channel bytes, paced both ways
    either:  WebSocket close  -> channel closed (after what was queued is sent)
             channel closed   -> WebSocket closed 1000

``host`` is MeshCentral's name for the device id (its web app sends it); ``nodeid`` is
accepted as well.  ``p=1`` is WSMAN: port 16992 when the device forwards it, else 16993;
``p=2`` is redirection: 16994, else 16995.  ``tls`` is accepted and, as in MeshCentral,
does not choose the port: inside the CIRA tunnel the plain port is preferred, and the TLS
port is used (with TLS inside the channel) only when the plain one is not forwarded.

TLS inside the channel: a client with TLS 1.0-1.2 (``tls1only=1``: TLS 1.0 only, for the
oldest firmware), forward-secret ECDHE suites first and then the RSA key-exchange AES
suites old AMT firmware needs (MeshCentral offers only the latter), ``@SECLEVEL=0`` so
OpenSSL 3 still speaks TLS 1.0, legacy renegotiation allowed, and no certificate check:
AMT's certificate is self-signed and the channel already runs inside the authenticated
CIRA TLS connection.

Refusals after the upgrade are WebSocket closes with a code the web app can show:
4001 the device has no CIRA connection here, 4002 the device does not forward a port for
this protocol (or has no channel free), 4003 the device refused the channel, 4004 the TLS
handshake with the device failed or took longer than 30 s, 4009 the browser sent more
than 1 MiB that the device did not take, 4011 an internal error (Autobahn lets a server
close only with 1000 or 3000-4999).  Exception text never goes to the client.

Back-pressure: the WebSocket's transport is the producer for the channel (the channel
pauses it while the device's window is closed) and the channel is the producer for the
WebSocket's transport (paused while the browser reads slowly, which closes the device's
window).  One browser message is at most 256 KiB.

Events: ``relaylog`` "Started relay session" (msgid 13) when the channel is ready and
"Ended relay session" (msgid 9, with the duration) when it ends, protocol 100 (WSMAN) or
101 (redirection).  MeshCentral logs only redirection sessions because the web app opens
a WSMAN socket per request burst; here WSMAN sessions are published too but ``nolog``
(live sessions see them, the audit trail does not fill up).

Recording: when the domain's ``sessionRecording`` is on and lists protocol 100 (WSMAN) or
101 (redirection), or lists none, the session is written to a ``.mcrec`` file by the
relay's recorder (:mod:`meshd.relay.recorder`: same folder, file names, index records in
the store and quotas as ``/meshrelay.ashx``).  The file is opened when the channel is
ready (for TLS inside the channel: when the handshake is done); its metadata is
MeshCentral's for these sessions (``protocol`` 100/101 as a number, ``intelamt: true``,
``devicename``, the browser's address then the device's).  Every message is written before
it is passed on: browser bytes with flags 3 (binary, user side), device bytes with flags
1, the bytes inside the channel's TLS when there is one.  A recorded redirection session
first gets the one-byte message ``0xF0`` that MeshCentral's redirection client takes as
"the server is recording".  Where MeshCentral does worse: it writes these records without
the binary flag, so its own player cannot replay an AMT redirection recording, and over
TLS ports it records only the browser's side.  A file that cannot be opened leaves the
session unrecorded, with a log line.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol as TypingProtocol

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd.control.auth import Authenticator
from meshd.control.rights import MESHRIGHT_REMOTECONTROL, Access
from meshd.events import IEventBus, publish_and_store
from meshd.mps.channels import Channel, ChannelError, ChannelOpenError, NotConnected
from meshd.relay.recorder import Recorder, RecordingFile
from meshd.store.interface import Document, IStore

__all__ = [
    "Admission",
    "Refused",
    "RelaySession",
    "WebRelay",
    "amt_tls_creator",
    "choose_port",
    "webrelay_resource",
]

PROTOCOL_WSMAN = 1
PROTOCOL_REDIRECTION = 2
#: Recording / event protocol numbers (MeshCentral's): WSMAN and redirection.
EVENT_PROTOCOL = {PROTOCOL_WSMAN: 100, PROTOCOL_REDIRECTION: 101}
_BASE_PORT = {PROTOCOL_WSMAN: 16992, PROTOCOL_REDIRECTION: 16994}

MAX_MESSAGE = 256 * 1024
MAX_PENDING = 1024 * 1024
TLS_HANDSHAKE_SECONDS = 30.0

CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 4009
CLOSE_INTERNAL = 4011
CLOSE_NOT_CONNECTED = 4001
CLOSE_NO_PORT = 4002
CLOSE_REFUSED = 4003
CLOSE_TLS = 4004

#: Sent to the browser first in a recorded redirection session (MeshCentral's
#: amt-redir-ws client reads it as "the server is recording").
RECORDING_NOTICE = b"\xf0"

# OpenSSL option bits pyOpenSSL does not name (values from OpenSSL's ssl.h).
_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION = getattr(
    SSL, "OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION", 0x00040000)
_OP_LEGACY_SERVER_CONNECT = getattr(SSL, "OP_LEGACY_SERVER_CONNECT", 0x00000004)

_AMT_CIPHERS = ("ECDHE+AESGCM:ECDHE+AES:RSA+AESGCM:RSA+AES:!aNULL:!MD5:!DSS:@SECLEVEL=0")


class Refused(Exception):
    """The upgrade is refused with HTTP ``code`` (nothing was opened)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Admission:
    """A user allowed to reach a device, and how."""

    user: Document
    node: Document
    mesh: Optional[Document]
    protocol: int  # PROTOCOL_WSMAN or PROTOCOL_REDIRECTION
    tls1_only: bool
    peer: str

    @property
    def node_id(self) -> str:
        return str(self.node["_id"])


def choose_port(protocol: int, forwarded: frozenset[int]) -> Optional[tuple[int, bool]]:
    """(AMT port, TLS inside the channel) for ``protocol``; None if neither is forwarded."""
    base = _BASE_PORT[protocol]
    if base in forwarded:
        return base, False
    if base + 1 in forwarded:
        return base + 1, True
    return None


@implementer(IOpenSSLClientConnectionCreator)
class _AmtTlsCreator:
    """TLS client connections for AMT's own TLS ports (see the module docstring)."""

    def __init__(self, tls1_only: bool) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_VERSION if tls1_only else SSL.TLS1_2_VERSION)
        ctx.set_cipher_list(_AMT_CIPHERS.encode("ascii"))
        ctx.set_options(SSL.OP_NO_COMPRESSION | _OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION
                        | _OP_LEGACY_SERVER_CONNECT)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *args: True)
        self._context = ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection


def amt_tls_creator(tls1_only: bool = False) -> _AmtTlsCreator:
    """The TLS client settings used inside a channel to 16993/16995."""
    return _AmtTlsCreator(tls1_only)


def _param(params: dict[str, list[str]], *names: str) -> Optional[str]:
    for name in names:
        values = params.get(name)
        if values:
            return values[0]
    return None


def _domain_of(doc_id: str) -> Optional[str]:
    parts = doc_id.split("/")
    return parts[1] if len(parts) == 3 and parts[2] else None


class WebRelay:
    """What every relay of one domain shares: who may connect, channels, events."""

    _log = Logger()

    def __init__(self, *, store: IStore, mps: Any, bus: IEventBus, authenticator: Authenticator,
                 clock: Any, domain: str = "", now: Optional[Callable[[], float]] = None,
                 random: Callable[[int], bytes] = os.urandom,
                 recorder: Optional[Recorder] = None) -> None:
        self.store = store
        self.mps = mps
        self.bus = bus
        self.auth = authenticator
        self.clock = clock
        self.domain = domain
        self.now = now if now is not None else clock.seconds
        self.random = random
        self.recorder = recorder  # the domain's sessionRecording, None when off
        self.sessions: set[RelaySession] = set()

    async def admit(self, headers: dict[str, str], params: dict[str, list[str]],
                    peer: str) -> Admission:
        """Who is asking, for which device; raises :class:`Refused` (nothing opened)."""
        protocol_text = _param(params, "p") or "1"
        if protocol_text not in ("1", "2"):
            raise Refused(400, "unknown protocol")
        node_text = _param(params, "host", "nodeid")
        if not node_text or len(node_text) > 1024:
            raise Refused(400, "no device")
        if headers.get("x-meshauth", "").strip() == "*":
            raise Refused(401, "not authenticated")  # no inner authentication on relays
        result = await self.auth.upgrade(headers, params, peer)
        user = result.user
        if user is None or _domain_of(str(user.get("_id", ""))) != self.domain:
            raise Refused(401, "not authenticated")
        node_id = node_text if "/" in node_text else f"node/{self.domain}/{node_text}"
        # An unknown device and a device without rights are refused alike.
        denied = Refused(403, "no access to this device")
        if not node_id.startswith("node/") or _domain_of(node_id) != self.domain:
            raise denied
        node = await self.store.get(node_id)
        if node is None or node.get("type") != "node" or not isinstance(
                node.get("intelamt"), dict):
            raise denied
        mesh_id = node.get("meshid")
        mesh = await self.store.get(mesh_id) if isinstance(mesh_id, str) else None
        if mesh is not None and mesh.get("type") != "mesh":
            mesh = None
        access = await Access.load(self.store, user)
        if not access.node_rights(node, mesh) & MESHRIGHT_REMOTECONTROL:
            self._log.info("web relay to {node_id} refused to {user_id}: no remote control "
                           "right", node_id=node_id, user_id=user["_id"])
            raise denied
        return Admission(user, node, mesh, int(protocol_text),
                         _param(params, "tls1only", "tlsv1only") == "1", peer)

    def session_id(self) -> str:
        text = base64.b64encode(self.random(9)).decode("ascii")
        return text.replace("+", "@").replace("/", "$")

    def open_channel(self, admission: Admission) -> "defer.Deferred[tuple[Channel, bool]]":
        """Open the channel for an admitted relay: fires with (channel, TLS inside)."""
        connection = self.mps.device(admission.node_id)
        if connection is None:
            return defer.fail(NotConnected("no CIRA connection"))
        chosen = choose_port(admission.protocol, connection.forwarded_ports)
        if chosen is None:
            return defer.fail(ChannelError("no port forwarded for this protocol"))
        port, tls = chosen
        d: defer.Deferred[Channel] = self.mps.open_channel(admission.node_id, port)
        return d.addCallback(lambda channel: (channel, tls))

    def remote_address(self, admission: Admission) -> str:
        connection = self.mps.device(admission.node_id)
        return str(getattr(connection, "peer", "")) if connection is not None else ""

    # -- recording --

    def start_recording(self, session: "RelaySession") -> Optional[RecordingFile]:
        """Open the session's recording if the domain records its protocol, else None."""
        admission = session.admission
        protocol = EVENT_PROTOCOL[admission.protocol]
        user_id = str(admission.user["_id"])
        if self.recorder is None or not self.recorder.wants(protocol, user_id,
                                                              admission.node_id):
            return None
        name = admission.node.get("name")
        recording = self.recorder.open(
            relay_id=session.id, protocol=protocol, user_id=user_id,
            user_name=admission.user.get("name"), node_id=admission.node_id,
            addresses=(admission.peer, session.remote),
            device_name=name if isinstance(name, str) and name else None,
            extra={"protocol": protocol, "intelamt": True})
        if recording is not None:
            self._log.info("web relay {session_id} recorded to {path}", session_id=session.id,
                           path=recording.path)
        return recording

    def finish_recording(self, session: "RelaySession", recording: RecordingFile,
                         started: float) -> None:
        """Close, index and apply the quotas (the relay's recorder does all three)."""
        assert self.recorder is not None
        admission = session.admission
        self.recorder.finished(recording, relay_id=session.id,
                               protocol=EVENT_PROTOCOL[admission.protocol],
                               user_id=str(admission.user["_id"]), node_id=admission.node_id,
                               started=started)

    # -- events --

    def started(self, session: "RelaySession") -> None:
        self.sessions.add(session)
        admission = session.admission
        self._log.info("web relay {session_id} started: {user_id} from {peer} to {node_id} "
                       "port {port}", session_id=session.id, user_id=admission.user["_id"],
                       peer=admission.peer, node_id=admission.node_id, port=session.port)
        message = (f'Started relay session "{session.id}" from {admission.peer} to '
                   f"{session.remote}")
        self._publish(session, ["*", admission.user["_id"]], 13,
                      [session.id, admission.peer, session.remote], message)

    def ended(self, session: "RelaySession", seconds: int) -> None:
        self.sessions.discard(session)
        admission = session.admission
        self._log.info("web relay {session_id} ended after {seconds} s ({node_id})",
                       session_id=session.id, seconds=seconds, node_id=admission.node_id)
        message = (f'Ended relay session "{session.id}" from {admission.peer} to '
                   f"{session.remote}, {seconds} second(s)")
        self._publish(session, ["*", admission.user["_id"], admission.node_id,
                                str(admission.node.get("meshid", ""))], 9,
                      [session.id, admission.peer, session.remote, seconds], message)

    def _publish(self, session: "RelaySession", targets: list[str], msgid: int,
                 args: list[Any], message: str) -> None:
        admission = session.admission
        event: dict[str, Any] = {
            "etype": "relay", "action": "relaylog", "domain": self.domain,
            "userid": admission.user["_id"], "username": admission.user.get("name"),
            "msgid": msgid, "msgArgs": args, "msg": message,
            "protocol": EVENT_PROTOCOL[admission.protocol], "nodeid": admission.node_id}
        if admission.protocol == PROTOCOL_WSMAN:
            event["nolog"] = 1
        try:
            d = publish_and_store(self.bus, self.store, [t for t in targets if t], event,
                                  self.now)
        except Exception:
            self._log.failure("relaylog event failed")
            return
        if d is not None:
            d.addErrback(lambda failure: self._log.failure("relaylog event not stored",
                                                           failure))


class WebSocketSide(TypingProtocol):
    """What a :class:`RelaySession` needs from its WebSocket (the Autobahn adapter)."""

    def send_binary(self, data: bytes) -> None:
        """Send one binary message."""

    def close(self, code: int, reason: str) -> None:
        """Close the WebSocket (close frame with ``code``)."""

    def pause_reading(self) -> None:
        """Stop reading from the browser."""

    def resume_reading(self) -> None:
        """Read from the browser again."""

    def producer(self) -> IPushProducer:
        """The browser's reading side, to be paced by the channel."""

    def register_producer(self, producer: IPushProducer) -> None:
        """Pace ``producer`` by the browser's reading speed (the WebSocket's buffer)."""

    def unregister_producer(self) -> None:
        """Stop pacing."""


@implementer(IPushProducer)
class _Pacer:
    """An ``IPushProducer`` made of three callables."""

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None],
                 stop: Callable[[], None]) -> None:
        self.pauseProducing = pause
        self.resumeProducing = resume
        self.stopProducing = stop


@implementer(IHandshakeListener)
class _Downstream(Protocol):
    """Receives the device's bytes (from the channel, or from TLS inside it)."""

    def __init__(self, session: "RelaySession") -> None:
        self._session = session

    def handshakeCompleted(self) -> None:  # noqa: N802
        self._session._tls_ready()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._session._from_device(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        self._session._device_gone(reason)


class RelaySession:
    """One browser WebSocket and one channel; see the module docstring for the rules."""

    _log = Logger()

    def __init__(self, relay: WebRelay, admission: Admission, side: WebSocketSide) -> None:
        self.relay = relay
        self.admission = admission
        self.side = side
        self.id = relay.session_id()
        self.port: Optional[int] = None
        self.remote = ""
        self.channel: Optional[Channel] = None
        self._upstream: Any = None  # where browser bytes go: the channel or the TLS layer
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._ready = False
        self._ended = False
        self._started_at: Optional[float] = None
        self._tls_timer: Any = None
        self.recording: Optional[RecordingFile] = None
        self._recording_checked = False

    # -- the WebSocket's side --

    def start(self) -> None:
        """The WebSocket is open: hold the browser's bytes and open the channel."""
        self.side.pause_reading()
        d = self.relay.open_channel(self.admission)
        d.addCallbacks(self._channel_opened, self._channel_failed)
        d.addErrback(self._internal_error)

    def message(self, data: bytes) -> None:
        """A message from the browser."""
        if self._ended:
            return
        if not self._ready:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > MAX_PENDING:
                self._end(CLOSE_TOO_BIG, "too much data before the device answered")
            return
        self._write(data)

    def websocket_closed(self) -> None:
        """The browser's WebSocket is gone: close the channel after its queue is sent."""
        if not self._ended:
            self._end(None, "")

    # -- the channel's side --

    def _channel_opened(self, result: tuple[Channel, bool]) -> None:
        channel, tls = result
        self.channel = channel
        self.port = channel.port
        self.remote = self.relay.remote_address(self.admission)
        if self._ended:
            channel.loseConnection()
            return
        downstream = _Downstream(self)
        if not tls:
            self._upstream = channel
            self._start_recording()  # before attach: it delivers bytes the device sent
            channel.attach(downstream)
            if not self._ended:
                self._become_ready()
            return
        factory = TLSMemoryBIOFactory(amt_tls_creator(self.admission.tls1_only), True,
                                      Factory.forProtocol(lambda: downstream))
        tls_protocol = factory.buildProtocol(channel.getPeer())  # type: ignore[arg-type]
        self._upstream = tls_protocol
        self._tls_timer = self.relay.clock.callLater(TLS_HANDSHAKE_SECONDS, self._tls_timeout)
        channel.attach(tls_protocol)

    def _channel_failed(self, failure: Failure) -> None:
        if failure.check(NotConnected):
            code, reason = CLOSE_NOT_CONNECTED, "the device is not connected over CIRA"
        elif failure.check(ChannelOpenError):
            code, reason = CLOSE_REFUSED, "the device refused the connection"
        elif failure.check(ChannelError):
            code, reason = CLOSE_NO_PORT, "the device does not offer this service now"
        else:
            self._log.failure("web relay {session_id} channel to {node_id} failed", failure,
                              session_id=self.id, node_id=self.admission.node_id)
            code, reason = CLOSE_INTERNAL, "internal error"
        self._log.info("web relay {session_id} to {node_id} not opened: {reason}",
                       session_id=self.id, node_id=self.admission.node_id, reason=reason)
        self._end(code, reason)

    def _internal_error(self, failure: Failure) -> None:
        self._log.failure("web relay {session_id} failed", failure, session_id=self.id)
        self._end(CLOSE_INTERNAL, "internal error")

    def _tls_ready(self) -> None:
        self._cancel_tls_timer()
        if not self._ended and not self._ready:
            self._become_ready()

    def _tls_timeout(self) -> None:
        self._tls_timer = None
        if not self._ready and not self._ended:
            self._end(CLOSE_TLS, "TLS with the device failed")

    def _cancel_tls_timer(self) -> None:
        if self._tls_timer is not None and self._tls_timer.active():
            self._tls_timer.cancel()
        self._tls_timer = None

    def _become_ready(self) -> None:
        assert self.channel is not None and self._upstream is not None
        self._ready = True
        self._started_at = self.relay.clock.seconds()
        if not self._recording_checked:
            self._start_recording()
        self.relay.started(self)
        pending, self._pending, self._pending_size = self._pending, [], 0
        for data in pending:
            if self._ended:
                return
            self._write(data)
        if self._ended:
            return
        channel = self.channel
        # Device -> browser: the WebSocket's buffer paces the channel.  Browser -> device:
        # the channel's window paces the WebSocket's reading.
        self.side.register_producer(_Pacer(channel.pauseProducing, channel.resumeProducing,
                                           self.websocket_closed))
        self.side.resume_reading()
        reading = self.side.producer()
        self._upstream.registerProducer(_Pacer(reading.pauseProducing,
                                               reading.resumeProducing, lambda: None), True)

    def _write(self, data: bytes) -> None:
        if self.recording is not None:
            self.recording.frame(data, True, from_user=True)
        try:
            self._upstream.write(data)
        except ChannelError:
            # Only when the browser ignored the pause: more than 1 MiB queued.
            self._end(CLOSE_TOO_BIG, "the device is not reading")

    def _from_device(self, data: bytes) -> None:
        if not self._ended:
            if self.recording is not None:
                self.recording.frame(data, True, from_user=False)
            self.side.send_binary(data)

    def _start_recording(self) -> None:
        self._recording_checked = True
        try:
            self.recording = self.relay.start_recording(self)
        except Exception:
            self._log.failure("web relay {session_id}: recording not started",
                              session_id=self.id)
            self.recording = None
        if self.recording is not None and self.admission.protocol == PROTOCOL_REDIRECTION:
            self.side.send_binary(RECORDING_NOTICE)

    def _finish_recording(self) -> None:
        recording, self.recording = self.recording, None
        if recording is None:
            return
        try:
            self.relay.finish_recording(self, recording, self._started_at
                                        if self._started_at is not None
                                        else self.relay.clock.seconds())
        except Exception:
            self._log.failure("web relay {session_id}: finishing the recording failed",
                              session_id=self.id)

    def _device_gone(self, reason: Optional[Failure]) -> None:
        if self._ended:
            return
        if self._ready:
            self._end(CLOSE_NORMAL, "the device closed the connection")
        else:
            self._end(CLOSE_TLS, "TLS with the device failed")

    # -- the end, once --

    def _end(self, code: Optional[int], reason: str) -> None:
        """Close both ends; ``code`` None: the WebSocket is already gone."""
        if self._ended:
            return
        self._ended = True
        self._cancel_tls_timer()
        self._pending = []
        try:
            self.side.unregister_producer()
        except Exception:
            self._log.failure("web relay {session_id}: unregister failed", session_id=self.id)
        if self._upstream is not None and self._upstream is not self.channel:
            # TLS inside the channel: send close_notify, but do not wait for the device's.
            self._upstream.unregisterProducer()
            self._upstream.loseConnection()
        if self.channel is not None:
            self.channel.unregisterProducer()
            self.channel.loseConnection()
        if code is not None:
            if not self._ready:
                self.side.resume_reading()  # to read the browser's closing handshake
            self.side.close(code, reason)
        self._finish_recording()
        if self._started_at is not None:
            self.relay.ended(self, int(self.relay.clock.seconds() - self._started_at))


def _peer_host(peer: str) -> str:
    """``tcp:127.0.0.1:5555`` / ``tcp6:[::1]:5555`` -> the address."""
    if ":" not in peer:
        return peer
    return peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]")


class WebRelayProtocol(WebSocketServerProtocol):
    """Thin Autobahn adapter: admission in ``onConnect``, then a :class:`RelaySession`."""

    _log = Logger()
    session: Optional[RelaySession] = None
    _admission: Optional[Admission] = None

    @property
    def relay(self) -> WebRelay:
        relay: WebRelay = self.factory.relay
        return relay

    def onConnect(self, request: ConnectionRequest) -> "defer.Deferred[None]":  # type: ignore[override]  # noqa: N802
        peer = _peer_host(request.peer)
        headers = {str(k).lower(): str(v) for k, v in request.headers.items()}
        d = defer.Deferred.fromCoroutine(self.relay.admit(headers, request.params or {}, peer))

        def admitted(admission: Admission) -> None:
            self._admission = admission

        def refused(failure: Failure) -> None:
            refusal = failure.value
            if isinstance(refusal, Refused):
                self._log.debug("web relay from {peer} refused: {reason}", peer=peer,
                                reason=refusal.reason)
                raise ConnectionDeny(refusal.code, refusal.reason)
            self._log.failure("web relay admission from {peer} failed", failure, peer=peer)
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "try again later")

        return d.addCallbacks(admitted, refused)

    def onOpen(self) -> None:  # noqa: N802
        assert self._admission is not None
        self.session = RelaySession(self.relay, self._admission, self)
        self.session.start()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        if self.session is not None:
            # Text frames carry binary strings from old web apps: passed on as bytes.
            self.session.message(payload)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:  # noqa: N802, N803
        if self.session is not None:
            self.session.websocket_closed()
            self.session = None

    # WebSocketSide

    @property
    def _stream(self) -> Any:
        """The TCP or TLS transport (a consumer and producer, which ITransport omits)."""
        return self.transport

    def send_binary(self, data: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(data, isBinary=True)

    def close(self, code: int, reason: str) -> None:
        if self.state in (self.STATE_CLOSING, self.STATE_CLOSED):
            return
        self.sendClose(code, reason)
        self.relay.clock.callLater(5, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self.transport is not None and self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)

    def pause_reading(self) -> None:
        if self.transport is not None:
            self._stream.pauseProducing()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self._stream.resumeProducing()

    def producer(self) -> IPushProducer:
        return self._stream  # type: ignore[no-any-return]

    def register_producer(self, producer: IPushProducer) -> None:
        if self.transport is None:
            return
        # twisted.web's HTTP channel registered itself on this transport before the
        # upgrade and is done with it now.
        self._stream.unregisterProducer()
        self._stream.registerProducer(producer, True)

    def unregister_producer(self) -> None:
        if self.transport is not None and self.state != self.STATE_CLOSED:
            self._stream.unregisterProducer()


def webrelay_resource(*, store: IStore, mps: Any, bus: IEventBus,
                      authenticator: Authenticator, clock: Any, domain: str = "",
                      recorder: Optional[Recorder] = None) -> WebSocketResource:
    """The ``/[domain/]webrelay.ashx`` resource (``mps``: the MpsServerFactory;
    ``authenticator``: the control channel's, so logins follow the same rules;
    ``recorder``: the domain's session recorder, shared with ``/meshrelay.ashx``)."""
    relay = WebRelay(store=store, mps=mps, bus=bus, authenticator=authenticator, clock=clock,
                     domain=domain, recorder=recorder)
    factory = WebSocketServerFactory(reactor=clock)
    factory.protocol = WebRelayProtocol
    factory.relay = relay  # type: ignore[attr-defined]
    factory.setProtocolOptions(
        maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE,
        autoPingInterval=60, autoPingTimeout=30, openHandshakeTimeout=30,
        closeHandshakeTimeout=5, perMessageCompressionAccept=lambda offers: None)
    return WebSocketResource(factory)
