"""Tests for the Python agent core's relay side (agentsrc.core.tunnel, wsclient): URL
rules, rights, and the WebSocket client codec fed whole and byte by byte."""

from __future__ import annotations

import base64
import hashlib
import struct

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from agentsrc.core.tunnel import Tunnel, relay_url, terminal_allowed
from agentsrc.core.wsclient import MAX_MESSAGE, WebSocketClient, encode_frame, mask


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


class Harness:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bool]] = []
        self.opened = 0
        self.closed: list[str] = []
        self.client = WebSocketClient(
            "127.0.0.1", 443, "/meshrelay.ashx?id=1", pinned=None,
            on_open=lambda: setattr(self, "opened", self.opened + 1),
            on_message=lambda p, b: self.messages.append((p, b)),
            on_close=self.closed.append, random=lambda n: b"\x01" * n)
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)

    def accept(self) -> bytes:
        key = base64.b64encode(b"\x01" * 16)
        accept = base64.b64encode(hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" \
               b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"


class RelayUrlTests(TestCase):
    def test_star_means_control_channel_server(self) -> None:
        """*/ is replaced with the control channel's scheme, host and port; $ and @ escaped."""
        self.assertEqual(relay_url("*/meshrelay.ashx?id=a$b@c",
                                   "wss://example.com:4443/agent.ashx"),
                         "wss://example.com:4443/meshrelay.ashx?id=a%24b%40c")
        self.assertEqual(relay_url("*/d1/meshrelay.ashx?id=1", "wss://h/d1/agent.ashx"),
                         "wss://h/d1/meshrelay.ashx?id=1")

    def test_terminal_rights(self) -> None:
        """A terminal needs remote control and no NOTERMINAL, unless rights are full."""
        self.assertTrue(terminal_allowed(0xFFFFFFFF))
        self.assertTrue(terminal_allowed(8))
        self.assertFalse(terminal_allowed(8 | 512))
        self.assertFalse(terminal_allowed(256))
        self.assertFalse(terminal_allowed(None))
        self.assertFalse(terminal_allowed(True))


class _Manager:
    """What a Tunnel asks of its manager, recorded."""

    def __init__(self) -> None:
        self.reactor = self
        self.spawned: list[Any] = []
        self.log = Logger()
        self.ended_tunnels: list[Tunnel] = []

    def ended(self, tunnel: Tunnel) -> None:
        self.ended_tunnels.append(tunnel)

    def sessions_changed(self) -> None:
        pass

    def send(self, message: dict[str, Any]) -> None:
        pass

    def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
        self.spawned.append(args)
        return object()  # no process is started in this test


class GuestUsageTests(TestCase):
    def test_usages_limit_the_protocol(self) -> None:
        """A tunnel whose request lists soptions.usages (a guest of a sharing link) refuses
        any other protocol before running anything."""
        manager: Any = _Manager()
        tunnel = Tunnel(manager, {"rights": 8, "soptions": {"usages": [5, 10]},
                                  "guestname": "Guest"})
        tunnel.state = "active"
        tunnel._message(b"1", False)
        self.assertEqual(tunnel.state, "closed")
        self.assertEqual(manager.ended_tunnels, [tunnel])
        self.assertEqual(manager.spawned, [])
        # Without usages the same request would start the shell.
        manager = _Manager()
        tunnel = Tunnel(manager, {"rights": 8})
        tunnel.state = "active"
        tunnel._message(b"1", False)
        self.assertEqual(len(manager.spawned), 1)


class WebSocketClientTests(TestCase):
    def test_upgrade_request_and_open(self) -> None:
        """The client sends a version-13 upgrade and opens on a correct 101 answer."""
        h = Harness()
        request = h.transport.value()
        self.assertTrue(request.startswith(b"GET /meshrelay.ashx?id=1 HTTP/1.1\r\n"))
        self.assertIn(b"Sec-WebSocket-Version: 13", request)
        h.client.dataReceived(h.accept())
        self.assertEqual(h.opened, 1)

    def test_bad_accept_aborts(self) -> None:
        """A wrong Sec-WebSocket-Accept aborts the connection before it opens."""
        h = Harness()
        h.client.dataReceived(b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: x\r\n\r\n")
        self.assertEqual(h.opened, 0)
        self.assertTrue(h.transport.disconnecting or h.transport.disconnected)

    def test_frames_whole_and_byte_by_byte(self) -> None:
        """Text, binary, fragmented and 64-bit-length frames decode the same fed whole
        or one byte at a time."""
        stream = (server_frame(1, b"c") + server_frame(2, b"\x00" * 70000)
                  + server_frame(2, b"ab", fin=False) + server_frame(0, b"cd")
                  + server_frame(2, b"x" * 300))
        expected = [(b"c", False), (b"\x00" * 70000, True), (b"abcd", True),
                    (b"x" * 300, True)]
        for chunked in (False, True):
            h = Harness()
            h.client.dataReceived(h.accept())
            if chunked:
                for i in range(len(stream)):
                    h.client.dataReceived(stream[i:i + 1])
            else:
                h.client.dataReceived(stream)
            self.assertEqual(h.messages, expected)

    def test_ping_answered_with_masked_pong(self) -> None:
        """A ping gets a masked pong with the same payload."""
        h = Harness()
        h.client.dataReceived(h.accept())
        h.transport.clear()
        h.client.dataReceived(server_frame(9, b"hi"))
        self.assertEqual(h.transport.value(), encode_frame(10, b"hi", lambda n: b"\x01" * n))

    def test_oversized_and_masked_frames_refused(self) -> None:
        """A frame announcing more than the limit, or a masked server frame, aborts."""
        for bad in (bytes([0x82, 127]) + struct.pack(">Q", MAX_MESSAGE + 1),
                    bytes([0x82, 0x81, 1, 2, 3, 4, 5])):
            h = Harness()
            h.client.dataReceived(h.accept())
            h.client.dataReceived(bad)
            self.assertEqual(h.messages, [])
            self.assertTrue(h.transport.disconnecting or h.transport.disconnected)

    def test_mask_round_trip(self) -> None:
        """Masking twice gives the data back; client frames carry the mask bit."""
        data = bytes(range(256)) * 3 + b"xyz"
        self.assertEqual(mask(b"abcd", mask(b"abcd", data)), data)
        frame = encode_frame(2, b"hello", lambda n: b"abcd")
        self.assertEqual(frame[1] & 0x80, 0x80)
        self.assertEqual(mask(b"abcd", frame[6:]), b"hello")

    def test_close_frame_sent_once(self) -> None:
        """close() sends one close frame and nothing after it."""
        h = Harness()
        h.client.dataReceived(h.accept())
        h.transport.clear()
        h.client.close()
        h.client.close()
        h.client.send(b"late")
        self.assertEqual(h.transport.value(), encode_frame(8, struct.pack(">H", 1000),
                                                           lambda n: b"\x01" * n))


