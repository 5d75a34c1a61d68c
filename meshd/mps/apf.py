"""APF (Intel AMT Port Forwarding protocol) codec, sans-IO.

APF is SSH's connection layer without SSH's transport: messages follow each other on the
TLS stream with no outer length, each starting with a one-byte type.  Integers are
big-endian ``u32`` unless noted; a *string* is ``u32 length`` followed by that many bytes;
a boolean is one byte.  See ``specs/mps-apf.md`` (section 2) for the measured details.

Who sends what, in order (D = the Intel AMT device, S = the MPS, i.e. meshd)::

    D: PROTOCOLVERSION 1.0 + system UUID          (S does not answer)
    D: SERVICE_REQUEST auth@amt.intel.com      S: SERVICE_ACCEPT auth@amt.intel.com
    D: USERAUTH_REQUEST user, pfwd@amt.intel.com, "password", 0, password
                                               S: USERAUTH_SUCCESS | USERAUTH_FAILURE
    D: SERVICE_REQUEST pfwd@amt.intel.com      S: SERVICE_ACCEPT pfwd@amt.intel.com
    D: GLOBAL_REQUEST tcpip-forward "" port    S: REQUEST_SUCCESS port     (one per port)
                                               S: KEEPALIVE_OPTIONS_REQUEST 30 0
    D: KEEPALIVE_OPTIONS_REPLY                 (then, periodically)
    D: KEEPALIVE_REQUEST cookie                S: KEEPALIVE_REPLY cookie
                                               S: CHANNEL_OPEN forwarded-tcpip ... 16992
    D: CHANNEL_OPEN_CONFIRMATION | CHANNEL_OPEN_FAILURE
    both: CHANNEL_DATA / CHANNEL_WINDOW_ADJUST / CHANNEL_CLOSE

Everything about *order* is the business of :mod:`meshd.mps.machine`; this module only
turns bytes into frozen message objects and back.

Limits (checked on each length field as soon as its four bytes arrive, before any of the
body is buffered; exceeding one raises :class:`ApfProtocolError`):

* user name, service, method, password, service names, global-request names, channel
  type, addresses and the two CHANNEL_OPEN_FAILURE strings: at most 2048 bytes
  (:data:`MAX_STRING`).  MeshCentral leaves the tcpip-forward address unbounded; we do not.
* JSON_CONTROL text: at most 1 MiB (:data:`MAX_JSON`).
* CHANNEL_DATA payload: at most ``max_channel_data`` (default 1 MiB, :data:`MAX_CHANNEL_DATA`);
  MeshCentral meant to check this and does not.  The machine additionally holds every
  CHANNEL_DATA to the window it granted.
* udp-send-to datagram: at most 65535 bytes.

So an :class:`ApfParser` never holds more than one incomplete message, and no message is
larger than :data:`MAX_MESSAGE`.

Framing that MeshCentral gets wrong and we do not copy: a USERAUTH_REQUEST split across
reads is reassembled like any other message; an unknown GLOBAL_REQUEST name, an unknown
user-auth method or any unknown type byte is an error (the body cannot be framed, so
guessing would desynchronise the stream); USERAUTH_FAILURE carries the single boolean
that APF defines (MeshCentral sends two zero bytes, which its own agent does not expect).

REQUEST_SUCCESS is the one message whose length depends on context: it carries the port
when it answers tcpip-forward and nothing when it answers cancel-tcpip-forward.  A parser
reading the server's side (``Direction.TO_DEVICE``) therefore needs to be told, through
:meth:`ApfParser.expect_request_reply`, which kind of answer comes next.
"""

from __future__ import annotations

import enum
import json
import struct
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Optional, TypeVar, Union

__all__ = [
    "AUTH_SERVICE",
    "ApfParser",
    "ApfProtocolError",
    "CancelTcpipForward",
    "ChannelClose",
    "ChannelData",
    "ChannelOpen",
    "ChannelOpenConfirmation",
    "ChannelOpenFailure",
    "ChannelWindowAdjust",
    "DECODERS",
    "Direction",
    "Disconnect",
    "DisconnectReason",
    "GLOBAL_REQUESTS",
    "JsonControl",
    "KeepAliveOptionsReply",
    "KeepAliveOptionsRequest",
    "KeepAliveReply",
    "KeepAliveRequest",
    "MAX_CHANNEL_DATA",
    "MAX_JSON",
    "MAX_MESSAGE",
    "MAX_STRING",
    "MAX_UDP_DATA",
    "Message",
    "MessageType",
    "OpenFailureReason",
    "PFWD_SERVICE",
    "ProtocolVersion",
    "RequestFailure",
    "RequestSuccess",
    "ServiceAccept",
    "ServiceRequest",
    "TcpipForward",
    "UdpSendTo",
    "UserAuthFailure",
    "UserAuthRequest",
    "UserAuthSuccess",
    "decode",
]

MAX_STRING = 2048
MAX_JSON = 1024 * 1024
MAX_CHANNEL_DATA = 1024 * 1024
MAX_UDP_DATA = 65535
U32_MAX = 0xFFFFFFFF

AUTH_SERVICE = "auth@amt.intel.com"
PFWD_SERVICE = "pfwd@amt.intel.com"
PASSWORD_METHOD = "password"
NONE_METHOD = "none"


class ApfProtocolError(Exception):
    """The peer sent bytes that are not valid APF: unknown, oversized or malformed.

    ``parsed`` holds the messages that :meth:`ApfParser.feed` decoded, in the same call,
    before the bad one (the connection is closed either way).
    """

    def __init__(self, message: str, parsed: Iterable["Message"] = ()) -> None:
        super().__init__(message)
        self.parsed: list[Message] = list(parsed)


class MessageType(enum.IntEnum):
    """The type byte that starts every APF message."""

    DISCONNECT = 1
    SERVICE_REQUEST = 5
    SERVICE_ACCEPT = 6
    USERAUTH_REQUEST = 50
    USERAUTH_FAILURE = 51
    USERAUTH_SUCCESS = 52
    GLOBAL_REQUEST = 80
    REQUEST_SUCCESS = 81
    REQUEST_FAILURE = 82
    CHANNEL_OPEN = 90
    CHANNEL_OPEN_CONFIRMATION = 91
    CHANNEL_OPEN_FAILURE = 92
    CHANNEL_WINDOW_ADJUST = 93
    CHANNEL_DATA = 94
    CHANNEL_CLOSE = 97
    PROTOCOLVERSION = 192
    KEEPALIVE_REQUEST = 208
    KEEPALIVE_REPLY = 209
    KEEPALIVE_OPTIONS_REQUEST = 210
    KEEPALIVE_OPTIONS_REPLY = 211
    JSON_CONTROL = 250


class DisconnectReason(enum.IntEnum):
    """Reason codes of DISCONNECT (APF, after SSH)."""

    HOST_NOT_ALLOWED_TO_CONNECT = 1
    PROTOCOL_ERROR = 2
    KEY_EXCHANGE_FAILED = 3
    RESERVED = 4
    MAC_ERROR = 5
    COMPRESSION_ERROR = 6
    SERVICE_NOT_AVAILABLE = 7
    PROTOCOL_VERSION_NOT_SUPPORTED = 8
    HOST_KEY_NOT_VERIFIABLE = 9
    CONNECTION_LOST = 10
    BY_APPLICATION = 11
    TOO_MANY_CONNECTIONS = 12
    AUTH_CANCELLED_BY_USER = 13
    NO_MORE_AUTH_METHODS_AVAILABLE = 14
    INVALID_CREDENTIALS = 15
    CONNECTION_TIMED_OUT = 16
    BY_POLICY = 17
    TEMPORARILY_UNAVAILABLE = 18


class OpenFailureReason(enum.IntEnum):
    """Reason codes of CHANNEL_OPEN_FAILURE."""

    ADMINISTRATIVELY_PROHIBITED = 1
    CONNECT_FAILED = 2
    UNKNOWN_CHANNEL_TYPE = 3
    RESOURCE_SHORTAGE = 4


class Direction(enum.Enum):
    """Which side's messages a parser reads."""

    TO_SERVER = "device to server"
    TO_DEVICE = "server to device"


# --- reading ---------------------------------------------------------------------------


class _NeedMore(Exception):
    """The buffer ends inside the message; ``needed`` is the buffer length to wait for."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


class _Reader:
    """Reads fields from a buffer, checking limits on lengths before looking for bodies."""

    __slots__ = ("_buf", "pos", "reply_has_port", "max_channel_data")

    def __init__(self, buf: Union[bytes, bytearray], pos: int = 0, *,
                 reply_has_port: Optional[bool] = None,
                 max_channel_data: int = MAX_CHANNEL_DATA) -> None:
        self._buf = buf
        self.pos = pos
        # None: the whole message is known to be in the buffer (decode()); decide by length.
        self.reply_has_port = reply_has_port
        self.max_channel_data = max_channel_data

    def _take(self, n: int) -> int:
        start = self.pos
        end = start + n
        if end > len(self._buf):
            raise _NeedMore(end)
        self.pos = end
        return start

    def remaining(self) -> int:
        return len(self._buf) - self.pos

    def u8(self) -> int:
        return self._buf[self._take(1)]

    def boolean(self) -> bool:
        return self.u8() != 0

    def u16(self) -> int:
        start = self._take(2)
        return int.from_bytes(self._buf[start:start + 2], "big")

    def u32(self) -> int:
        start = self._take(4)
        return int.from_bytes(self._buf[start:start + 4], "big")

    def raw(self, n: int) -> bytes:
        start = self._take(n)
        return bytes(self._buf[start:start + n])

    def length(self, limit: int, what: str) -> int:
        n = self.u32()
        if n > limit:
            raise ApfProtocolError(f"{what} length {n} exceeds {limit}")
        return n

    def blob(self, limit: int, what: str) -> bytes:
        return self.raw(self.length(limit, what))

    def text(self, limit: int, what: str) -> str:
        data = self.blob(limit, what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ApfProtocolError(f"{what} is not UTF-8") from None


# --- checks used by the message constructors ------------------------------------------


def _check_u32(what: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= U32_MAX:
        raise ValueError(f"{what} must be an integer in 0..{U32_MAX}, not {value!r}")


def _check_text(what: str, value: str, limit: int = MAX_STRING) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be str, not {type(value).__name__}")
    data = value.encode("utf-8")
    if len(data) > limit:
        raise ValueError(f"{what} is {len(data)} bytes, more than {limit}")
    return data


def _check_blob(what: str, value: bytes, limit: int) -> None:
    if not isinstance(value, bytes):
        raise ValueError(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} bytes, more than {limit}")


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def _string(value: Union[str, bytes]) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return struct.pack(">I", len(data)) + data


# --- messages --------------------------------------------------------------------------


_M = TypeVar("_M", bound="_Message")


class _Message:
    """Base of the frozen message classes: ``encode()`` is the type byte plus ``_body()``."""

    TYPE: ClassVar[MessageType]

    def _body(self) -> bytes:
        raise NotImplementedError

    def encode(self) -> bytes:
        """The complete wire form of this message."""
        return bytes((self.TYPE,)) + self._body()

    @classmethod
    def decode(cls: type[_M], data: bytes) -> _M:
        """Decode exactly one complete message of this class, or raise ApfProtocolError."""
        message = decode(data)
        if not isinstance(message, cls):
            raise ApfProtocolError(f"expected {cls.__name__}, got {type(message).__name__}")
        return message


@dataclass(frozen=True)
class Disconnect(_Message):
    """``u8 1 | u32 reason | u16 reserved (0)`` -- 7 bytes, either side (MeshCentral never
    sends it)."""

    TYPE: ClassVar[MessageType] = MessageType.DISCONNECT
    reason: int
    reserved: int = 0

    def __post_init__(self) -> None:
        _check_u32("reason", self.reason)
        if not isinstance(self.reserved, int) or not 0 <= self.reserved <= 0xFFFF:
            raise ValueError("reserved must be a u16")

    def _body(self) -> bytes:
        return struct.pack(">IH", self.reason, self.reserved)

    @classmethod
    def _read(cls, r: _Reader) -> "Disconnect":
        return cls(r.u32(), r.u16())


@dataclass(frozen=True)
class ServiceRequest(_Message):
    """``u8 5 | str service (<= 2048)`` -- D->S: ``auth@amt.intel.com``, later
    ``pfwd@amt.intel.com``."""

    TYPE: ClassVar[MessageType] = MessageType.SERVICE_REQUEST
    service: str

    def __post_init__(self) -> None:
        _check_text("service", self.service)

    def _body(self) -> bytes:
        return _string(self.service)

    @classmethod
    def _read(cls, r: _Reader) -> "ServiceRequest":
        return cls(r.text(MAX_STRING, "service name"))


@dataclass(frozen=True)
class ServiceAccept(_Message):
    """``u8 6 | str service (<= 2048)`` -- S->D, echoes the accepted service name."""

    TYPE: ClassVar[MessageType] = MessageType.SERVICE_ACCEPT
    service: str

    def __post_init__(self) -> None:
        _check_text("service", self.service)

    def _body(self) -> bytes:
        return _string(self.service)

    @classmethod
    def _read(cls, r: _Reader) -> "ServiceAccept":
        return cls(r.text(MAX_STRING, "service name"))


@dataclass(frozen=True)
class UserAuthRequest(_Message):
    """``u8 50 | str user | str service | str method`` then, for method ``password`` only,
    ``u8 change-password (0) | str password``; every string <= 2048 bytes.  D->S.

    Methods other than ``password`` and ``none`` have bodies APF does not define, so they
    are rejected; a non-zero change-password flag likewise.  ``password`` is ``None``
    exactly when the method is ``none``.
    """

    TYPE: ClassVar[MessageType] = MessageType.USERAUTH_REQUEST
    username: str
    service: str
    method: str
    password: Optional[bytes]

    def __post_init__(self) -> None:
        _check_text("username", self.username)
        _check_text("service", self.service)
        _check_text("method", self.method)
        if self.method == PASSWORD_METHOD:
            if self.password is None:
                raise ValueError("method 'password' needs a password")
            _check_blob("password", self.password, MAX_STRING)
        elif self.method == NONE_METHOD:
            if self.password is not None:
                raise ValueError("method 'none' carries no password")
        else:
            raise ValueError(f"unsupported user-auth method {self.method!r}")

    def __repr__(self) -> str:
        # Never let a password reach a log line through repr().
        shown = None if self.password is None else "***"
        return (f"UserAuthRequest(username={self.username!r}, service={self.service!r}, "
                f"method={self.method!r}, password={shown})")

    def _body(self) -> bytes:
        body = _string(self.username) + _string(self.service) + _string(self.method)
        if self.password is not None:
            body += b"\x00" + _string(self.password)
        return body

    @classmethod
    def _read(cls, r: _Reader) -> "UserAuthRequest":
        username = r.text(MAX_STRING, "user name")
        service = r.text(MAX_STRING, "service name")
        method = r.text(MAX_STRING, "method name")
        if method == NONE_METHOD:
            return cls(username, service, method, None)
        if method != PASSWORD_METHOD:
            raise ApfProtocolError(f"unsupported user-auth method {method!r}")
        if r.u8() != 0:
            raise ApfProtocolError("password change is not supported")
        return cls(username, service, method, r.blob(MAX_STRING, "password"))


@dataclass(frozen=True)
class UserAuthFailure(_Message):
    """``u8 51 | str methods ("password") | u8 partial-success (0)`` -- 14 bytes, S->D.

    MeshCentral sends a second zero byte (15 bytes); APF and MeshCentral's own agent expect one.
    """

    TYPE: ClassVar[MessageType] = MessageType.USERAUTH_FAILURE
    methods: str = PASSWORD_METHOD
    partial_success: bool = False

    def __post_init__(self) -> None:
        _check_text("methods", self.methods)

    def _body(self) -> bytes:
        return _string(self.methods) + bytes((1 if self.partial_success else 0,))

    @classmethod
    def _read(cls, r: _Reader) -> "UserAuthFailure":
        return cls(r.text(MAX_STRING, "method list"), r.boolean())


@dataclass(frozen=True)
class UserAuthSuccess(_Message):
    """``u8 52`` -- 1 byte, S->D."""

    TYPE: ClassVar[MessageType] = MessageType.USERAUTH_SUCCESS

    def _body(self) -> bytes:
        return b""

    @classmethod
    def _read(cls, r: _Reader) -> "UserAuthSuccess":
        return cls()


class _GlobalRequest(_Message):
    """GLOBAL_REQUEST: ``u8 80 | str request-name (<= 2048) | u8 want-reply | body``."""

    TYPE: ClassVar[MessageType] = MessageType.GLOBAL_REQUEST
    REQUEST_NAME: ClassVar[str]
    want_reply: bool

    def _request_body(self) -> bytes:
        raise NotImplementedError

    def _body(self) -> bytes:
        return (_string(self.REQUEST_NAME) + bytes((1 if self.want_reply else 0,))
                + self._request_body())


@dataclass(frozen=True)
class TcpipForward(_GlobalRequest):
    """``u8 80 | str "tcpip-forward" | u8 want-reply | str address (<= 2048) | u32 port``
    -- D->S, one per AMT port (16992, 16993, 664, 623, 16995, 16994, 5900)."""

    REQUEST_NAME: ClassVar[str] = "tcpip-forward"
    address: str
    port: int
    want_reply: bool = True

    def __post_init__(self) -> None:
        _check_text("address", self.address)
        _check_u32("port", self.port)

    def _request_body(self) -> bytes:
        return _string(self.address) + _u32(self.port)

    @classmethod
    def _read_request(cls, r: _Reader, want_reply: bool) -> "TcpipForward":
        return cls(r.text(MAX_STRING, "forward address"), r.u32(), want_reply)


@dataclass(frozen=True)
class CancelTcpipForward(_GlobalRequest):
    """``u8 80 | str "cancel-tcpip-forward" | u8 want-reply | str address (<= 2048) | u32 port``
    -- D->S."""

    REQUEST_NAME: ClassVar[str] = "cancel-tcpip-forward"
    address: str
    port: int
    want_reply: bool = True

    def __post_init__(self) -> None:
        _check_text("address", self.address)
        _check_u32("port", self.port)

    def _request_body(self) -> bytes:
        return _string(self.address) + _u32(self.port)

    @classmethod
    def _read_request(cls, r: _Reader, want_reply: bool) -> "CancelTcpipForward":
        return cls(r.text(MAX_STRING, "forward address"), r.u32(), want_reply)


@dataclass(frozen=True)
class UdpSendTo(_GlobalRequest):
    """``u8 80 | str "udp-send-to@amt.intel.com" | u8 want-reply | str address (<= 2048) |
    u32 port | str originator-address (<= 2048) | u32 originator-port | str data (<= 65535)``
    -- D->S; MeshCentral parses and drops it."""

    REQUEST_NAME: ClassVar[str] = "udp-send-to@amt.intel.com"
    address: str
    port: int
    originator_address: str
    originator_port: int
    data: bytes
    want_reply: bool = False

    def __post_init__(self) -> None:
        _check_text("address", self.address)
        _check_u32("port", self.port)
        _check_text("originator address", self.originator_address)
        _check_u32("originator port", self.originator_port)
        _check_blob("data", self.data, MAX_UDP_DATA)

    def _request_body(self) -> bytes:
        return (_string(self.address) + _u32(self.port) + _string(self.originator_address)
                + _u32(self.originator_port) + _string(self.data))

    @classmethod
    def _read_request(cls, r: _Reader, want_reply: bool) -> "UdpSendTo":
        return cls(r.text(MAX_STRING, "address"), r.u32(),
                   r.text(MAX_STRING, "originator address"), r.u32(),
                   r.blob(MAX_UDP_DATA, "datagram"), want_reply)


GlobalRequest = Union[TcpipForward, CancelTcpipForward, UdpSendTo]

#: Request name -> class: the second-level dispatch table of GLOBAL_REQUEST.
GLOBAL_REQUESTS: dict[str, Callable[[_Reader, bool], GlobalRequest]] = {
    TcpipForward.REQUEST_NAME: TcpipForward._read_request,
    CancelTcpipForward.REQUEST_NAME: CancelTcpipForward._read_request,
    UdpSendTo.REQUEST_NAME: UdpSendTo._read_request,
}


def _read_global_request(r: _Reader) -> GlobalRequest:
    """``u8 80 | str request-name | u8 want-reply | body by name``; unknown names are
    errors (their body cannot be framed)."""
    name = r.text(MAX_STRING, "global request name")
    reader = GLOBAL_REQUESTS.get(name)
    if reader is None:
        raise ApfProtocolError(f"unknown global request {name[:64]!r}")
    want_reply = r.boolean()
    return reader(r, want_reply)


@dataclass(frozen=True)
class RequestSuccess(_Message):
    """``u8 81 | u32 port`` answering tcpip-forward (5 bytes), ``u8 81`` answering
    cancel-tcpip-forward (1 byte) -- S->D."""

    TYPE: ClassVar[MessageType] = MessageType.REQUEST_SUCCESS
    port: Optional[int] = None

    def __post_init__(self) -> None:
        if self.port is not None:
            _check_u32("port", self.port)

    def _body(self) -> bytes:
        return b"" if self.port is None else _u32(self.port)

    @classmethod
    def _read(cls, r: _Reader) -> "RequestSuccess":
        has_port = r.reply_has_port
        if has_port is None:
            has_port = r.remaining() >= 4
        return cls(r.u32() if has_port else None)


@dataclass(frozen=True)
class RequestFailure(_Message):
    """``u8 82`` -- 1 byte, S->D (MeshCentral never sends it)."""

    TYPE: ClassVar[MessageType] = MessageType.REQUEST_FAILURE

    def _body(self) -> bytes:
        return b""

    @classmethod
    def _read(cls, r: _Reader) -> "RequestFailure":
        return cls()


@dataclass(frozen=True)
class ChannelOpen(_Message):
    """``u8 90 | str channel-type | u32 sender-channel | u32 initial-window |
    u32 reserved (0xFFFFFFFF) | str connected-address | u32 connected-port |
    str originator-address | u32 originator-port`` -- 33 bytes + strings (each <= 2048).

    S->D to reach an AMT port (type ``forwarded-tcpip``); D->S is refused by the server.
    """

    TYPE: ClassVar[MessageType] = MessageType.CHANNEL_OPEN
    channel_type: str
    sender_channel: int
    initial_window: int
    connected_address: str
    connected_port: int
    originator_address: str
    originator_port: int
    reserved: int = U32_MAX

    def __post_init__(self) -> None:
        _check_text("channel type", self.channel_type)
        _check_u32("sender channel", self.sender_channel)
        _check_u32("initial window", self.initial_window)
        _check_text("connected address", self.connected_address)
        _check_u32("connected port", self.connected_port)
        _check_text("originator address", self.originator_address)
        _check_u32("originator port", self.originator_port)
        _check_u32("reserved", self.reserved)

    def _body(self) -> bytes:
        return (_string(self.channel_type)
                + struct.pack(">III", self.sender_channel, self.initial_window, self.reserved)
                + _string(self.connected_address) + _u32(self.connected_port)
                + _string(self.originator_address) + _u32(self.originator_port))

    @classmethod
    def _read(cls, r: _Reader) -> "ChannelOpen":
        channel_type = r.text(MAX_STRING, "channel type")
        sender, window, reserved = r.u32(), r.u32(), r.u32()
        target, target_port = r.text(MAX_STRING, "connected address"), r.u32()
        source, source_port = r.text(MAX_STRING, "originator address"), r.u32()
        return cls(channel_type, sender, window, target, target_port, source, source_port,
                   reserved)


@dataclass(frozen=True)
class ChannelOpenConfirmation(_Message):
    """``u8 91 | u32 recipient-channel | u32 sender-channel | u32 initial-window |
    u32 reserved`` -- 17 bytes; D->S in practice."""

    TYPE: ClassVar[MessageType] = MessageType.CHANNEL_OPEN_CONFIRMATION
    recipient_channel: int
    sender_channel: int
    initial_window: int
    reserved: int = U32_MAX

    def __post_init__(self) -> None:
        _check_u32("recipient channel", self.recipient_channel)
        _check_u32("sender channel", self.sender_channel)
        _check_u32("initial window", self.initial_window)
        _check_u32("reserved", self.reserved)

    def _body(self) -> bytes:
        return struct.pack(">IIII", self.recipient_channel, self.sender_channel,
                           self.initial_window, self.reserved)

    @classmethod
    def _read(cls, r: _Reader) -> "ChannelOpenConfirmation":
        return cls(r.u32(), r.u32(), r.u32(), r.u32())


@dataclass(frozen=True)
class ChannelOpenFailure(_Message):
    """``u8 92 | u32 recipient-channel | u32 reason | str description | str language``
    -- 17 bytes with the two empty strings everybody sends; either side."""

    TYPE: ClassVar[MessageType] = MessageType.CHANNEL_OPEN_FAILURE
    recipient_channel: int
    reason: int
    description: str = ""
    language: str = ""

    def __post_init__(self) -> None:
        _check_u32("recipient channel", self.recipient_channel)
        _check_u32("reason", self.reason)
        _check_text("description", self.description)
        _check_text("language", self.language)

    def _body(self) -> bytes:
        return (struct.pack(">II", self.recipient_channel, self.reason)
                + _string(self.description) + _string(self.language))

    @classmethod
    def _read(cls, r: _Reader) -> "ChannelOpenFailure":
        return cls(r.u32(), r.u32(), r.text(MAX_STRING, "description"),
                   r.text(MAX_STRING, "language tag"))


@dataclass(frozen=True)
class ChannelWindowAdjust(_Message):
    """``u8 93 | u32 recipient-channel | u32 bytes-to-add`` -- 9 bytes, either side."""

    TYPE: ClassVar[MessageType] = MessageType.CHANNEL_WINDOW_ADJUST
    recipient_channel: int
    bytes_to_add: int

    def __post_init__(self) -> None:
        _check_u32("recipient channel", self.recipient_channel)
        _check_u32("bytes to add", self.bytes_to_add)

    def _body(self) -> bytes:
        return struct.pack(">II", self.recipient_channel, self.bytes_to_add)

    @classmethod
    def _read(cls, r: _Reader) -> "ChannelWindowAdjust":
        return cls(r.u32(), r.u32())


@dataclass(frozen=True)
class ChannelData(_Message):
    """``u8 94 | u32 recipient-channel | u32 length | data`` -- 9 + length bytes, either
    side; length <= the parser's ``max_channel_data`` (default 1 MiB)."""

    TYPE: ClassVar[MessageType] = MessageType.CHANNEL_DATA
    recipient_channel: int
    data: bytes

    def __post_init__(self) -> None:
        _check_u32("recipient channel", self.recipient_channel)
        _check_blob("data", self.data, U32_MAX)

    def _body(self) -> bytes:
        return struct.pack(">II", self.recipient_channel, len(self.data)) + self.data

    @classmethod
    def _read(cls, r: _Reader) -> "ChannelData":
        return cls(r.u32(), r.blob(r.max_channel_data, "channel data"))


@dataclass(frozen=True)
class ChannelClose(_Message):
    """``u8 97 | u32 recipient-channel`` -- 5 bytes, either side."""

    TYPE: ClassVar[MessageType] = MessageType.CHANNEL_CLOSE
    recipient_channel: int

    def __post_init__(self) -> None:
        _check_u32("recipient channel", self.recipient_channel)

    def _body(self) -> bytes:
        return _u32(self.recipient_channel)

    @classmethod
    def _read(cls, r: _Reader) -> "ChannelClose":
        return cls(r.u32())


@dataclass(frozen=True)
class ProtocolVersion(_Message):
    """``u8 192 | u32 major | u32 minor | u32 trigger-reason | 16 bytes system UUID |
    64 reserved bytes`` -- 93 bytes, D->S, first message; the server does not answer.

    The UUID is in SMBIOS/GUID order (first three groups little-endian), i.e.
    :attr:`uuid.UUID.bytes_le`.
    """

    TYPE: ClassVar[MessageType] = MessageType.PROTOCOLVERSION
    major: int
    minor: int
    trigger_reason: int
    system_id: uuid.UUID
    reserved: bytes = bytes(64)

    def __post_init__(self) -> None:
        _check_u32("major", self.major)
        _check_u32("minor", self.minor)
        _check_u32("trigger reason", self.trigger_reason)
        if not isinstance(self.system_id, uuid.UUID):
            raise ValueError("system_id must be a uuid.UUID")
        if not isinstance(self.reserved, bytes) or len(self.reserved) != 64:
            raise ValueError("reserved must be 64 bytes")

    def _body(self) -> bytes:
        return (struct.pack(">III", self.major, self.minor, self.trigger_reason)
                + self.system_id.bytes_le + self.reserved)

    @classmethod
    def _read(cls, r: _Reader) -> "ProtocolVersion":
        major, minor, trigger = r.u32(), r.u32(), r.u32()
        return cls(major, minor, trigger, uuid.UUID(bytes_le=r.raw(16)), r.raw(64))


@dataclass(frozen=True)
class KeepAliveRequest(_Message):
    """``u8 208 | u32 cookie`` -- 5 bytes, D->S (the server never initiates)."""

    TYPE: ClassVar[MessageType] = MessageType.KEEPALIVE_REQUEST
    cookie: int

    def __post_init__(self) -> None:
        _check_u32("cookie", self.cookie)

    def _body(self) -> bytes:
        return _u32(self.cookie)

    @classmethod
    def _read(cls, r: _Reader) -> "KeepAliveRequest":
        return cls(r.u32())


@dataclass(frozen=True)
class KeepAliveReply(_Message):
    """``u8 209 | u32 cookie`` -- 5 bytes, S->D echoing the request's cookie (also
    accepted D->S)."""

    TYPE: ClassVar[MessageType] = MessageType.KEEPALIVE_REPLY
    cookie: int

    def __post_init__(self) -> None:
        _check_u32("cookie", self.cookie)

    def _body(self) -> bytes:
        return _u32(self.cookie)

    @classmethod
    def _read(cls, r: _Reader) -> "KeepAliveReply":
        return cls(r.u32())


@dataclass(frozen=True)
class KeepAliveOptionsRequest(_Message):
    """``u8 210 | u32 interval-seconds | u32 timeout`` -- 9 bytes, S->D."""

    TYPE: ClassVar[MessageType] = MessageType.KEEPALIVE_OPTIONS_REQUEST
    interval: int
    timeout: int

    def __post_init__(self) -> None:
        _check_u32("interval", self.interval)
        _check_u32("timeout", self.timeout)

    def _body(self) -> bytes:
        return struct.pack(">II", self.interval, self.timeout)

    @classmethod
    def _read(cls, r: _Reader) -> "KeepAliveOptionsRequest":
        return cls(r.u32(), r.u32())


@dataclass(frozen=True)
class KeepAliveOptionsReply(_Message):
    """``u8 211 | u32 interval-seconds | u32 timeout`` -- 9 bytes, D->S."""

    TYPE: ClassVar[MessageType] = MessageType.KEEPALIVE_OPTIONS_REPLY
    interval: int
    timeout: int

    def __post_init__(self) -> None:
        _check_u32("interval", self.interval)
        _check_u32("timeout", self.timeout)

    def _body(self) -> bytes:
        return struct.pack(">II", self.interval, self.timeout)

    @classmethod
    def _read(cls, r: _Reader) -> "KeepAliveOptionsReply":
        return cls(r.u32(), r.u32())


@dataclass(frozen=True)
class JsonControl(_Message):
    """``u8 250 | str UTF-8 JSON (<= 1 MiB)`` -- MeshCentral extension, either side.

    The codec only frames the text; :meth:`value` parses it (the machine decides what a
    malformed one means -- never a wedged connection).
    """

    TYPE: ClassVar[MessageType] = MessageType.JSON_CONTROL
    text: str

    def __post_init__(self) -> None:
        _check_text("JSON text", self.text, MAX_JSON)

    @classmethod
    def from_value(cls, value: Any) -> "JsonControl":
        """The message carrying ``value`` serialised compactly."""
        return cls(json.dumps(value, separators=(",", ":")))

    def value(self) -> Any:
        """The parsed JSON; raises ValueError if the text is not JSON."""
        return json.loads(self.text)

    def _body(self) -> bytes:
        return _string(self.text)

    @classmethod
    def _read(cls, r: _Reader) -> "JsonControl":
        return cls(r.text(MAX_JSON, "JSON control"))


Message = Union[
    Disconnect, ServiceRequest, ServiceAccept, UserAuthRequest, UserAuthFailure,
    UserAuthSuccess, TcpipForward, CancelTcpipForward, UdpSendTo, RequestSuccess,
    RequestFailure, ChannelOpen, ChannelOpenConfirmation, ChannelOpenFailure,
    ChannelWindowAdjust, ChannelData, ChannelClose, ProtocolVersion, KeepAliveRequest,
    KeepAliveReply, KeepAliveOptionsRequest, KeepAliveOptionsReply, JsonControl,
]

#: Type byte -> reader of the rest of the message: the dispatch table.
DECODERS: dict[MessageType, Callable[[_Reader], Message]] = {
    MessageType.DISCONNECT: Disconnect._read,
    MessageType.SERVICE_REQUEST: ServiceRequest._read,
    MessageType.SERVICE_ACCEPT: ServiceAccept._read,
    MessageType.USERAUTH_REQUEST: UserAuthRequest._read,
    MessageType.USERAUTH_FAILURE: UserAuthFailure._read,
    MessageType.USERAUTH_SUCCESS: UserAuthSuccess._read,
    MessageType.GLOBAL_REQUEST: _read_global_request,
    MessageType.REQUEST_SUCCESS: RequestSuccess._read,
    MessageType.REQUEST_FAILURE: RequestFailure._read,
    MessageType.CHANNEL_OPEN: ChannelOpen._read,
    MessageType.CHANNEL_OPEN_CONFIRMATION: ChannelOpenConfirmation._read,
    MessageType.CHANNEL_OPEN_FAILURE: ChannelOpenFailure._read,
    MessageType.CHANNEL_WINDOW_ADJUST: ChannelWindowAdjust._read,
    MessageType.CHANNEL_DATA: ChannelData._read,
    MessageType.CHANNEL_CLOSE: ChannelClose._read,
    MessageType.PROTOCOLVERSION: ProtocolVersion._read,
    MessageType.KEEPALIVE_REQUEST: KeepAliveRequest._read,
    MessageType.KEEPALIVE_REPLY: KeepAliveReply._read,
    MessageType.KEEPALIVE_OPTIONS_REQUEST: KeepAliveOptionsRequest._read,
    MessageType.KEEPALIVE_OPTIONS_REPLY: KeepAliveOptionsReply._read,
    MessageType.JSON_CONTROL: JsonControl._read,
}

_CHANNEL_TYPES = frozenset({
    MessageType.CHANNEL_OPEN, MessageType.CHANNEL_OPEN_CONFIRMATION,
    MessageType.CHANNEL_OPEN_FAILURE, MessageType.CHANNEL_WINDOW_ADJUST,
    MessageType.CHANNEL_DATA, MessageType.CHANNEL_CLOSE,
})

#: The types each side may send; anything else from that side is an error.
ACCEPTED: dict[Direction, frozenset[MessageType]] = {
    Direction.TO_SERVER: _CHANNEL_TYPES | {
        MessageType.DISCONNECT, MessageType.SERVICE_REQUEST, MessageType.USERAUTH_REQUEST,
        MessageType.GLOBAL_REQUEST, MessageType.PROTOCOLVERSION,
        MessageType.KEEPALIVE_REQUEST, MessageType.KEEPALIVE_REPLY,
        MessageType.KEEPALIVE_OPTIONS_REPLY, MessageType.JSON_CONTROL,
    },
    Direction.TO_DEVICE: _CHANNEL_TYPES | {
        MessageType.DISCONNECT, MessageType.SERVICE_ACCEPT, MessageType.USERAUTH_FAILURE,
        MessageType.USERAUTH_SUCCESS, MessageType.REQUEST_SUCCESS,
        MessageType.REQUEST_FAILURE, MessageType.KEEPALIVE_REQUEST,
        MessageType.KEEPALIVE_REPLY, MessageType.KEEPALIVE_OPTIONS_REQUEST,
        MessageType.JSON_CONTROL,
    },
}

_ALL_TYPES = frozenset(MessageType)

#: The largest message a parser can be asked to hold (a full JSON_CONTROL).
MAX_MESSAGE = 5 + MAX_JSON


def _read_message(r: _Reader, accepted: frozenset[MessageType]) -> Message:
    code = r.u8()
    if code not in accepted:
        raise ApfProtocolError(f"unexpected message type {code}")
    try:
        return DECODERS[MessageType(code)](r)
    except ValueError as e:
        # A field the constructor refuses (readers check limits first, so only a reader
        # bug gets here) is still the peer's bad input, never a crash.
        raise ApfProtocolError(f"invalid {MessageType(code).name}: {e}") from None


def decode(data: bytes) -> Message:
    """Decode ``data`` as exactly one complete message of either direction."""
    r = _Reader(data)
    try:
        message = _read_message(r, _ALL_TYPES)
    except _NeedMore:
        raise ApfProtocolError("truncated message") from None
    if r.remaining():
        raise ApfProtocolError(f"{r.remaining()} bytes after the message")
    return message


class ApfParser:
    """Incremental parser: ``feed(bytes) -> list[Message]`` for one direction of one stream.

    Fragmentation is arbitrary (one byte at a time works).  Each length field is checked
    against its limit as soon as it is complete, so the buffer never holds more than one
    incomplete, within-limits message.  After an :class:`ApfProtocolError` the parser is
    spent: every later ``feed`` raises too.
    """

    def __init__(self, direction: Direction = Direction.TO_SERVER, *,
                 max_channel_data: int = MAX_CHANNEL_DATA) -> None:
        if not 0 <= max_channel_data <= MAX_CHANNEL_DATA:
            raise ValueError(f"max_channel_data must be in 0..{MAX_CHANNEL_DATA}")
        self._accepted = ACCEPTED[direction]
        self._direction = direction
        self._max_channel_data = max_channel_data
        self._buffer = bytearray()
        self._need = 1
        self._failed: Optional[str] = None
        self._replies: deque[bool] = deque()

    @property
    def buffered(self) -> int:
        """How many bytes of an incomplete message are held."""
        return len(self._buffer)

    def expect_request_reply(self, with_port: bool) -> None:
        """(TO_DEVICE only) A GLOBAL_REQUEST was sent; its REQUEST_SUCCESS carries a port
        iff ``with_port`` (tcpip-forward).  REQUEST_SUCCESS/FAILURE with nothing expected
        is an error."""
        if self._direction is not Direction.TO_DEVICE:
            raise ValueError("only a TO_DEVICE parser reads request replies")
        self._replies.append(with_port)

    def feed(self, data: bytes) -> list[Message]:
        """Append ``data``; return every message it completes, in order."""
        if self._failed is not None:
            raise ApfProtocolError(f"stream already failed: {self._failed}")
        buf = self._buffer
        buf += data
        messages: list[Message] = []
        start = 0
        try:
            while len(buf) - start >= self._need:
                r = _Reader(buf, start, max_channel_data=self._max_channel_data)
                if self._direction is Direction.TO_DEVICE and buf[start] in (
                        MessageType.REQUEST_SUCCESS, MessageType.REQUEST_FAILURE):
                    if not self._replies:
                        raise ApfProtocolError("request reply without a request")
                    r.reply_has_port = self._replies[0]
                try:
                    message = _read_message(r, self._accepted)
                except _NeedMore as more:
                    self._need = more.needed - start
                    break
                if isinstance(message, (RequestSuccess, RequestFailure)) and self._replies:
                    self._replies.popleft()
                messages.append(message)
                start = r.pos
                self._need = 1
        except ApfProtocolError as error:
            self._failed = str(error)
            buf.clear()
            error.parsed = messages
            raise
        del buf[:start]
        return messages
