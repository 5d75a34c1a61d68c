"""A small blocking RFC 6455 WebSocket client over TLS for the benchmarks.

Blocking sockets keep the load generator simple and cheap (no reactor in the client
processes); it speaks just what meshd's and MeshCentral's endpoints need: text and binary
frames, pings answered, a fast path that counts binary bytes without copying them, and
:meth:`WebSocket.pump`, which sends and receives at the same time on the one socket
(non-blocking, one thread: an SSL socket must not be read and written from two threads).
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import ssl
import struct
import time
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

    def peer_certificate(self) -> bytes:
        """The server's TLS certificate (DER), as this connection saw it."""
        der = self.sock.getpeercert(binary_form=True)
        if not der:
            raise ConnectionError("no server certificate")
        return der

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
                raise ConnectionError(f"closed by the server after {got} bytes")
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

    def pump(self, stream: bytes, frames: int, frame: int, total_in: int,
             expect: Optional[bytes] = None, timeout: float = 600.0
             ) -> tuple[int, float, float]:
        """Send ``stream`` (masked frames, see :meth:`masked_frames`) over and over until
        ``frames`` frames of ``frame`` payload bytes went out, while counting binary
        payload bytes coming in until ``total_in``; both at once on this socket.

        Returns (bytes received, seconds until the last byte was sent, seconds until the
        last byte was received).  ``expect``: the first binary frame received must carry
        exactly these bytes (checks that the server unmasked and forwarded it intact).
        """
        sock = self.sock
        sock.setblocking(False)
        selector = selectors.DefaultSelector()
        frames_per_stream = len(stream) // (len(self.header(frame)) + frame)
        view = memoryview(stream)
        offset, rounds_left = 0, -(-frames // frames_per_stream)
        last_round = frames - (rounds_left - 1) * frames_per_stream
        tail = len(stream) // frames_per_stream * last_round
        began = time.perf_counter()
        sent_at = received_at = 0.0
        got, left, binary = 0, 0, False
        head = b""  # a frame header split across reads
        first: Optional[bytearray] = bytearray() if expect is not None else None
        pongs: list[bytes] = []
        control = bytearray()
        control_opcode = 0
        deadline = began + timeout
        writing = rounds_left > 0
        retrying = False

        def events() -> int:
            return selectors.EVENT_READ | (selectors.EVENT_WRITE if writing or pongs else 0)

        selector.register(sock, events())
        try:
            while writing or got < total_in or pongs:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"pump: sent {frames - rounds_left} rounds, got {got}")
                ready = selector.select(1.0)
                for _key, mask in ready:
                    if mask & selectors.EVENT_WRITE:
                        # After a "want write" OpenSSL must be given the same bytes again,
                        # so pongs only go out between two sends of the stream.
                        try:
                            while pongs and not retrying:
                                sock.sendall(pongs[0])
                                pongs.pop(0)
                            while writing:
                                end = len(stream) if rounds_left > 1 else tail
                                retrying = True
                                offset += sock.send(view[offset:end])
                                retrying = False
                                if offset >= end:
                                    offset, rounds_left = 0, rounds_left - 1
                                    if rounds_left == 0:
                                        writing = False
                                        sent_at = time.perf_counter() - began
                                if pongs:
                                    break
                        except (ssl.SSLWantWriteError, ssl.SSLWantReadError,
                                BlockingIOError):
                            pass
                    if not mask & selectors.EVENT_READ:
                        continue
                    while True:
                        try:
                            chunk = sock.recv(1 << 18)
                        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                            break
                        if not chunk:
                            raise ConnectionError(f"connection closed after {got} bytes")
                        if head:
                            chunk, head = head + chunk, b""
                        position, size = 0, len(chunk)
                        while position < size:
                            if left:
                                take = min(left, size - position)
                                if binary:
                                    got += take
                                    if first is not None and len(first) < len(expect or b""):
                                        first += chunk[position:position + take]
                                elif control_opcode:
                                    control += chunk[position:position + take]
                                left -= take
                                position += take
                                if got >= total_in and not received_at:
                                    received_at = time.perf_counter() - began
                                if left == 0 and not binary and control_opcode:
                                    if control_opcode == 9:
                                        pongs.append(self.header(len(control), 10)
                                                     + bytes(control))
                                    elif control_opcode == 8:
                                        if writing or got < total_in:
                                            raise ConnectionError(
                                                f"closed by the server after {got} bytes: "
                                                f"{bytes(control)!r}")
                                        return got, sent_at, received_at
                                    control, control_opcode = bytearray(), 0
                                if binary and first is not None and left == 0:
                                    if bytes(first) != expect:
                                        raise ValueError("the first frame arrived altered")
                                    first = None
                                continue
                            if size - position < 2:
                                head = chunk[position:]
                                break
                            opcode = chunk[position] & 0x0F
                            length = chunk[position + 1] & 0x7F
                            need = 2 + (2 if length == 126 else 8 if length == 127 else 0)
                            if size - position < need:
                                head = chunk[position:]
                                break
                            if length == 126:
                                length = struct.unpack_from("!H", chunk, position + 2)[0]
                            elif length == 127:
                                length = struct.unpack_from("!Q", chunk, position + 2)[0]
                            position += need
                            binary = opcode == 2 or (opcode == 0 and binary)
                            control_opcode = opcode if opcode in (8, 9) else 0
                            left = length
                            if length == 0 and control_opcode:
                                if control_opcode == 8:
                                    if writing or got < total_in:
                                        raise ConnectionError(
                                            f"closed by the server after {got} bytes")
                                    return got, sent_at, received_at
                                pongs.append(self.header(0, 10))
                                control_opcode = 0
                    selector.modify(sock, events())
        finally:
            selector.close()
            sock.setblocking(True)
        return got, sent_at, received_at

    @classmethod
    def masked_frames(cls, block: bytes, count: int = 16) -> bytes:
        """``count`` binary client frames carrying ``block``, each masked with its own
        random key as browsers and agents do (so the server must really unmask them);
        built once, sent many times."""
        out = bytearray()
        size = len(block)
        plain = int.from_bytes(block, "little")
        for _ in range(count):
            key = os.urandom(4)
            while key == b"\0\0\0\0":
                key = os.urandom(4)
            repeated = (key * (size // 4 + 1))[:size]
            masked = (plain ^ int.from_bytes(repeated, "little")).to_bytes(size, "little")
            out += cls.header(size, 2, key) + masked
        return bytes(out)

    def send(self, payload: bytes, opcode: int = 2) -> None:
        self.sock.sendall(self.header(len(payload), opcode) + payload)

    @staticmethod
    def header(length: int, opcode: int = 2, key: bytes = b"\0\0\0\0") -> bytes:
        """A masked client frame header; with the default zero key the payload is sent as
        it is (small control messages; :meth:`masked_frames` uses real keys)."""
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        return head + key

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
