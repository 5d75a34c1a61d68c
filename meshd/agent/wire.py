"""Sans-IO codec for the frames on ``/agent.ashx`` (spec: agent-protocol.md §1, §3, §4).

One WebSocket message is one frame. A frame whose first byte is ``{`` (0x7B) is JSON, whatever
the WebSocket opcode (MeshCentral sends JSON in binary frames); anything else is a binary command:
a 16-bit big-endian command id followed by its body. All integers are big-endian.

Who sends what, in what order (A = agent, S = server)::

    before authentication (commands 1-5, 30, 31; the only JSON is "agentName")
      A 30 AgentCommitDate  A 31 HostInfo  A 5 ServerId  [A 4 AuthConfirm = "skip, I trust you"]
      A 1 AuthRequest(Hweb, Na)                S 1 AuthRequest(Hweb, Ns)
      A 2 AuthVerify(node cert, sig)           S 2 AuthVerify(agent-server cert, sig)  (no A 4)
      [A {"action":"agentName",...}]           A 3 AgentInfo
                                               S 4 AuthConfirm
    after authentication (ids >= 10 carry command(2) + request id(2), except A 15 AgentTag)
      A 15 AgentTag   S/A 12 AgentHash   S/A 11 CoreModuleHash   S 10/20 CoreModule   S 16 CoreOk
      S 13/14 agent update transfer (A 14 = "next block")   ids >= 1000: binary for the JS core
      JSON in both directions.

:func:`decode_message` takes who sent the frame and whether the handshake is over, and accepts only
the commands that sender may send in that phase (tables ``_TABLES``); everything else — unknown
ids, wrong phase, bad lengths, oversized frames, invalid JSON — raises the one
:class:`AgentProtocolError`. Lengths are checked against the limits below before any slicing.

Limits (the wire format allows more; real agents send far less):

* whole frame :data:`MAX_FRAME`; JSON :data:`MAX_JSON` (:data:`MAX_PREAUTH_JSON` before auth);
* certificate in command 2 :data:`MAX_CERT_LEN`, signature :data:`MAX_SIGNATURE_LEN`;
* hostname in command 3 :data:`MAX_HOSTNAME_LEN`; texts of 30/31 :data:`MAX_TEXT_LEN`;
  tag of 15 :data:`MAX_TAG_LEN`; core module :data:`MAX_CORE_MODULE_LEN`; update block
  :data:`MAX_UPDATE_BLOCK`; core binary :data:`MAX_CORE_BINARY`.

Decoding is strict where MeshCentral 1.1.55 is loose: it reads command 3's hostname length without
checking it against the frame, slices command 2's certificate length unchecked, accepts command 4
and 5 of any length; here each is an error.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag
from typing import Any, Callable, ClassVar, Mapping, Optional, Union

__all__ = [
    "AgentProtocolError",
    "Command",
    "Sender",
    "AgentCapability",
    "PlatformType",
    "AuthRequest",
    "AuthVerify",
    "AgentInfo",
    "AuthConfirm",
    "ServerId",
    "AgentCommitDate",
    "HostInfo",
    "CoreModule",
    "CompressedCoreModule",
    "CoreModuleHash",
    "AgentHash",
    "AgentUpdate",
    "AgentUpdateBlock",
    "AgentTag",
    "CoreOk",
    "CoreBinary",
    "Message",
    "Decoded",
    "decode_message",
    "decode_json",
    "encode_json",
    "HASH_LEN",
    "NONCE_LEN",
    "FIRST_CORE_COMMAND",
    "MAX_FRAME",
    "MAX_JSON",
    "MAX_PREAUTH_JSON",
    "MAX_CERT_LEN",
    "MAX_SIGNATURE_LEN",
    "MAX_HOSTNAME_LEN",
    "MAX_TEXT_LEN",
    "MAX_TAG_LEN",
    "MAX_CORE_MODULE_LEN",
    "MAX_UPDATE_BLOCK",
    "MAX_CORE_BINARY",
]

HASH_LEN = 48
NONCE_LEN = 48
LEGACY_SERVER_ID_LEN = 32
"""A SHA-256 ServerID from an old ``.mshx`` file."""

FIRST_CORE_COMMAND = 1000
"""Binary command ids from here up are for the JavaScript core, after authentication."""

MAX_CERT_LEN = 16 * 1024
"""Certificate in command 2 (observed 1030 and 1076 bytes; the length field allows 65535)."""
MAX_SIGNATURE_LEN = 16 * 1024
"""Signature in command 2: raw RSA (256/384/512 bytes) or a Windows PKCS#7 blob."""
MAX_HOSTNAME_LEN = 1024
MAX_TEXT_LEN = 1024
"""Text of commands 30 and 31 (observed 25 and 36 bytes)."""
MAX_TAG_LEN = 4096
MAX_CORE_MODULE_LEN = 32 * 1024 * 1024
"""Core blob in command 10/20 (MeshCentral's Linux core is 594 962 bytes)."""
MAX_UPDATE_BLOCK = 65531
"""Data in one command 14 block, as MeshCentral sends it (65535 - 4)."""
MAX_CORE_BINARY = 16 * 1024 * 1024
MAX_JSON = 16 * 1024 * 1024
"""JSON frame after authentication (``runcommands`` results carry whole command outputs)."""
MAX_PREAUTH_JSON = 4096
"""JSON frame before authentication: only ``{"action":"agentName","value":<=255 chars}``."""
MAX_FRAME = 4 + HASH_LEN + MAX_CORE_MODULE_LEN
"""No frame in either direction is longer (the adapter's WebSocket payload cap)."""

_JSON_FIRST_BYTE = 0x7B  # "{"
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF


class AgentProtocolError(Exception):
    """A frame is truncated, oversized, unknown, or not allowed here. The only decode error."""


class Command(IntEnum):
    """Binary command ids (the first two bytes of a binary frame)."""

    AUTH_REQUEST = 1
    AUTH_VERIFY = 2
    AGENT_INFO = 3  # "AuthInfo" in the spec's tables
    AUTH_CONFIRM = 4
    SERVER_ID = 5
    CORE_MODULE = 10
    CORE_MODULE_HASH = 11
    AGENT_HASH = 12
    AGENT_UPDATE = 13
    AGENT_UPDATE_BLOCK = 14
    AGENT_TAG = 15
    CORE_OK = 16
    COMPRESSED_CORE_MODULE = 20
    AGENT_COMMIT_DATE = 30
    HOST_INFO = 31


class Sender(Enum):
    """Who sent the frame being decoded; each side may send a different set of commands."""

    AGENT = "agent"
    SERVER = "server"


class AgentCapability(IntFlag):
    """Capability bits of command 3."""

    DESKTOP = 0x01
    TERMINAL = 0x02
    FILES = 0x04
    CONSOLE = 0x08
    JAVASCRIPT = 0x10
    TEMPORARY = 0x20
    RECOVERY = 0x40
    COMPRESSION = 0x100


class PlatformType(IntEnum):
    """Platform type of command 3 (used as the device icon)."""

    DESKTOP = 1
    LAPTOP = 2
    MOBILE = 3
    SERVER = 4
    DISK = 5
    ROUTER = 6
    PI = 7
    VIRTUAL = 8


# -- helpers -----------------------------------------------------------------------------------


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def _read_u16(frame: bytes, offset: int) -> int:
    return int.from_bytes(frame[offset : offset + 2], "big")


def _read_u32(frame: bytes, offset: int) -> int:
    return int.from_bytes(frame[offset : offset + 4], "big")


def _check_range(name: str, value: int, maximum: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in 0..{maximum}")


def _check_len(name: str, value: bytes, allowed: tuple[int, ...]) -> None:
    if not isinstance(value, bytes) or len(value) not in allowed:
        raise ValueError(f"{name} must be {' or '.join(map(str, allowed))} bytes")


def _check_max(name: str, value: bytes, minimum: int, maximum: int) -> None:
    if not isinstance(value, bytes) or not minimum <= len(value) <= maximum:
        raise ValueError(f"{name} must be {minimum}..{maximum} bytes")


def _need(frame: bytes, minimum: int, maximum: int, what: str) -> None:
    """Check a frame's total length before anything is sliced out of it."""
    if len(frame) < minimum:
        raise AgentProtocolError(f"{what}: truncated ({len(frame)} < {minimum} bytes)")
    if len(frame) > maximum:
        raise AgentProtocolError(f"{what}: too long ({len(frame)} > {maximum} bytes)")


def _optional_hash(frame: bytes, what: str) -> Optional[bytes]:
    """Body of a ``command(2) requestid(2) [hash(48)]`` frame: exactly 4 or 52 bytes."""
    if len(frame) == 4:
        return None
    if len(frame) == 4 + HASH_LEN:
        return frame[4:]
    raise AgentProtocolError(f"{what}: must be 4 or {4 + HASH_LEN} bytes, got {len(frame)}")


# -- handshake commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthRequest:
    """Command 1, both directions, exactly 98 bytes::

        00 01 | tls_hash (48) | nonce (48)

    Agent→server: ``Hweb`` as the agent computed it (full-cert or legacy key hash) and the agent
    nonce ``Na``. Server→agent: the same ``Hweb`` echoed and the server nonce ``Ns``.
    """

    command: ClassVar[Command] = Command.AUTH_REQUEST
    tls_hash: bytes
    nonce: bytes

    def __post_init__(self) -> None:
        _check_len("tls_hash", self.tls_hash, (HASH_LEN,))
        _check_len("nonce", self.nonce, (NONCE_LEN,))

    def encode(self) -> bytes:
        return _u16(self.command) + self.tls_hash + self.nonce

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> AuthRequest:
        size = 2 + HASH_LEN + NONCE_LEN
        _need(frame, size, size, "AuthRequest")
        return cls(frame[2 : 2 + HASH_LEN], frame[2 + HASH_LEN :])


@dataclass(frozen=True)
class AuthVerify:
    """Command 2, both directions, 4 + c + s bytes::

        00 02 | certLen (2) = c | certificate DER (c) | signature (s = rest of the frame)

    Agent→server: node certificate + RSA-PKCS#1-v1.5-SHA-384 over ``Hweb ‖ Ns ‖ Na`` (or, from
    Windows agents using the OS store, a PKCS#7 blob). Server→agent: the agent-server
    certificate + signature over ``Hweb ‖ Na ‖ Ns``. Observed c = 1030 / 1076, s = 384.
    """

    command: ClassVar[Command] = Command.AUTH_VERIFY
    certificate: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_max("certificate", self.certificate, 1, MAX_CERT_LEN)
        _check_max("signature", self.signature, 1, MAX_SIGNATURE_LEN)

    def encode(self) -> bytes:
        return _u16(self.command) + _u16(len(self.certificate)) + self.certificate + self.signature

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> AuthVerify:
        _need(frame, 4 + 1 + 1, 4 + MAX_CERT_LEN + MAX_SIGNATURE_LEN, "AuthVerify")
        cert_len = _read_u16(frame, 2)
        if not 1 <= cert_len <= MAX_CERT_LEN:
            raise AgentProtocolError(f"AuthVerify: bad certificate length {cert_len}")
        if 4 + cert_len >= len(frame):
            raise AgentProtocolError("AuthVerify: certificate runs past the frame, or no signature")
        return cls(frame[4 : 4 + cert_len], frame[4 + cert_len :])


@dataclass(frozen=True)
class AgentInfo:
    """Command 3 ("AuthInfo"), agent→server, 72 + n bytes (observed 74 for host ``vm``)::

        00 03 | infoVersion (4) | agentId (4) | agentVersion (4) | platformType (4)
              | meshId (48) | capabilities (4) | hostnameLen (2) = n | hostname UTF-8 (n)

    ``mesh_id`` is raw; a legacy 32-byte id is padded with 16 zero bytes. ``platform_type`` is kept
    as sent; :attr:`platform` maps it like MeshCentral (outside 1..8 → 1). An invalid UTF-8
    hostname is decoded with replacement characters rather than refused (it is only a name).
    """

    command: ClassVar[Command] = Command.AGENT_INFO
    info_version: int
    agent_id: int
    agent_version: int
    platform_type: int
    mesh_id: bytes
    capabilities: int
    hostname: str

    def __post_init__(self) -> None:
        _check_range("info_version", self.info_version, _U32)
        _check_range("agent_id", self.agent_id, _U32)
        _check_range("agent_version", self.agent_version, _U32)
        _check_range("platform_type", self.platform_type, _U32)
        _check_range("capabilities", self.capabilities, _U32)
        _check_len("mesh_id", self.mesh_id, (HASH_LEN,))
        if not isinstance(self.hostname, str):
            raise ValueError("hostname must be a str")
        if len(self.hostname.encode("utf-8")) > MAX_HOSTNAME_LEN:
            raise ValueError(f"hostname longer than {MAX_HOSTNAME_LEN} bytes")

    @property
    def platform(self) -> PlatformType:
        """The platform type as MeshCentral records it."""
        if 1 <= self.platform_type <= 8:
            return PlatformType(self.platform_type)
        return PlatformType.DESKTOP

    @property
    def flags(self) -> AgentCapability:
        """The capabilities as flags (unknown bits kept)."""
        return AgentCapability(self.capabilities)

    def encode(self) -> bytes:
        name = self.hostname.encode("utf-8")
        return b"".join(
            (
                _u16(self.command),
                _u32(self.info_version),
                _u32(self.agent_id),
                _u32(self.agent_version),
                _u32(self.platform_type),
                self.mesh_id,
                _u32(self.capabilities),
                _u16(len(name)),
                name,
            )
        )

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> AgentInfo:
        _need(frame, 72, 72 + MAX_HOSTNAME_LEN, "AgentInfo")
        name_len = _read_u16(frame, 70)
        if 72 + name_len != len(frame):
            raise AgentProtocolError(
                f"AgentInfo: hostname length {name_len} does not match frame of {len(frame)}"
            )
        return cls(
            info_version=_read_u32(frame, 2),
            agent_id=_read_u32(frame, 6),
            agent_version=_read_u32(frame, 10),
            platform_type=_read_u32(frame, 14),
            mesh_id=frame[18:66],
            capabilities=_read_u32(frame, 66),
            hostname=frame[72:].decode("utf-8", "replace"),
        )


@dataclass(frozen=True)
class AuthConfirm:
    """Command 4, exactly 2 bytes: ``00 04``.

    Agent→server (before its command 1): "I already trust this TLS certificate, don't send your
    command 2". Server→agent: "you are accepted" — the end of the handshake.
    """

    command: ClassVar[Command] = Command.AUTH_CONFIRM

    def encode(self) -> bytes:
        return _u16(self.command)

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> AuthConfirm:
        _need(frame, 2, 2, "AuthConfirm")
        return cls()


@dataclass(frozen=True)
class ServerId:
    """Command 5, agent→server, 50 bytes (34 for a legacy SHA-256 id)::

        00 05 | ServerID the agent expects (48, raw SHA-384 of the server's agent-cert key)
    """

    command: ClassVar[Command] = Command.SERVER_ID
    server_id: bytes

    def __post_init__(self) -> None:
        _check_len("server_id", self.server_id, (HASH_LEN, LEGACY_SERVER_ID_LEN))

    def encode(self) -> bytes:
        return _u16(self.command) + self.server_id

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> ServerId:
        if len(frame) not in (2 + HASH_LEN, 2 + LEGACY_SERVER_ID_LEN):
            raise AgentProtocolError(f"ServerId: must be 50 or 34 bytes, got {len(frame)}")
        return cls(frame[2:])


@dataclass(frozen=True)
class AgentCommitDate:
    """Command 30, agent→server, 2 + n bytes::

        00 1E | build date, ASCII, NUL-terminated   (observed "2022-Nov-2 23:01:45-0700\\0")

    Exactly one NUL, at the end (so a truncated date is detected); the text must be ASCII.
    """

    command: ClassVar[Command] = Command.AGENT_COMMIT_DATE
    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not self.value.isascii() or "\0" in self.value:
            raise ValueError("commit date must be ASCII without NUL")
        if len(self.value) + 1 > MAX_TEXT_LEN:
            raise ValueError("commit date too long")

    def encode(self) -> bytes:
        return _u16(self.command) + self.value.encode("ascii") + b"\0"

    def parsed(self) -> Optional[datetime.datetime]:
        """The date as an aware datetime, or ``None`` if it is not in the observed format."""
        try:
            return datetime.datetime.strptime(self.value, "%Y-%b-%d %H:%M:%S%z")
        except ValueError:
            return None

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> AgentCommitDate:
        _need(frame, 3, 2 + MAX_TEXT_LEN, "AgentCommitDate")
        text = frame[2:-1]
        if frame[-1] != 0 or b"\0" in text or not text.isascii():
            raise AgentProtocolError("AgentCommitDate: not NUL-terminated ASCII")
        return cls(text.decode("ascii"))


@dataclass(frozen=True)
class HostInfo:
    """Command 31, agent→server, 2 + n bytes::

        00 1F | "<OS name> - <arch>" UTF-8, no NUL

    Observed: ``Debian GNU/Linux 12 (bookworm) - x64``.
    """

    command: ClassVar[Command] = Command.HOST_INFO
    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise ValueError("host info must be a str")
        if len(self.value.encode("utf-8")) > MAX_TEXT_LEN:
            raise ValueError("host info too long")

    def encode(self) -> bytes:
        return _u16(self.command) + self.value.encode("utf-8")

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> HostInfo:
        _need(frame, 2, 2 + MAX_TEXT_LEN, "HostInfo")
        return cls(frame[2:].decode("utf-8", "replace"))


# -- after authentication ----------------------------------------------------------------------


@dataclass(frozen=True)
class CoreModule:
    """Command 10, server→agent::

        00 0A | requestId (2) | core hash (48) | core blob (4 zero bytes + JavaScript)
        00 0A | requestId (2)                    -- exactly 4 bytes: "delete your core"

    ``module_hash`` is H(blob); ``None`` (with an empty blob) means "delete".
    """

    command: ClassVar[Command] = Command.CORE_MODULE
    request_id: int = 0
    module_hash: Optional[bytes] = None
    module: bytes = b""

    def __post_init__(self) -> None:
        _check_range("request_id", self.request_id, _U16)
        if self.module_hash is None:
            if self.module:
                raise ValueError("a core module needs its hash")
        else:
            _check_len("module_hash", self.module_hash, (HASH_LEN,))
        _check_max("module", self.module, 0, MAX_CORE_MODULE_LEN)

    def encode(self) -> bytes:
        head = _u16(self.command) + _u16(self.request_id)
        if self.module_hash is None:
            return head
        return head + self.module_hash + self.module

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> CoreModule:
        _need(frame, 4, 4 + HASH_LEN + MAX_CORE_MODULE_LEN, cls.__name__)
        request_id = _read_u16(frame, 2)
        if len(frame) == 4:
            return cls(request_id)
        if len(frame) < 4 + HASH_LEN:
            raise AgentProtocolError(f"{cls.__name__}: truncated hash")
        return cls(request_id, frame[4 : 4 + HASH_LEN], frame[4 + HASH_LEN :])


@dataclass(frozen=True)
class CompressedCoreModule(CoreModule):
    """Command 20, server→agent: as :class:`CoreModule` but the blob is raw DEFLATE::

        00 14 | requestId (2) | core hash (48) | deflated core blob

    (MeshCentral 1.1.55 never sends it; untested against the real agent.)
    """

    command: ClassVar[Command] = Command.COMPRESSED_CORE_MODULE


@dataclass(frozen=True)
class CoreModuleHash:
    """Command 11, 4 or 52 bytes::

        00 0B | requestId (2)               server→agent "which core do you run?"; agent: no core
        00 0B | requestId (2) | hash (48)   agent→server: hash of its core (all zeros = custom)
    """

    command: ClassVar[Command] = Command.CORE_MODULE_HASH
    request_id: int = 0
    hash: Optional[bytes] = None

    def __post_init__(self) -> None:
        _check_range("request_id", self.request_id, _U16)
        if self.hash is not None:
            _check_len("hash", self.hash, (HASH_LEN,))

    def encode(self) -> bytes:
        return _u16(self.command) + _u16(self.request_id) + (self.hash or b"")

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> CoreModuleHash:
        digest = _optional_hash(frame, cls.__name__)
        return cls(_read_u16(frame, 2), digest)


@dataclass(frozen=True)
class AgentHash(CoreModuleHash):
    """Command 12, 4 or 52 bytes::

        00 0C | requestId (2)               server→agent "report your executable hash"
        00 0C | requestId (2) | hash (48)   agent→server: H(executable); zeros = never update me,
                                            all 0xFF = force an update
    """

    command: ClassVar[Command] = Command.AGENT_HASH


@dataclass(frozen=True)
class AgentUpdate(CoreModuleHash):
    """Command 13, server→agent, 4 or 52 bytes::

        00 0D | requestId (2)               start of an agent binary transfer
        00 0D | requestId (2) | hash (48)   end of it: H(transferred file)
    """

    command: ClassVar[Command] = Command.AGENT_UPDATE


@dataclass(frozen=True)
class AgentUpdateBlock:
    """Command 14::

        00 0E | 00 01 | data (<= 65531)     server→agent: next block of the agent binary
        00 0E | 00 01                       agent→server: exactly 4 bytes, "next block please"
    """

    command: ClassVar[Command] = Command.AGENT_UPDATE_BLOCK
    request_id: int = 1
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_range("request_id", self.request_id, _U16)
        _check_max("data", self.data, 0, MAX_UPDATE_BLOCK)

    def encode(self) -> bytes:
        return _u16(self.command) + _u16(self.request_id) + self.data

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> AgentUpdateBlock:
        top = 4 if sender is Sender.AGENT else 4 + MAX_UPDATE_BLOCK
        _need(frame, 4, top, "AgentUpdateBlock")
        return cls(_read_u16(frame, 2), frame[4:])


@dataclass(frozen=True)
class AgentTag:
    """Command 15, agent→server, 2 + n bytes (no request id)::

        00 0F | tag bytes (the .msh "Tag"; may be empty or NUL-padded)
    """

    command: ClassVar[Command] = Command.AGENT_TAG
    tag: bytes = b""

    def __post_init__(self) -> None:
        _check_max("tag", self.tag, 0, MAX_TAG_LEN)

    @property
    def text(self) -> str:
        """The tag as MeshCentral stores it: trailing NULs removed, UTF-8."""
        return self.tag.rstrip(b"\0").decode("utf-8", "replace")

    def encode(self) -> bytes:
        return _u16(self.command) + self.tag

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> AgentTag:
        _need(frame, 2, 2 + MAX_TAG_LEN, "AgentTag")
        return cls(frame[2:])


@dataclass(frozen=True)
class CoreOk:
    """Command 16, server→agent, exactly 4 bytes: ``00 10 | requestId (2)`` — "your core is
    current; start it" (without it a stored core waits 60 s before starting)."""

    command: ClassVar[Command] = Command.CORE_OK
    request_id: int = 0

    def __post_init__(self) -> None:
        _check_range("request_id", self.request_id, _U16)

    def encode(self) -> bytes:
        return _u16(self.command) + _u16(self.request_id)

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> CoreOk:
        _need(frame, 4, 4, "CoreOk")
        return cls(_read_u16(frame, 2))


@dataclass(frozen=True)
class CoreBinary:
    """A binary command for the JavaScript core (id >= 1000), after authentication::

        code (2) | payload (rest of the frame, >= 2 bytes: requestId + data)

    Ids 0x7B00-0x7BFF cannot be sent: their first byte is ``{``, which marks a JSON frame.
    """

    code: int
    payload: bytes

    def __post_init__(self) -> None:
        _check_range("code", self.code, _U16)
        if self.code < FIRST_CORE_COMMAND or self.code >> 8 == _JSON_FIRST_BYTE:
            raise ValueError("core command ids are >= 1000 and not 0x7Bxx")
        _check_max("payload", self.payload, 2, MAX_CORE_BINARY)

    def encode(self) -> bytes:
        return _u16(self.code) + self.payload

    @classmethod
    def _decode(cls, frame: bytes, sender: Sender) -> CoreBinary:
        _need(frame, 4, 2 + MAX_CORE_BINARY, "CoreBinary")
        return cls(_read_u16(frame, 0), frame[2:])


Message = Union[
    AuthRequest,
    AuthVerify,
    AgentInfo,
    AuthConfirm,
    ServerId,
    AgentCommitDate,
    HostInfo,
    CoreModule,
    CoreModuleHash,
    AgentUpdateBlock,
    AgentTag,
    CoreOk,
    CoreBinary,
]
"""Any binary message (the subclasses of :class:`CoreModule`/:class:`CoreModuleHash` included)."""

Decoded = Union[Message, dict[str, Any]]
"""What :func:`decode_message` returns: a message, or a JSON object."""

_Decoder = Callable[[bytes, Sender], Message]

# Which commands each side may send, before and after authentication. Anything else is an error.
_TABLES: Mapping[tuple[bool, Sender], Mapping[int, _Decoder]] = {
    (False, Sender.AGENT): {
        Command.AUTH_REQUEST: AuthRequest._decode,
        Command.AUTH_VERIFY: AuthVerify._decode,
        Command.AGENT_INFO: AgentInfo._decode,
        Command.AUTH_CONFIRM: AuthConfirm._decode,
        Command.SERVER_ID: ServerId._decode,
        Command.AGENT_COMMIT_DATE: AgentCommitDate._decode,
        Command.HOST_INFO: HostInfo._decode,
    },
    (False, Sender.SERVER): {
        Command.AUTH_REQUEST: AuthRequest._decode,
        Command.AUTH_VERIFY: AuthVerify._decode,
        Command.AUTH_CONFIRM: AuthConfirm._decode,
    },
    (True, Sender.AGENT): {
        Command.CORE_MODULE_HASH: CoreModuleHash._decode,
        Command.AGENT_HASH: AgentHash._decode,
        Command.AGENT_UPDATE_BLOCK: AgentUpdateBlock._decode,
        Command.AGENT_TAG: AgentTag._decode,
    },
    (True, Sender.SERVER): {
        Command.CORE_MODULE: CoreModule._decode,
        Command.COMPRESSED_CORE_MODULE: CompressedCoreModule._decode,
        Command.CORE_MODULE_HASH: CoreModuleHash._decode,
        Command.AGENT_HASH: AgentHash._decode,
        Command.AGENT_UPDATE: AgentUpdate._decode,
        Command.AGENT_UPDATE_BLOCK: AgentUpdateBlock._decode,
        Command.CORE_OK: CoreOk._decode,
    },
}


def decode_message(
    frame: bytes,
    authenticated: bool,
    *,
    sender: Sender = Sender.AGENT,
    max_json: Optional[int] = None,
) -> Decoded:
    """Decode one WebSocket message from ``sender``.

    Returns a message object, or a ``dict`` for a JSON frame (first byte ``{``). ``max_json``
    overrides the JSON size limit (:data:`MAX_PREAUTH_JSON` before authentication,
    :data:`MAX_JSON` after). Raises :class:`AgentProtocolError` and nothing else.
    """
    if not isinstance(frame, bytes):
        raise AgentProtocolError("a frame must be bytes")
    if len(frame) < 2:
        raise AgentProtocolError("frame shorter than a command id")
    if frame[0] == _JSON_FIRST_BYTE:
        limit = MAX_JSON if authenticated else MAX_PREAUTH_JSON
        if max_json is not None:
            limit = max_json
        return decode_json(frame, limit)
    if len(frame) > MAX_FRAME:
        raise AgentProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    code = _read_u16(frame, 0)
    decoder: Optional[_Decoder]
    if authenticated and code >= FIRST_CORE_COMMAND:
        decoder = CoreBinary._decode
    else:
        decoder = _TABLES[(authenticated, sender)].get(code)
    if decoder is None:
        phase = "after" if authenticated else "before"
        raise AgentProtocolError(f"command {code} not allowed from {sender.value} {phase} auth")
    try:
        return decoder(frame, sender)
    except ValueError as error:  # a field failed the message's own validation
        raise AgentProtocolError(f"command {code}: {error}") from None


# -- JSON --------------------------------------------------------------------------------------

# A "\uD800"-"\uDFFF" escape may decode to a lone surrogate, which later breaks UTF-8 encoding.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _clean_text(text: str) -> str:
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _scrub_surrogates(root: dict[str, Any]) -> dict[str, Any]:
    """Replace lone surrogates in every key and string (iteratively: no recursion limit)."""
    stack: list[Union[dict[str, Any], list[Any]]] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
            node.clear()
            for key, value in items:
                if isinstance(value, str):
                    value = _clean_text(value)
                elif isinstance(value, (dict, list)):
                    stack.append(value)
                node[_clean_text(key)] = value
        else:
            for index, value in enumerate(node):
                if isinstance(value, str):
                    node[index] = _clean_text(value)
                elif isinstance(value, (dict, list)):
                    stack.append(value)
    return root


def decode_json(frame: bytes, limit: int = MAX_JSON) -> dict[str, Any]:
    """Decode a JSON frame defensively: size limit first, then a JSON object or an error.

    Invalid UTF-8 becomes U+FFFD (as Node's ``toString('utf8')`` does); ``NaN``/``Infinity``,
    overflowing numbers and over-deep nesting are errors; lone surrogates become U+FFFD.
    """
    if len(frame) > limit:
        raise AgentProtocolError(f"JSON frame of {len(frame)} bytes exceeds {limit}")
    try:
        value = json.loads(
            frame.decode("utf-8", "replace"),
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as error:
        raise AgentProtocolError(f"invalid JSON: {type(error).__name__}") from None
    if not isinstance(value, dict):
        raise AgentProtocolError("JSON frame is not an object")
    result: dict[str, Any] = value
    if _SURROGATE_ESCAPE.search(frame):
        result = _scrub_surrogates(result)
    return result


def encode_json(value: Mapping[str, Any]) -> bytes:
    """Encode a JSON message compactly as UTF-8 (what MeshCentral's ``JSON.stringify`` sends)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )
