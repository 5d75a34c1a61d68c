"""A small blocking RFC 6455 WebSocket client over TLS for the benchmarks.

Blocking sockets keep the load generator simple and cheap (no reactor in the client
processes); it speaks just what meshd's and MeshCentral's endpoints need: text and binary
frames, pings answered, a fast path that counts binary bytes without copying them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
from typing import Any, Optional


_CONTEXT: Optional[ssl.SSLContext] = None


def _client_context() -> ssl.SSLContext:
    """One TLS client context per process: building one loads the system's CA store
    (about 20 ms), which would otherwise be counted in every connection's latency."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _CONTEXT.check_hostname = False
        _CONTEXT.verify_mode = ssl.CERT_NONE
    return _CONTEXT


class WebSocket:
    """A small blocking RFC 6455 client over TLS: enough for the relay and control.ashx."""

    def __init__(self, port: int, path: str, headers: Optional[dict[str, str]] = None) -> None:
        context = _client_context()
        raw = socket.create_connection(("127.0.0.1", port), timeout=120)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"no upgrade answer for {path[:60]}")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        self.buffer = bytearray(rest)

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def frame(self) -> tuple[int, bytes]:
        """The next data frame: (opcode, payload); pings are answered."""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(length)
            opcode = first & 0x0F
            if opcode == 8:
                raise ConnectionError(f"closed by the server: {payload!r}")
            if opcode == 9:
                self.send(payload, 10)
                continue
            if opcode in (1, 2):
                return opcode, payload

    def count_binary(self, total: int) -> int:
        """Read frames until ``total`` binary payload bytes arrived; fast path that does not
        copy payloads (the receiving side of the benchmark)."""
        got = 0
        buffer = self.buffer
        view_size = 1 << 20
        while got < total:
            # Header (at most 14 bytes for a server frame: 2 + 8, no mask).
            while len(buffer) < 2:
                buffer += self.sock.recv(view_size)
            second = buffer[1]
            length = second & 0x7F
            need = 2 + (2 if length == 126 else 8 if length == 127 else 0)
            while len(buffer) < need:
                buffer += self.sock.recv(view_size)
            if length == 126:
                length = struct.unpack_from("!H", buffer, 2)[0]
            elif length == 127:
                length = struct.unpack_from("!Q", buffer, 2)[0]
            opcode = buffer[0] & 0x0F
            if opcode == 8:
                raise ConnectionError("closed by the server")
            del buffer[:need]
            left = length
            take = min(left, len(buffer))
            del buffer[:take]
            left -= take
            while left > 0:
                chunk = self.sock.recv(min(view_size, max(left, 65536)))
                if not chunk:
                    raise ConnectionError("closed")
                if len(chunk) > left:
                    buffer += chunk[left:]
                    left = 0
                else:
                    left -= len(chunk)
            if opcode == 2:
                got += length
        return got

    def send(self, payload: bytes, opcode: int = 2) -> None:
        self.sock.sendall(self.header(len(payload), opcode) + payload)

    @staticmethod
    def header(length: int, opcode: int = 2) -> bytes:
        """A masked client frame header with a zero mask key (the payload is unchanged)."""
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        return head + b"\0\0\0\0"

    def close(self) -> None:
        try:
            self.sock.sendall(b"\x88\x80\0\0\0\0")
        except OSError:
            pass
        self.sock.close()

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(json.dumps(message).encode(), 1)

    def text(self) -> bytes:
        """The next data frame's payload."""
        return self.frame()[1]

    def until(self, action: bytes) -> bytes:
        """Frames until one whose action is ``action`` (checked on its first bytes)."""
        marker = b'"action":"' + action + b'"'
        while True:
            payload = self.text()
            if marker in payload[:200]:
                return payload
            if b'"action":"close"' in payload[:100]:
                raise ConnectionError(payload.decode())
