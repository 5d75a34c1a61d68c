"""The MPS port: Intel AMT CIRA connections over TLS, adapted to the APF state machine.

Who sends what, in order (details in :mod:`meshd.mps.apf` and :mod:`meshd.mps.machine`)::

    device: TLS handshake (a client certificate may be sent; it is not used, see below)
    device: PROTOCOLVERSION, SERVICE_REQUEST auth     server: SERVICE_ACCEPT
    device: USERAUTH_REQUEST user/password            server: (store lookup, async)
                                                      USERAUTH_SUCCESS | FAILURE + DISCONNECT
    device: SERVICE_REQUEST pfwd, tcpip-forward xN    server: SERVICE_ACCEPT, REQUEST_SUCCESS
    device: KEEPALIVE_REQUEST (periodic)              server: KEEPALIVE_REPLY
    server: CHANNEL_OPEN to 16992/16993 (open_channel) ... CHANNEL_DATA both ways

This module only moves bytes: :class:`~meshd.mps.apf.ApfParser` turns them into messages,
:class:`~meshd.mps.machine.ApfMachine` decides, and :class:`MpsServerProtocol` carries out
the actions in order (writes, DISCONNECT + close, presence, channel events) and arms one
timer at the machine's next deadline (login 30 s, idle 90 s, channel answers 60 s), on the
injected clock.

The machine's password check is synchronous, the store is not: when a USERAUTH_REQUEST
arrives the adapter stops reading, asks :class:`~meshd.mps.cira.CiraAuthenticator` (store
lookups, device creation), and then feeds the message to the machine with a check that
returns that verdict.  Messages that arrived meanwhile wait in order (at most 64).

Limits on top of the codec's: pre-login the parser may hold at most 72 KiB of one
incomplete message (the largest legitimate one is a 64 KiB udp-send-to; the codec would
otherwise let a 1 MiB JSON_CONTROL build up before the machine could refuse it), and
CHANNEL_DATA is capped at the 32 KiB window we grant.

Closing: every close the server initiates is preceded by an APF DISCONNECT with a reason
(2 protocol error, 8 version, 11 by application, 15 invalid credentials, 16 timed out,
18 temporarily unavailable); a device's own DISCONNECT is not answered.  If the device
does not read, the socket is aborted 10 s later.

TLS client certificates: the listener asks for one but nothing verifies it (AMT's are not
issued by us), and MeshCentral's certificate login lets anyone pick a group by writing its
id into the subject O.  So a certificate is never an authentication factor here; only the
APF password is (spec 4.1).

A connection whose first byte is ``G`` or ``H`` is a small HTTP request (spec 9): ``GET /``
and ``HEAD /`` get a short page, anything else 404; headers longer than 4 KiB close it.

Several connections claiming one device: the newest login wins and the older connection
is closed (DISCONNECT 11), so presence always names a live socket.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any, Callable, Optional, Union

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshd.events import IEventBus, publish_and_store
from meshd.mps import apf
from meshd.mps.apf import DisconnectReason
from meshd.mps.channels import (
    Channel,
    ChannelError,
    NotConnected,
    closed_by_connection,
    closed_cleanly,
)
from meshd.mps.cira import CiraAuthenticator, MpsStats, domain_of
from meshd.mps.machine import (
    Action,
    ApfMachine,
    Authenticated,
    AuthResult,
    ChannelClosed,
    ChannelData,
    ChannelOpened,
    ChannelOpenFailed,
    ChannelWritable,
    Close,
    Credentials,
    Disconnected,
    ForwardAdded,
    ForwardRemoved,
    KeepAliveOptions,
    MachineConfig,
    Send,
    State,
)
from meshd.presence import CONN_AGENT, CONN_CIRA, Connection, IPresence
from meshd.store.interface import IStore, StoreUnavailable

__all__ = ["MpsServerFactory", "MpsServerProtocol", "http_answer"]

#: Power state MeshCentral shows for a device reachable over CIRA ("present").
POWER_PRESENT = 7
POWER_ON = 1
POWER_OFF = 0

MAX_PREAUTH_BUFFER = 72 * 1024
MAX_INBOX = 64
ABORT_AFTER_CLOSE = 10.0
MAX_HTTP_REQUEST = 4096

_PAGE = (b"<!DOCTYPE html><html><head><title>meshd MPS</title></head>"
         b"<body>Intel&reg; AMT CIRA server</body></html>")

# Close reasons the machine produces, by prefix -> the DISCONNECT reason we send.
_CLOSE_CODES: tuple[tuple[str, int], ...] = (
    ("login refused", DisconnectReason.INVALID_CREDENTIALS),
    ("unsupported APF version", DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED),
    ("protocol violation", DisconnectReason.PROTOCOL_ERROR),
)
_DEVICE_LEFT = "device sent DISCONNECT"


def http_answer(head: bytes) -> bytes:
    """The whole HTTP response to a request head (``GET``/``HEAD``, spec section 9)."""
    line = head.split(b"\r\n", 1)[0].split(b" ")
    method = line[0]
    path = line[1] if len(line) > 1 else b""
    if path == b"/":
        status, body = b"200 OK", _PAGE
        kind = b"text/html"
    else:
        status, body = b"404 Not Found", b"Invalid request"
        kind = b"text/plain"
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind
            + b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
            + (b"" if method == b"HEAD" else body))


class _ParseFailure:
    """Stands in the inbox for the parser error that followed the messages before it."""

    def __init__(self, error: apf.ApfProtocolError) -> None:
        self.error = error


_Inbound = Union[apf.Message, _ParseFailure]


class MpsServerProtocol(Protocol):
    """One TLS connection on the MPS port."""

    _log = Logger()

    def __init__(self, factory: "MpsServerFactory") -> None:
        self._factory = factory
        self._stats = factory.stats
        self._machine: Optional[ApfMachine] = None
        self._parser = apf.ApfParser(apf.Direction.TO_SERVER,
                                     max_channel_data=factory.machine_config.window)
        self._mode: Optional[str] = None  # None until the first byte: "apf" or "http"
        self._http = b""
        self._inbox: deque[_Inbound] = deque()
        self._processing = False
        self._auth_pending = False
        self._reading_paused = False
        self._verdict: Optional[AuthResult] = None
        self._version: tuple[int, int] = (0, 0)
        self._actions: deque[Action] = deque()
        self._performing = False
        self._out: list[bytes] = []
        self._close_code: Optional[int] = None
        self._timer: Any = None
        self._abort_timer: Any = None
        self._closing = False
        self._lost = False
        self._lost_waiters: list[defer.Deferred[None]] = []
        self._channels: dict[int, Channel] = {}
        self.peer = ""
        self.node_id: Optional[str] = None
        self.mesh_id: Optional[str] = None
        self.presence_entry: Optional[Connection] = None

    # -- what others may look at --

    @property
    def state(self) -> State:
        """The APF machine's state (CLOSED before the connection is made)."""
        return self._machine.state if self._machine is not None else State.CLOSED

    @property
    def forwarded_ports(self) -> frozenset[int]:
        """The AMT ports the device forwards."""
        return self._machine.forwarded_ports if self._machine is not None else frozenset()

    def when_lost(self) -> "defer.Deferred[None]":
        """Fires once the transport is gone."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._lost:
            d.callback(None)
        else:
            self._lost_waiters.append(d)
        return d

    # -- Twisted's side --

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        self._stats.connections += 1
        self._stats.connections_total += 1
        self._factory._connection_made(self)
        self._machine = ApfMachine(self._check, self._factory.clock.seconds,
                                   self._factory.machine_config)
        self._schedule()

    def dataReceived(self, data: bytes) -> None:
        if self._machine is None or self._closing or self._lost:
            return
        if self._mode is None and data:
            self._mode = "http" if data[:1] in (b"G", b"H") else "apf"
        if self._mode == "http":
            self._http_received(data)
            return
        try:
            messages = self._parser.feed(data)
            failure: Optional[apf.ApfProtocolError] = None
        except apf.ApfProtocolError as error:
            messages, failure = error.parsed, error
        self._inbox.extend(messages)
        if failure is None and self._machine.state not in (State.AWAITING_PFWD_SERVICE,
                                                           State.READY) \
                and self._parser.buffered > MAX_PREAUTH_BUFFER:
            failure = apf.ApfProtocolError(
                f"{self._parser.buffered} bytes of one message before login")
        if failure is not None:
            self._inbox.append(_ParseFailure(failure))
        elif len(self._inbox) > MAX_INBOX:
            self._inbox.append(_ParseFailure(apf.ApfProtocolError(
                "too many messages while the login is checked")))
        self._process_inbox()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._lost = True
        self._closing = True
        self._cancel_timers()
        self._inbox.clear()
        if self._machine is not None:
            self._perform(self._machine.connection_lost(
                f"connection lost: {reason.getErrorMessage() if reason else ''}"))
            self._stats.connections -= 1
        self._factory._connection_lost(self)
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- input --

    def _process_inbox(self) -> None:
        """Hand queued messages to the machine, in order, unless a login is being checked."""
        if self._processing:
            return
        self._processing = True
        try:
            while self._inbox and not self._auth_pending and not self._closing:
                item = self._inbox.popleft()
                if isinstance(item, _ParseFailure):
                    self._inbox.clear()
                    self._close(f"protocol error: {item.error}",
                                DisconnectReason.PROTOCOL_ERROR)
                    break
                self._handle(item)
        finally:
            self._processing = False
        self._schedule()

    def _handle(self, message: apf.Message) -> None:
        machine = self._machine
        assert machine is not None
        if isinstance(message, apf.ProtocolVersion) and machine.state is State.AWAITING_VERSION:
            self._version = (message.major, message.minor)
        if (isinstance(message, apf.UserAuthRequest)
                and machine.state is State.AWAITING_USERAUTH
                and message.service == apf.PFWD_SERVICE
                and message.method == apf.PASSWORD_METHOD
                and message.password is not None and machine.system_id is not None):
            self._start_login(message, machine.system_id)
            return
        if isinstance(message, apf.UserAuthRequest) and machine.state is State.AWAITING_USERAUTH:
            self._stats.auth_requests += 1
        self._perform(machine.receive(message))

    def _start_login(self, message: apf.UserAuthRequest, system_id: uuid.UUID) -> None:
        """Look the login up asynchronously, then let the machine decide with the verdict."""
        assert self._machine is not None and message.password is not None
        self._stats.auth_requests += 1
        credentials = Credentials(message.username, message.password, system_id,
                                  self._machine.conn_type, *self._version)
        self._auth_pending = True
        d = defer.ensureDeferred(
            self._factory.authenticator.authenticate(credentials, self.peer))
        d.addBoth(self._login_checked, message)
        d.addErrback(lambda failure: self._log.failure(
            "CIRA login from {peer} could not be completed", failure, peer=self.peer))
        if self._auth_pending and not self._lost:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _login_checked(self, result: Union[AuthResult, Failure],
                       message: apf.UserAuthRequest) -> None:
        self._auth_pending = False
        if self._reading_paused:
            self._reading_paused = False
            if not self._lost:
                self.transport.resumeProducing()
        if self._machine is None or self._closing:
            return
        if isinstance(result, Failure):
            self._stats.auth_errors += 1
            if result.check(StoreUnavailable):
                self._log.warn("CIRA login from {peer} not checked: {problem}",
                               peer=self.peer, problem=result.getErrorMessage())
            else:
                self._log.failure("CIRA login check from {peer} failed", result,
                                  peer=self.peer)
            self._close("the login could not be checked now",
                        DisconnectReason.TEMPORARILY_UNAVAILABLE)
            return
        if not result.ok:
            self._log.info("CIRA login from {peer} refused: {reason}", peer=self.peer,
                           reason=result.reason)
        self._verdict = result
        try:
            self._perform(self._machine.receive(message))
        finally:
            self._verdict = None
        self._process_inbox()

    def _check(self, credentials: Credentials) -> AuthResult:
        """The machine's synchronous check: the verdict looked up just before."""
        if self._verdict is None:
            return AuthResult.reject("login was not checked")
        return self._verdict

    # -- output: carrying out the machine's actions --

    def _perform(self, actions: list[Action], code: Optional[int] = None) -> None:
        """Carry out actions in order; actions caused by them (a channel callback that
        writes) are queued behind, so bytes leave in the order the machine made them."""
        for action in actions:
            self._actions.append(action)
            if code is not None and isinstance(action, Close):
                self._close_code = code
        if self._performing:
            return
        self._performing = True
        try:
            while self._actions:
                action = self._actions.popleft()
                try:
                    self._do(action)
                except Exception:
                    self._log.failure("MPS action {action} failed", action=type(action).__name__)
            self._flush()
        finally:
            self._performing = False
        self._schedule()

    def _do(self, action: Action) -> None:
        handler = self._ACTIONS.get(type(action))
        if handler is not None:
            handler(self, action)

    def _on_send(self, action: Send) -> None:
        """Write one message (batched until the end of the action list)."""
        if self._closing:
            return
        if isinstance(action.message, apf.UserAuthFailure):
            self._stats.auth_failures += 1
        self._out.append(action.message.encode())

    def _on_close(self, action: Close) -> None:
        """DISCONNECT with a reason (not after the device's own), then close."""
        code, self._close_code = self._close_code, None
        if code is None:
            code = next((c for prefix, c in _CLOSE_CODES if action.reason.startswith(prefix)),
                        DisconnectReason.BY_APPLICATION)
        if (self._mode != "http" and not action.reason.startswith(_DEVICE_LEFT)
                and not self._closing):
            self._out.append(apf.Disconnect(int(code)).encode())
        if action.reason.startswith(_DEVICE_LEFT):
            self._stats.disconnects += 1
        if code in (DisconnectReason.PROTOCOL_ERROR,
                    DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED):
            self._stats.protocol_errors += 1
            self._log.info("MPS connection from {peer} closed: {reason}", peer=self.peer,
                           reason=action.reason)
        else:
            self._log.debug("MPS connection from {peer} closed: {reason}", peer=self.peer,
                            reason=action.reason)
        self._flush()
        self._closing = True
        self._inbox.clear()
        if not self._lost:
            self.transport.loseConnection()
            self._abort_timer = self._factory.clock.callLater(ABORT_AFTER_CLOSE, self._abort)

    def _on_authenticated(self, action: Authenticated) -> None:
        self._stats.auth_successes += 1
        self.node_id = action.result.node_id
        self.mesh_id = action.result.mesh_id
        self._log.info("CIRA device {node_id} ({name}) connected from {peer}",
                       node_id=self.node_id, name=action.result.name, peer=self.peer)
        self._factory._register(self, action)

    def _on_disconnected(self, action: Disconnected) -> None:
        self._log.info("CIRA device {node_id} disconnected: {reason}",
                       node_id=action.node_id, reason=action.reason)
        self._factory._unregister(self, action)

    def _on_forward(self, action: Union[ForwardAdded, ForwardRemoved]) -> None:
        self._log.debug("CIRA device {node_id} {what} port {port}", node_id=self.node_id,
                        what="forwards" if isinstance(action, ForwardAdded) else "cancels",
                        port=action.port)

    def _on_keepalive_options(self, action: KeepAliveOptions) -> None:
        self._log.debug("CIRA device {node_id} keep-alive interval {interval} s",
                        node_id=self.node_id, interval=action.interval)

    def _on_channel_opened(self, action: ChannelOpened) -> None:
        channel = self._channels.get(action.channel_id)
        self._stats.channels_confirmed += 1
        if channel is not None:
            channel._opened_with(action.window)

    def _on_channel_open_failed(self, action: ChannelOpenFailed) -> None:
        channel = self._channels.pop(action.channel_id, None)
        self._stats.channels_failed += 1
        self._stats.channels_open -= 1
        if channel is not None:
            channel._open_failed(action.reason, action.description)

    def _on_channel_data(self, action: ChannelData) -> None:
        channel = self._channels.get(action.channel_id)
        if channel is not None:
            channel._received(action.data)

    def _on_channel_writable(self, action: ChannelWritable) -> None:
        channel = self._channels.get(action.channel_id)
        if channel is not None:
            channel._writable()

    def _on_channel_closed(self, action: ChannelClosed) -> None:
        channel = self._channels.pop(action.channel_id, None)
        self._stats.channels_closed += 1
        self._stats.channels_open -= 1
        if channel is not None:
            channel._ended_by(closed_by_connection() if self._closing else closed_cleanly())

    _ACTIONS: dict[type, Callable[["MpsServerProtocol", Any], None]] = {
        Send: _on_send,
        Close: _on_close,
        Authenticated: _on_authenticated,
        Disconnected: _on_disconnected,
        ForwardAdded: _on_forward,
        ForwardRemoved: _on_forward,
        KeepAliveOptions: _on_keepalive_options,
        ChannelOpened: _on_channel_opened,
        ChannelOpenFailed: _on_channel_open_failed,
        ChannelData: _on_channel_data,
        ChannelWritable: _on_channel_writable,
        ChannelClosed: _on_channel_closed,
    }

    def _flush(self) -> None:
        if self._out:
            out, self._out = self._out, []
            if not self._lost:
                self.transport.writeSequence(out)

    def _close(self, reason: str, code: int) -> None:
        """Close from our side with DISCONNECT ``code``."""
        if self._machine is None:
            return
        actions = self._machine.close(reason)
        if actions:
            self._perform(actions, code)
        elif not self._closing and not self._lost:
            self._closing = True
            self.transport.loseConnection()

    def evict(self, reason: str = "replaced by a newer connection") -> None:
        """Close this connection (another one took over the device, or shutdown)."""
        self._close(reason, DisconnectReason.BY_APPLICATION)

    def _abort(self) -> None:
        self._abort_timer = None
        if not self._lost:
            self.transport.abortConnection()

    # -- timers --

    def _schedule(self) -> None:
        """Arm the timer for the machine's next deadline (only ever moved earlier; a
        timer that fires early re-arms itself)."""
        if self._machine is None or self._lost:
            return
        deadline = self._machine.next_deadline()
        if deadline is None:
            self._cancel_timer()
            return
        timer = self._timer
        if timer is not None and timer.active() and timer.getTime() <= deadline:
            return
        self._cancel_timer()
        clock = self._factory.clock
        self._timer = clock.callLater(max(0.0, deadline - clock.seconds()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._machine is None:
            return
        actions = self._machine.check_timeouts()
        if any(isinstance(a, Close) for a in actions):
            self._stats.timeouts += 1
            self._log.info("MPS connection from {peer} timed out ({node_id})", peer=self.peer,
                           node_id=self.node_id)
        self._perform(actions, DisconnectReason.CONNECTION_TIMED_OUT)
        self._schedule()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _cancel_timers(self) -> None:
        self._cancel_timer()
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._abort_timer = None

    # -- HTTP on the MPS port (spec 9) --

    def _http_received(self, data: bytes) -> None:
        self._http += data
        if not (self._http.startswith(b"GET ") or self._http.startswith(b"HEAD ")
                or b"GET ".startswith(self._http) or b"HEAD ".startswith(self._http)):
            self._close("not HTTP and not APF", DisconnectReason.PROTOCOL_ERROR)
            return
        end = self._http.find(b"\r\n\r\n")
        if end >= 0:
            self._stats.http_requests += 1
            self.transport.write(http_answer(self._http[:end]))
            self._close("HTTP request answered", DisconnectReason.BY_APPLICATION)
        elif len(self._http) > MAX_HTTP_REQUEST:
            self._close("HTTP request head too long", DisconnectReason.PROTOCOL_ERROR)

    # -- channels (ChannelHost) --

    def open_channel(self, port: int, connected_address: str = "") -> "defer.Deferred[Channel]":
        """CHANNEL_OPEN to AMT ``port``; fires with the :class:`Channel` once confirmed."""
        machine = self._machine
        if machine is None or self._closing or self.node_id is None:
            return defer.fail(NotConnected("the device is not connected"))
        try:
            channel_id, actions = machine.open_channel(port,
                                                       connected_address=connected_address)
        except ChannelError as error:
            self._stats.channels_refused += 1
            return defer.fail(error)
        channel = Channel(self, channel_id, self.node_id, port)
        self._channels[channel_id] = channel
        self._stats.channels_opened += 1
        self._stats.channels_open += 1
        opened = channel._opened
        self._perform(actions)
        return opened

    def channel_send(self, channel_id: int, data: bytes) -> int:
        assert self._machine is not None
        self._perform(self._machine.send_data(channel_id, data))
        return self._machine.pending_bytes(channel_id)

    def channel_close(self, channel_id: int, abort: bool) -> None:
        if self._machine is not None:
            self._perform(self._machine.close_channel(channel_id, abort=abort))

    def channel_consume(self, channel_id: int, nbytes: int) -> None:
        if self._machine is not None:
            self._perform(self._machine.consume(channel_id, nbytes))


class MpsServerFactory(Factory):
    """Builds :class:`MpsServerProtocol`; holds the device table, channels API and stats.

    ``clock`` (an ``IReactorTime``) times the machines and timers; ``now`` gives wall-clock
    seconds for events and presence (default ``clock.seconds``).  ``mps_pass`` is
    MeshCentral's optional ``settings.mpsPass``; ``max_devices`` caps the devices of a
    domain that CIRA logins may create.
    """

    protocol = MpsServerProtocol  # type: ignore[assignment]
    noisy = False
    _log = Logger()

    def __init__(self, store: IStore, presence: IPresence, bus: IEventBus,
                 clock: IReactorTime, *, server_id: str, mps_pass: Optional[str] = None,
                 max_devices: Optional[int] = None,
                 now: Optional[Callable[[], float]] = None,
                 machine_config: Optional[MachineConfig] = None) -> None:
        self.store = store
        self.presence = presence
        self.bus = bus
        self.clock = clock
        self.server_id = server_id
        self.now = now if now is not None else clock.seconds
        # Bytes from the device are acknowledged only once delivered (see channels.py).
        self.machine_config = machine_config or MachineConfig(auto_window_adjust=False)
        self.stats = MpsStats()
        self.authenticator = CiraAuthenticator(store, bus, self.stats, now=self.now,
                                               mps_pass=mps_pass, max_devices=max_devices)
        self._connections: set[MpsServerProtocol] = set()
        self._devices: dict[str, MpsServerProtocol] = {}

    def buildProtocol(self, addr: Any) -> MpsServerProtocol:
        return MpsServerProtocol(self)

    # -- the API other code uses --

    def stats_dict(self) -> dict[str, int]:
        """The counters for ``/health`` (see :class:`~meshd.mps.cira.MpsStats`)."""
        return self.stats.as_dict()

    @property
    def connections(self) -> frozenset[MpsServerProtocol]:
        """Every open connection (logged in or not)."""
        return frozenset(self._connections)

    def device(self, node_id: str) -> Optional[MpsServerProtocol]:
        """The logged-in connection of a device on this server, if any."""
        return self._devices.get(node_id)

    def devices(self) -> list[str]:
        """Node ids of the devices connected to this server."""
        return sorted(self._devices)

    def open_channel(self, node_id: str, port: int, *,
                     connected_address: str = "") -> "defer.Deferred[Channel]":
        """Open a channel to AMT ``port`` of a connected device.

        Fails with :class:`~meshd.mps.channels.NotConnected` if the device has no CIRA
        connection here, with :class:`~meshd.mps.machine.ChannelError` if it does not
        forward ``port`` (or has 16 channels open), and with
        :class:`~meshd.mps.channels.ChannelOpenError` if the device refuses.
        """
        protocol = self._devices.get(node_id)
        if protocol is None:
            self.stats.channels_refused += 1
            return defer.fail(NotConnected(f"{node_id} has no CIRA connection here"))
        return protocol.open_channel(port, connected_address)

    def close_all(self) -> None:
        """Close every connection (shutdown)."""
        for protocol in list(self._connections):
            protocol.evict("server shutting down")

    def stopFactory(self) -> None:
        self.close_all()

    # -- called by the protocols --

    def _connection_made(self, protocol: MpsServerProtocol) -> None:
        self._connections.add(protocol)

    def _connection_lost(self, protocol: MpsServerProtocol) -> None:
        self._connections.discard(protocol)

    def _register(self, protocol: MpsServerProtocol, action: Authenticated) -> None:
        node_id = action.result.node_id
        mesh_id = action.result.mesh_id
        self.stats.devices += 1
        old = self._devices.get(node_id)
        self._devices[node_id] = protocol
        entry = Connection(node_id, CONN_CIRA, self.server_id, self.now(),
                           address=protocol.peer, handle=protocol)
        protocol.presence_entry = entry
        previous = self.presence.add(entry)
        if old is not None and old is not protocol:
            self.stats.replaced += 1
            self._log.info("CIRA device {node_id}: new connection from {peer} replaces the "
                           "one from {old_peer}", node_id=node_id, peer=protocol.peer,
                           old_peer=old.peer)
            old.evict()
        elif previous is not None and previous.server_id != self.server_id:
            self._log.info("CIRA device {node_id} also connected to server {other}",
                           node_id=node_id, other=previous.server_id)
        self._publish_connect(node_id, mesh_id)

    def _unregister(self, protocol: MpsServerProtocol, action: Disconnected) -> None:
        self.stats.devices -= 1
        if self._devices.get(action.node_id) is protocol:
            del self._devices[action.node_id]
        entry = protocol.presence_entry
        protocol.presence_entry = None
        if entry is not None and self.presence.remove(entry):
            self._publish_connect(action.node_id, action.mesh_id)

    def _publish_connect(self, node_id: str, mesh_id: str) -> None:
        """``nodeconnect`` (nolog) with the device's connectivity bits and power state."""
        conn = self.presence.state(node_id)
        if conn & CONN_CIRA:
            power = POWER_PRESENT
        elif conn & CONN_AGENT:
            power = POWER_ON
        else:
            power = POWER_OFF
        event = {"action": "nodeconnect", "meshid": mesh_id, "nodeid": node_id,
                 "domain": domain_of(node_id), "conn": conn, "pwr": power,
                 "ct": int(self.now() * 1000), "nolog": 1}
        try:
            publish_and_store(self.bus, self.store, ["*", mesh_id, node_id], event, self.now)
        except Exception:
            self._log.failure("nodeconnect event for {node_id} failed", node_id=node_id)
