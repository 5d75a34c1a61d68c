"""The per-connection APF state machine of the MPS, sans-IO.

One :class:`ApfMachine` serves one device connection, whatever carries it (TLS on the MPS
port, plain TCP behind a TLS offloader, or the ``apf.ashx`` WebSocket).  The adapter feeds
it the messages :class:`meshd.mps.apf.ApfParser` decodes and carries out the
:data:`Action` objects it returns, in order: ``Send`` (write the message), ``Close``
(drop the connection after writing what came before), and notifications for the layers
above (``Authenticated``, ``Disconnected``, ``ForwardAdded``, ``ChannelData`` ...).  Time
comes from the injected ``clock``; the adapter calls :meth:`ApfMachine.check_timeouts` at
:meth:`ApfMachine.next_deadline`.  On an :class:`~meshd.mps.apf.ApfProtocolError` from the
parser, or when the transport goes away, it calls :meth:`ApfMachine.close` or
:meth:`ApfMachine.connection_lost` so every table above is cleaned up.

Order enforced (MeshCentral accepts anything in any order; see ``specs/mps-apf.md`` 2.1)::

    AWAITING_VERSION       D: [JSON_CONTROL connType/meiState]  PROTOCOLVERSION 1.x
    AWAITING_AUTH_SERVICE  D: SERVICE_REQUEST auth@amt.intel.com  -> S: SERVICE_ACCEPT
    AWAITING_USERAUTH      D: USERAUTH_REQUEST user, pfwd@amt.intel.com, password, pw
                             -> password check -> S: USERAUTH_SUCCESS (+ Authenticated)
                                               or S: USERAUTH_FAILURE, Close (one attempt)
    AWAITING_PFWD_SERVICE  D: SERVICE_REQUEST pfwd@amt.intel.com  -> S: SERVICE_ACCEPT
    READY                  D: GLOBAL_REQUEST tcpip-forward / cancel-tcpip-forward
                             -> S: REQUEST_SUCCESS [port] (always answered, as AMT expects)
                             port 5900 (AMT's last forward) -> S: KEEPALIVE_OPTIONS_REQUEST 30 0
                           D: KEEPALIVE_REQUEST c -> S: KEEPALIVE_REPLY c
                           S: CHANNEL_OPEN (open_channel) -> D: CONFIRMATION | OPEN_FAILURE
                           both: CHANNEL_DATA, CHANNEL_WINDOW_ADJUST, CHANNEL_CLOSE
                           D: CHANNEL_OPEN -> S: CHANNEL_OPEN_FAILURE 3 (always refused)
    any state              D: DISCONNECT -> Close (MeshCentral leaves the socket open)

Any message out of order, a second PROTOCOLVERSION or USERAUTH_REQUEST, an unknown
channel id, data beyond the window we granted, a window overflowing 2**32-1 or a
malformed JSON_CONTROL closes the connection: nothing a peer sends before logging in can
do more than that.

Defects of MeshCentral fixed here (spec section 11): the password is always handed to the
injected check together with the system UUID, and USERAUTH_REQUEST is only accepted after
PROTOCOLVERSION (no identity-less login); one login attempt per connection; exactly one
``Authenticated`` and, after it, exactly one ``Disconnected`` per connection whatever
ends it, so nothing stale is left in a connection table; DISCONNECT closes; bad JSON
closes instead of wedging; channels only open to ports the device forwarded
(configurable); CHANNEL_DATA is held to the granted window.

Limits (:class:`MachineConfig`): 16 forwards, 16 live channels, 1 MiB queued per channel
towards the device, 64 KiB JSON_CONTROL before login, 30 s to log in, 90 s without a
message, 60 s for the device to answer a CHANNEL_OPEN or CHANNEL_CLOSE.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Union

from meshd.mps import apf

__all__ = [
    "Action",
    "ApfMachine",
    "AuthResult",
    "Authenticated",
    "ChannelClosed",
    "ChannelData",
    "ChannelError",
    "ChannelOpenFailed",
    "ChannelOpened",
    "ChannelState",
    "ChannelWritable",
    "Close",
    "ConnType",
    "ControlReceived",
    "Credentials",
    "Disconnected",
    "ForwardAdded",
    "ForwardRemoved",
    "KeepAliveOptions",
    "MachineConfig",
    "PasswordCheck",
    "Send",
    "State",
]


class State(enum.Enum):
    """Where a connection is in the login sequence."""

    AWAITING_VERSION = "awaiting PROTOCOLVERSION"
    AWAITING_AUTH_SERVICE = "awaiting the auth service request"
    AWAITING_USERAUTH = "awaiting USERAUTH_REQUEST"
    AWAITING_PFWD_SERVICE = "authenticated, awaiting the pfwd service request"
    READY = "authenticated, forwarding"
    CLOSED = "closed"


_AUTHENTICATED = frozenset({State.AWAITING_PFWD_SERVICE, State.READY})


class ConnType(enum.IntEnum):
    """MeshCentral's connection types (JSON_CONTROL ``connType``)."""

    CIRA = 0
    RELAY = 1
    LMS = 2


class ChannelState(enum.Enum):
    """A server-opened channel's life: OPENING -> OPEN -> CLOSING -> forgotten."""

    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


# --- the password check ----------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What a device presents at login; ``password`` never appears in ``repr``."""

    username: str
    password: bytes = field(repr=False)
    system_id: uuid.UUID
    conn_type: ConnType
    major: int
    minor: int


@dataclass(frozen=True)
class AuthResult:
    """The check's verdict.  When ``ok``, the device group and node it binds to.

    ``reason`` is for the log; ``console`` is shown to non-CIRA peers (MeshAgent) as
    MeshCentral's ``console`` JSON message, and never sent to real AMT.
    """

    ok: bool
    node_id: str = ""
    mesh_id: str = ""
    name: str = ""
    reason: str = ""
    console: str = ""

    def __post_init__(self) -> None:
        if self.ok and not (self.node_id and self.mesh_id):
            raise ValueError("a successful AuthResult names its node and device group")

    @classmethod
    def accept(cls, node_id: str, mesh_id: str, name: str = "") -> "AuthResult":
        """The device may log in as ``node_id`` in group ``mesh_id``."""
        return cls(True, node_id, mesh_id, name)

    @classmethod
    def reject(cls, reason: str,
               console: str = "Invalid login username/password") -> "AuthResult":
        """The device may not log in; ``reason`` is logged."""
        return cls(False, reason=reason, console=console)


class PasswordCheck(Protocol):
    """Synchronous verdict on a login; raising counts as a refusal."""

    def __call__(self, credentials: Credentials) -> AuthResult: ...


# --- actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Write ``message`` to the device."""

    message: apf.Message


@dataclass(frozen=True)
class Close:
    """Drop the connection (after writing every earlier ``Send``); ``reason`` is for the log."""

    reason: str
    error: Optional[BaseException] = None


@dataclass(frozen=True)
class Authenticated:
    """The device logged in: register the connection under ``result.node_id``."""

    result: AuthResult
    username: str
    system_id: uuid.UUID
    conn_type: ConnType
    major: int
    minor: int
    mei_state: Any = None


@dataclass(frozen=True)
class Disconnected:
    """The authenticated connection ended: unregister it (emitted once, after ``Authenticated``)."""

    node_id: str
    mesh_id: str
    reason: str


@dataclass(frozen=True)
class ForwardAdded:
    """The device forwarded ``port`` (it can now be reached through a channel)."""

    port: int


@dataclass(frozen=True)
class ForwardRemoved:
    """The device cancelled the forward of ``port``."""

    port: int


@dataclass(frozen=True)
class KeepAliveOptions:
    """The device answered KEEPALIVE_OPTIONS_REQUEST."""

    interval: int
    timeout: int


@dataclass(frozen=True)
class ControlReceived:
    """A JSON_CONTROL from an LMS peer after login (``meiState``, ``deactivate`` ...)."""

    action: str
    message: dict[str, Any]


@dataclass(frozen=True)
class ChannelOpened:
    """The device confirmed channel ``channel_id``; it accepts ``window`` bytes for now."""

    channel_id: int
    window: int


@dataclass(frozen=True)
class ChannelOpenFailed:
    """Channel ``channel_id`` will never open (refused, or the connection ended first)."""

    channel_id: int
    reason: int
    description: str = ""


@dataclass(frozen=True)
class ChannelData:
    """Bytes from the device on channel ``channel_id``."""

    channel_id: int
    data: bytes


@dataclass(frozen=True)
class ChannelWritable:
    """Everything queued on ``channel_id`` has been sent; the writer may resume."""

    channel_id: int


@dataclass(frozen=True)
class ChannelClosed:
    """Channel ``channel_id`` is gone (the last event about it)."""

    channel_id: int


Action = Union[Send, Close, Authenticated, Disconnected, ForwardAdded, ForwardRemoved,
               KeepAliveOptions, ControlReceived, ChannelOpened, ChannelOpenFailed,
               ChannelData, ChannelWritable, ChannelClosed]


class ChannelError(Exception):
    """A local caller misused the channel API (not ready, too many channels, buffer full)."""


# --- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class MachineConfig:
    """Per-connection limits and timings (seconds for durations, bytes for sizes)."""

    window: int = 32768
    keepalive_interval: int = 30
    keepalive_timeout: int = 0
    keepalive_trigger_port: int = 5900
    auth_timeout: float = 30.0
    idle_timeout: float = 90.0
    channel_timeout: float = 60.0
    max_forwards: int = 16
    max_channels: int = 16
    max_pending: int = 1024 * 1024
    max_send_chunk: int = 32768
    max_preauth_json: int = 65536
    first_channel_id: int = 4
    conn_types: frozenset[ConnType] = frozenset({ConnType.CIRA})
    require_forwarded_port: bool = True
    auto_window_adjust: bool = True

    def __post_init__(self) -> None:
        for name in ("window", "max_send_chunk"):
            if not 1 <= getattr(self, name) <= apf.U32_MAX:
                raise ValueError(f"{name} must be in 1..{apf.U32_MAX}")
        for name in ("max_forwards", "max_channels", "max_pending", "max_preauth_json"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("auth_timeout", "idle_timeout", "channel_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.first_channel_id <= apf.U32_MAX:
            raise ValueError("first_channel_id must be a u32")
        if ConnType.CIRA not in self.conn_types:
            raise ValueError("conn_types must include CIRA, the type every connection starts as")


# --- the machine -----------------------------------------------------------------------


@dataclass
class _Channel:
    """Bookkeeping for one server-opened channel (mutable, private)."""

    local_id: int
    port: int
    state: ChannelState
    deadline: Optional[float]
    remote_id: int = 0
    send_credit: int = 0
    recv_window: int = 0
    unconsumed: int = 0
    to_adjust: int = 0
    pending: bytearray = field(default_factory=bytearray)
    blocked: bool = False
    close_requested: bool = False


_Handler = Callable[["ApfMachine", Any], list[Action]]

_CONTROL_ACTIONS = frozenset({"meiState", "deactivate", "startTlsHostConfig",
                              "stopConfiguration"})


class ApfMachine:
    """One APF connection: ``receive(message) -> list[Action]`` plus a local channel API."""

    def __init__(self, check: PasswordCheck, clock: Callable[[], float],
                 config: MachineConfig = MachineConfig()) -> None:
        self._check = check
        self._clock = clock
        self._config = config
        self._state = State.AWAITING_VERSION
        now = clock()
        self._auth_deadline: Optional[float] = now + config.auth_timeout
        self._last_activity = now
        self._conn_type = ConnType.CIRA
        self._conn_type_set = False
        self._mei_state: Any = None
        self._system_id: Optional[uuid.UUID] = None
        self._version = (0, 0)
        self._result: Optional[AuthResult] = None
        self._forwards: set[int] = set()
        self._channels: dict[int, _Channel] = {}
        self._next_channel_id = config.first_channel_id

    # -- what the layers above may look at --

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def result(self) -> Optional[AuthResult]:
        """The successful login's result, once authenticated."""
        return self._result

    @property
    def system_id(self) -> Optional[uuid.UUID]:
        """The device's SMBIOS UUID from PROTOCOLVERSION."""
        return self._system_id

    @property
    def conn_type(self) -> ConnType:
        """CIRA unless the peer asked for another allowed type before PROTOCOLVERSION."""
        return self._conn_type

    @property
    def forwarded_ports(self) -> frozenset[int]:
        """The ports the device currently forwards."""
        return frozenset(self._forwards)

    def channel_state(self, channel_id: int) -> Optional[ChannelState]:
        """The state of a live channel, or None if there is no such channel."""
        channel = self._channels.get(channel_id)
        return None if channel is None else channel.state

    def pending_bytes(self, channel_id: int) -> int:
        """Bytes queued on the channel, waiting for the device's window."""
        channel = self._channels.get(channel_id)
        return 0 if channel is None else len(channel.pending)

    # -- input --

    def receive(self, message: apf.Message) -> list[Action]:
        """React to one message from the device."""
        if self._state is State.CLOSED:
            return []
        handler = self._HANDLERS.get(type(message))
        if handler is None:
            return self._violation(f"{type(message).__name__} is not sent by devices")
        self._last_activity = self._clock()
        return handler(self, message)

    def check_timeouts(self) -> list[Action]:
        """Close the connection if a deadline has passed (call at ``next_deadline()``)."""
        if self._state is State.CLOSED:
            return []
        now = self._clock()
        if self._auth_deadline is not None and now >= self._auth_deadline:
            return self._terminate("login not completed in time")
        if now >= self._last_activity + self._config.idle_timeout:
            return self._terminate("idle timeout")
        for channel in self._channels.values():
            if channel.deadline is not None and now >= channel.deadline:
                return self._terminate(
                    f"device did not answer the {channel.state.value} of channel "
                    f"{channel.local_id}")
        return []

    def next_deadline(self) -> Optional[float]:
        """When ``check_timeouts`` should next be called; None once closed."""
        if self._state is State.CLOSED:
            return None
        deadlines = [self._last_activity + self._config.idle_timeout]
        if self._auth_deadline is not None:
            deadlines.append(self._auth_deadline)
        deadlines.extend(c.deadline for c in self._channels.values() if c.deadline is not None)
        return min(deadlines)

    def close(self, reason: str, error: Optional[BaseException] = None) -> list[Action]:
        """Close from our side (parser error, eviction, shutdown)."""
        if self._state is State.CLOSED:
            return []
        return self._terminate(reason, error=error)

    def connection_lost(self, reason: str = "connection lost") -> list[Action]:
        """The transport is gone: clean up, without a ``Close``."""
        if self._state is State.CLOSED:
            return []
        return self._terminate(reason, transport_open=False)

    # -- the local channel API --

    def open_channel(self, port: int, *, connected_address: str = "",
                     originator_address: str = "1.2.3.4",
                     originator_port: Optional[int] = None,
                     channel_type: str = "forwarded-tcpip") -> tuple[int, list[Action]]:
        """Open a channel to AMT ``port``; returns the channel id and the actions.

        Data may be queued with :meth:`send_data` at once; it is sent after the device
        confirms.  Exactly one of ``ChannelOpenFailed`` or ``ChannelClosed`` ends it.
        """
        if self._state is not State.READY:
            raise ChannelError(f"cannot open a channel while {self._state.value}")
        if len(self._channels) >= self._config.max_channels:
            raise ChannelError(f"already {len(self._channels)} channels on this connection")
        if self._config.require_forwarded_port and port not in self._forwards:
            raise ChannelError(f"the device does not forward port {port}")
        channel_id = self._allocate_channel_id()
        if originator_port is None:
            originator_port = 1024 + channel_id % 30000
        message = apf.ChannelOpen(channel_type, channel_id, self._config.window,
                                  connected_address, port, originator_address,
                                  originator_port)
        self._channels[channel_id] = _Channel(
            channel_id, port, ChannelState.OPENING,
            deadline=self._clock() + self._config.channel_timeout,
            recv_window=self._config.window)
        return channel_id, [Send(message)]

    def send_data(self, channel_id: int, data: bytes) -> list[Action]:
        """Send ``data`` on the channel as the device's window allows; queue the rest.

        If ``pending_bytes`` is non-zero afterwards, wait for ``ChannelWritable``.
        """
        channel = self._live_channel(channel_id)
        if channel.close_requested or channel.state is ChannelState.CLOSING:
            raise ChannelError(f"channel {channel_id} is closing")
        if len(channel.pending) + len(data) > self._config.max_pending:
            raise ChannelError(f"channel {channel_id} send queue is full")
        channel.pending += data
        if channel.state is ChannelState.OPENING:
            channel.blocked = channel.blocked or bool(data)
            return []
        actions = self._flush(channel)
        if channel.pending:
            channel.blocked = True
        return actions

    def close_channel(self, channel_id: int, *, abort: bool = False) -> list[Action]:
        """Close the channel once its queue is sent (``abort`` drops the queue).

        Closing a channel that is already gone does nothing.
        """
        channel = self._channels.get(channel_id)
        if channel is None or self._state is State.CLOSED:
            return []
        if abort:
            channel.pending.clear()
        channel.close_requested = True
        if channel.state is ChannelState.OPEN and not channel.pending:
            return [self._send_close(channel)]
        return []

    def consume(self, channel_id: int, nbytes: int) -> list[Action]:
        """(``auto_window_adjust=False``) The layer above has used ``nbytes`` of received
        data; reopen the window when half of it has been used."""
        channel = self._channels.get(channel_id)
        if channel is None or self._state is State.CLOSED:
            return []
        if not 0 <= nbytes <= channel.unconsumed:
            raise ValueError(f"only {channel.unconsumed} bytes are unconsumed")
        return self._consume(channel, nbytes)

    def send_control(self, value: dict[str, Any]) -> list[Action]:
        """A JSON_CONTROL to a non-CIRA peer; real AMT never gets one."""
        if self._state is State.CLOSED or self._conn_type is ConnType.CIRA:
            return []
        return [Send(apf.JsonControl.from_value(value))]

    # -- handlers: one per message class, see _HANDLERS --

    def _on_protocol_version(self, message: apf.ProtocolVersion) -> list[Action]:
        """``u8 192 | u32 major | u32 minor | u32 trigger | 16 B UUID | 64 B``: first, once,
        major version 1."""
        if self._state is not State.AWAITING_VERSION:
            return self._violation("PROTOCOLVERSION out of order")
        if message.major != 1:
            return self._terminate(f"unsupported APF version {message.major}.{message.minor}")
        self._system_id = message.system_id
        self._version = (message.major, message.minor)
        self._state = State.AWAITING_AUTH_SERVICE
        return []

    def _on_service_request(self, message: apf.ServiceRequest) -> list[Action]:
        """``u8 5 | str service``: auth@amt.intel.com before login, pfwd@amt.intel.com after."""
        if self._state is State.AWAITING_AUTH_SERVICE and message.service == apf.AUTH_SERVICE:
            self._state = State.AWAITING_USERAUTH
        elif (self._state is State.AWAITING_PFWD_SERVICE
              and message.service == apf.PFWD_SERVICE):
            self._state = State.READY
        else:
            return self._violation(f"service request {message.service[:64]!r} "
                                   f"while {self._state.value}")
        return [Send(apf.ServiceAccept(message.service))]

    def _on_userauth_request(self, message: apf.UserAuthRequest) -> list[Action]:
        """``u8 50 | str user | str service | str method | u8 0 | str password``: one attempt."""
        if self._state is not State.AWAITING_USERAUTH:
            return self._violation(f"USERAUTH_REQUEST while {self._state.value}")
        if message.service != apf.PFWD_SERVICE:
            return self._refuse(f"login for service {message.service[:64]!r}")
        if message.method != apf.PASSWORD_METHOD or message.password is None:
            return self._refuse(f"login method {message.method!r}")
        assert self._system_id is not None  # set by PROTOCOLVERSION, which came first
        credentials = Credentials(message.username, message.password, self._system_id,
                                  self._conn_type, *self._version)
        try:
            result = self._check(credentials)
        except Exception as error:
            return self._refuse("the password check failed", error=error)
        if not isinstance(result, AuthResult) or not result.ok:
            reason = result.reason if isinstance(result, AuthResult) else "bad check result"
            console = result.console if isinstance(result, AuthResult) else ""
            return self._refuse(reason or "refused", console=console)
        self._result = result
        self._auth_deadline = None
        self._state = State.AWAITING_PFWD_SERVICE
        return [Send(apf.UserAuthSuccess()),
                Authenticated(result, message.username, self._system_id, self._conn_type,
                              self._version[0], self._version[1], self._mei_state)]

    def _on_tcpip_forward(self, message: apf.TcpipForward) -> list[Action]:
        """``u8 80 | "tcpip-forward" | u8 want-reply | str address | u32 port``: always answered."""
        if self._state is not State.READY:
            return self._violation(f"tcpip-forward while {self._state.value}")
        port = message.port
        if port > 0xFFFF or (port not in self._forwards
                             and len(self._forwards) >= self._config.max_forwards):
            return [Send(apf.RequestFailure())]
        actions: list[Action] = [Send(apf.RequestSuccess(port))]
        if port not in self._forwards:
            self._forwards.add(port)
            actions.append(ForwardAdded(port))
        if port == self._config.keepalive_trigger_port:
            actions.append(Send(apf.KeepAliveOptionsRequest(
                self._config.keepalive_interval, self._config.keepalive_timeout)))
        return actions

    def _on_cancel_tcpip_forward(self, message: apf.CancelTcpipForward) -> list[Action]:
        """``u8 80 | "cancel-tcpip-forward" | u8 want-reply | str address | u32 port``."""
        if self._state is not State.READY:
            return self._violation(f"cancel-tcpip-forward while {self._state.value}")
        if message.port not in self._forwards:
            return [Send(apf.RequestFailure())]
        self._forwards.discard(message.port)
        return [Send(apf.RequestSuccess()), ForwardRemoved(message.port)]

    def _on_udp_send_to(self, message: apf.UdpSendTo) -> list[Action]:
        """``u8 80 | "udp-send-to@amt.intel.com" | u8 want-reply | ...``: not served."""
        if self._state is not State.READY:
            return self._violation(f"udp-send-to while {self._state.value}")
        return [Send(apf.RequestFailure())] if message.want_reply else []

    def _on_channel_open(self, message: apf.ChannelOpen) -> list[Action]:
        """``u8 90 | str type | u32 sender | u32 window | ...``: device-opened, always refused."""
        if self._state is not State.READY:
            return self._violation(f"CHANNEL_OPEN while {self._state.value}")
        return [Send(apf.ChannelOpenFailure(message.sender_channel,
                                            apf.OpenFailureReason.UNKNOWN_CHANNEL_TYPE))]

    def _on_channel_open_confirmation(
            self, message: apf.ChannelOpenConfirmation) -> list[Action]:
        """``u8 91 | u32 recipient (ours) | u32 sender (theirs) | u32 window | u32 reserved``."""
        channel = self._peer_channel(message.recipient_channel, ChannelState.OPENING)
        if channel is None:
            return self._violation(f"confirmation for channel {message.recipient_channel}, "
                                   "which is not opening")
        if any(c.remote_id == message.sender_channel and c.state is not ChannelState.OPENING
               for c in self._channels.values()):
            return self._violation(f"device channel id {message.sender_channel} reused")
        channel.remote_id = message.sender_channel
        channel.send_credit = message.initial_window
        channel.state = ChannelState.OPEN
        channel.deadline = None
        if channel.close_requested and not channel.pending:
            return [self._send_close(channel)]
        actions: list[Action] = [ChannelOpened(channel.local_id, message.initial_window)]
        return actions + self._flush(channel)

    def _on_channel_open_failure(self, message: apf.ChannelOpenFailure) -> list[Action]:
        """``u8 92 | u32 recipient (ours) | u32 reason | str description | str language``."""
        channel = self._peer_channel(message.recipient_channel, ChannelState.OPENING)
        if channel is None:
            return self._violation(f"open failure for channel {message.recipient_channel}, "
                                   "which is not opening")
        del self._channels[channel.local_id]
        return [ChannelOpenFailed(channel.local_id, message.reason, message.description)]

    def _on_channel_window_adjust(self, message: apf.ChannelWindowAdjust) -> list[Action]:
        """``u8 93 | u32 recipient (ours) | u32 bytes-to-add``: more credit to send."""
        channel = self._peer_channel(message.recipient_channel,
                                     ChannelState.OPEN, ChannelState.CLOSING)
        if channel is None:
            return self._violation(f"window adjust for unknown channel "
                                   f"{message.recipient_channel}")
        if channel.state is ChannelState.CLOSING:
            return []
        channel.send_credit += message.bytes_to_add
        if channel.send_credit > apf.U32_MAX:
            return self._violation(f"window of channel {channel.local_id} overflows")
        return self._flush(channel)

    def _on_channel_data(self, message: apf.ChannelData) -> list[Action]:
        """``u8 94 | u32 recipient (ours) | u32 length | data``: at most the window we granted."""
        channel = self._peer_channel(message.recipient_channel,
                                     ChannelState.OPEN, ChannelState.CLOSING)
        if channel is None:
            return self._violation(f"data for unknown channel {message.recipient_channel}")
        size = len(message.data)
        if size > channel.recv_window:
            return self._violation(f"{size} bytes on channel {channel.local_id} exceed the "
                                   f"window of {channel.recv_window}")
        channel.recv_window -= size
        if channel.state is ChannelState.CLOSING or not size:
            return []
        channel.unconsumed += size
        actions: list[Action] = [ChannelData(channel.local_id, message.data)]
        if self._config.auto_window_adjust:
            actions += self._consume(channel, size)
        return actions

    def _on_channel_close(self, message: apf.ChannelClose) -> list[Action]:
        """``u8 97 | u32 recipient (ours)``: answered with our CLOSE unless we sent one."""
        channel = self._peer_channel(message.recipient_channel,
                                     ChannelState.OPEN, ChannelState.CLOSING)
        if channel is None:
            return self._violation(f"close for unknown channel {message.recipient_channel}")
        del self._channels[channel.local_id]
        actions: list[Action] = []
        if channel.state is ChannelState.OPEN:
            actions.append(Send(apf.ChannelClose(channel.remote_id)))
        actions.append(ChannelClosed(channel.local_id))
        return actions

    def _on_keepalive_request(self, message: apf.KeepAliveRequest) -> list[Action]:
        """``u8 208 | u32 cookie`` -> ``u8 209 | u32 cookie``, after login."""
        if self._state not in _AUTHENTICATED:
            return self._violation("KEEPALIVE_REQUEST before login")
        return [Send(apf.KeepAliveReply(message.cookie))]

    def _on_keepalive_reply(self, message: apf.KeepAliveReply) -> list[Action]:
        """``u8 209 | u32 cookie``: accepted and ignored after login (we never ask)."""
        if self._state not in _AUTHENTICATED:
            return self._violation("KEEPALIVE_REPLY before login")
        return []

    def _on_keepalive_options_reply(self, message: apf.KeepAliveOptionsReply) -> list[Action]:
        """``u8 211 | u32 interval | u32 timeout``: reported upwards."""
        if self._state not in _AUTHENTICATED:
            return self._violation("KEEPALIVE_OPTIONS_REPLY before login")
        return [KeepAliveOptions(message.interval, message.timeout)]

    def _on_disconnect(self, message: apf.Disconnect) -> list[Action]:
        """``u8 1 | u32 reason | u16 0``: the device is leaving; close the socket too."""
        return self._terminate(f"device sent DISCONNECT (reason {message.reason})")

    def _on_json_control(self, message: apf.JsonControl) -> list[Action]:
        """``u8 250 | str JSON {"action": ...}``: connType before PROTOCOLVERSION; LMS control."""
        authenticated = self._state in _AUTHENTICATED
        if not authenticated and len(message.text) > self._config.max_preauth_json:
            return self._violation("JSON_CONTROL too large before login")
        try:
            value = message.value()
        except ValueError:
            return self._violation("JSON_CONTROL is not JSON")
        if not isinstance(value, dict) or not isinstance(value.get("action"), str):
            return self._violation("JSON_CONTROL without an action")
        action = value["action"]
        if action == "connType":
            return self._set_conn_type(value.get("value"))
        if self._conn_type is not ConnType.LMS or action not in _CONTROL_ACTIONS:
            return []
        if not authenticated:
            if action == "meiState":
                self._mei_state = value.get("value")
            return []
        return [ControlReceived(action, value)]

    _HANDLERS: dict[type, _Handler] = {
        apf.ProtocolVersion: _on_protocol_version,
        apf.ServiceRequest: _on_service_request,
        apf.UserAuthRequest: _on_userauth_request,
        apf.TcpipForward: _on_tcpip_forward,
        apf.CancelTcpipForward: _on_cancel_tcpip_forward,
        apf.UdpSendTo: _on_udp_send_to,
        apf.ChannelOpen: _on_channel_open,
        apf.ChannelOpenConfirmation: _on_channel_open_confirmation,
        apf.ChannelOpenFailure: _on_channel_open_failure,
        apf.ChannelWindowAdjust: _on_channel_window_adjust,
        apf.ChannelData: _on_channel_data,
        apf.ChannelClose: _on_channel_close,
        apf.KeepAliveRequest: _on_keepalive_request,
        apf.KeepAliveReply: _on_keepalive_reply,
        apf.KeepAliveOptionsReply: _on_keepalive_options_reply,
        apf.Disconnect: _on_disconnect,
        apf.JsonControl: _on_json_control,
    }

    # -- helpers --

    def _set_conn_type(self, value: Any) -> list[Action]:
        if self._state is not State.AWAITING_VERSION or self._conn_type_set:
            return self._violation("connType after PROTOCOLVERSION or set twice")
        if (not isinstance(value, int) or isinstance(value, bool)
                or value not in {int(t) for t in self._config.conn_types}):
            return self._violation(f"connType {value!r} not allowed on this transport")
        self._conn_type = ConnType(value)
        self._conn_type_set = True
        return []

    def _peer_channel(self, channel_id: int, *states: ChannelState) -> Optional[_Channel]:
        """The channel a device message names, if it exists and is in one of ``states``."""
        if self._state is not State.READY:
            return None
        channel = self._channels.get(channel_id)
        if channel is None or channel.state not in states:
            return None
        return channel

    def _live_channel(self, channel_id: int) -> _Channel:
        channel = self._channels.get(channel_id)
        if channel is None or self._state is State.CLOSED:
            raise ChannelError(f"no channel {channel_id}")
        return channel

    def _allocate_channel_id(self) -> int:
        channel_id = self._next_channel_id
        while channel_id in self._channels:
            channel_id = (channel_id + 1) & apf.U32_MAX
        self._next_channel_id = (channel_id + 1) & apf.U32_MAX
        return channel_id

    def _flush(self, channel: _Channel) -> list[Action]:
        """Send queued data as far as the credit goes; then a requested close."""
        actions: list[Action] = []
        while channel.pending and channel.send_credit:
            size = min(len(channel.pending), channel.send_credit, self._config.max_send_chunk)
            actions.append(Send(apf.ChannelData(channel.remote_id,
                                                bytes(channel.pending[:size]))))
            del channel.pending[:size]
            channel.send_credit -= size
        if channel.pending:
            return actions
        if channel.close_requested:
            actions.append(self._send_close(channel))
        elif channel.blocked:
            channel.blocked = False
            actions.append(ChannelWritable(channel.local_id))
        return actions

    def _send_close(self, channel: _Channel) -> Send:
        channel.state = ChannelState.CLOSING
        channel.deadline = self._clock() + self._config.channel_timeout
        return Send(apf.ChannelClose(channel.remote_id))

    def _consume(self, channel: _Channel, nbytes: int) -> list[Action]:
        channel.unconsumed -= nbytes
        channel.to_adjust += nbytes
        if channel.state is not ChannelState.OPEN:
            return []
        if channel.to_adjust * 2 <= self._config.window:
            return []
        adjust = channel.to_adjust
        channel.to_adjust = 0
        channel.recv_window += adjust
        return [Send(apf.ChannelWindowAdjust(channel.remote_id, adjust))]

    def _refuse(self, reason: str, *, console: str = "",
                error: Optional[BaseException] = None) -> list[Action]:
        """USERAUTH_FAILURE (and a console line for non-CIRA peers), then close."""
        before: list[Action] = [Send(apf.UserAuthFailure())]
        if console:
            before += self.send_control({"action": "console", "msg": console})
        return self._terminate(f"login refused: {reason}", error=error, before=before)

    def _violation(self, reason: str) -> list[Action]:
        return self._terminate(f"protocol violation: {reason}")

    def _terminate(self, reason: str, *, error: Optional[BaseException] = None,
                   transport_open: bool = True,
                   before: Optional[list[Action]] = None) -> list[Action]:
        """End the connection: every channel and the registration get their last event."""
        actions: list[Action] = list(before or [])
        for channel in self._channels.values():
            if channel.state is ChannelState.OPENING:
                actions.append(ChannelOpenFailed(channel.local_id,
                                                 apf.OpenFailureReason.CONNECT_FAILED,
                                                 "connection closed"))
            else:
                actions.append(ChannelClosed(channel.local_id))
        self._channels.clear()
        self._forwards.clear()
        if self._result is not None and self._state in _AUTHENTICATED:
            actions.append(Disconnected(self._result.node_id, self._result.mesh_id, reason))
        self._state = State.CLOSED
        self._auth_deadline = None
        if transport_open:
            actions.append(Close(reason, error))
        return actions
