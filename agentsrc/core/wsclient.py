"""A small WebSocket client (RFC 6455) for relay tunnels, on plain Twisted.

The core may only use the standard library and Twisted (see the package docstring), so the
relay connection is spoken here rather than with Autobahn:

* TLS accepts any certificate during the handshake, then the peer's certificate must match
  one of the pinned SHA-384 hashes (``servertlshash`` from the tunnel request, or the control
  channel's certificate) before a single byte of HTTP is sent; else the connection is
  aborted ("BadCert", as the real agent does).
* Opening handshake: ``GET path?query`` with a random key; the answer must be ``101`` with
  the right ``Sec-WebSocket-Accept`` and arrive within :data:`MAX_HEADER` bytes.
* Frames: client frames are masked; server frames must not be; a message is at most
  :data:`MAX_MESSAGE` bytes (checked on the header, before the payload is buffered);
  ping → pong; close → close back and drop.

The transport is exposed so a caller can register producers on it (back-pressure).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import Callable, Optional
from urllib.parse import urlsplit

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["MAX_MESSAGE", "WebSocketClient", "mask", "parse_url"]

MAX_MESSAGE = 16 * 1024 * 1024
MAX_HEADER = 16 * 1024
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class ProtocolError(Exception):
    """The server broke the WebSocket protocol."""


def mask(key: bytes, data: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (done on big integers: fast)."""
    if not data:
        return data
    length = len(data)
    pad = (key * (length // 4 + 1))[:length]
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(length, "big")


def parse_url(url: str) -> tuple[bool, str, int, str]:
    """``wss://host:port/path?query`` → (tls, host, port, path with query)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {url[:80]!r}")
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return tls, parts.hostname, port, path


def encode_frame(opcode: int, payload: bytes, random: Callable[[int], bytes] = os.urandom
                 ) -> bytes:
    """One final, masked client frame."""
    length = len(payload)
    head = bytes([0x80 | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", length)
    key = random(4)
    return head + key + mask(key, payload)


@implementer(IHandshakeListener)
class WebSocketClient(Protocol):
    """One client connection; callbacks: ``on_open()``, ``on_message(payload, binary)``,
    ``on_close()`` (always, once)."""

    def __init__(self, host: str, port: int, path: str, *,
                 pinned: Optional[frozenset[str]], on_open: Callable[[], None],
                 on_message: Callable[[bytes, bool], None], on_close: Callable[[str], None],
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self._host, self._port, self._path = host, port, path
        self._pinned = pinned  # None: plain ws://, no certificate to check
        self._on_open, self._on_message, self._on_close = on_open, on_message, on_close
        self._random = random
        self._key = base64.b64encode(random(16))
        self._buffer = b""
        self._open = False
        self._closed = False
        self._close_sent = False
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._fragment_size = 0
        self.why = "closed"

    # -- connection ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        if self._pinned is None:
            self._send_upgrade()

    def handshakeCompleted(self) -> None:
        """TLS is up: check the pinned certificate hash before speaking."""
        assert self.transport is not None
        cert = self.transport.getPeerCertificate()  # type: ignore[attr-defined]
        if cert is None or not self._pinned:
            return self._abort("BadCert")
        from OpenSSL import crypto

        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        full = hashlib.sha384(der).hexdigest()
        key = hashlib.sha384(crypto.dump_publickey(crypto.FILETYPE_ASN1, cert.get_pubkey())
                             ).hexdigest()
        if full not in self._pinned and key not in self._pinned:
            return self._abort("BadCert")
        self._send_upgrade()

    def _send_upgrade(self) -> None:
        assert self.transport is not None
        host = self._host if ":" not in self._host else f"[{self._host}]"
        request = (f"GET {self._path} HTTP/1.1\r\nHost: {host}:{self._port}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {self._key.decode()}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n")
        self.transport.write(request.encode("utf-8"))

    def _abort(self, why: str) -> None:
        self.why = why
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        try:
            if not self._open:
                if not self._read_upgrade():
                    return
            while self._buffer and not self._closed:
                if not self._read_frame():
                    break
        except ProtocolError as e:
            self._abort(str(e))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._open = False
        if not self._closed:
            self._closed = True
            self._on_close(self.why)

    # -- opening handshake ---------------------------------------------------------------

    def _read_upgrade(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER:
                raise ProtocolError("response header too long")
            return False
        head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4:]
        lines = head.split("\r\n")
        status = lines[0].split(" ")
        if len(status) < 2 or status[1] != "101":
            raise ProtocolError(f"upgrade refused: {lines[0][:80]}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise ProtocolError("bad Sec-WebSocket-Accept")
        self._open = True
        self._on_open()
        return True

    # -- frames --------------------------------------------------------------------------

    def _read_frame(self) -> bool:
        buf = self._buffer
        if len(buf) < 2:
            return False
        fin, opcode = buf[0] & 0x80, buf[0] & 0x0F
        if buf[0] & 0x70:
            raise ProtocolError("reserved bits set")
        if buf[1] & 0x80:
            raise ProtocolError("masked server frame")
        length, offset = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return False
            length, offset = struct.unpack(">H", buf[2:4])[0], 4
        elif length == 127:
            if len(buf) < 10:
                return False
            length, offset = struct.unpack(">Q", buf[2:10])[0], 10
        if opcode >= 8 and (length > 125 or not fin):
            raise ProtocolError("bad control frame")
        if length > MAX_MESSAGE or self._fragment_size + length > MAX_MESSAGE:
            raise ProtocolError("message too big")
        if len(buf) < offset + length:
            return False
        payload = buf[offset:offset + length]
        self._buffer = buf[offset + length:]
        if opcode == OP_PING:
            self._write(OP_PONG, payload)
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            self.why = "closed by the server"
            self.close()
            assert self.transport is not None
            self.transport.loseConnection()
            self._closed = True
            self._on_close(self.why)
        elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            if opcode != OP_CONT:
                if self._fragments:
                    raise ProtocolError("new message inside a fragmented one")
                self._fragment_opcode = opcode
            elif not self._fragments:
                raise ProtocolError("continuation without a message")
            self._fragments.append(payload)
            self._fragment_size += length
            if fin:
                message = b"".join(self._fragments)
                binary = self._fragment_opcode == OP_BINARY
                self._fragments, self._fragment_size = [], 0
                self._on_message(message, binary)
        else:
            raise ProtocolError("unknown opcode")
        return True

    # -- sending -------------------------------------------------------------------------

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self._close_sent:
            self.transport.write(encode_frame(opcode, payload, self._random))

    def send(self, payload: bytes, binary: bool = True) -> None:
        if self._open:
            self._write(OP_BINARY if binary else OP_TEXT, payload)

    def close(self, code: int = 1000) -> None:
        """Send the close frame (once); the server then drops the connection."""
        if self._close_sent or self.transport is None:
            return
        self._write(OP_CLOSE, struct.pack(">H", code))
        self._close_sent = True
        self._open = False
