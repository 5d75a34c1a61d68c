"""Fuzz tests for the MPS server: malformed, truncated, oversized and out-of-order APF, over
real TLS (200 seeded cases, each followed by a good device logging in) and in memory
(many more cases through StringTransport).  Any exception inside the server is logged and
fails the test; afterwards nothing may be left in presence or the connection table."""

from __future__ import annotations

import random
import struct
import uuid
from typing import Any, Callable, Optional

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd.mps import apf
from tests.cira_client import client_context
from tests.test_mps_protocol import SYSTEM_ID, MpsServerTestCase

SEED = 0x4D505346  # "MPSF"
TLS_CASES = 200
MEMORY_CASES = 2000


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


class CaseMaker:
    """Seeded generator of hostile byte streams, built around a valid login."""

    def __init__(self, rng: random.Random, user: str, password: bytes) -> None:
        self.rng = rng
        self.user = user
        self.password = password

    def login(self, system_id: uuid.UUID = SYSTEM_ID) -> list[apf.Message]:
        return [apf.ProtocolVersion(1, 0, 0, system_id), apf.ServiceRequest(apf.AUTH_SERVICE),
                apf.UserAuthRequest(self.user, apf.PFWD_SERVICE, "password", self.password),
                apf.ServiceRequest(apf.PFWD_SERVICE), apf.TcpipForward("", 16992)]

    def stream(self, messages: list[apf.Message]) -> bytes:
        return b"".join(m.encode() for m in messages)

    def pool(self) -> list[apf.Message]:
        """Valid messages of every kind, for shuffling out of order."""
        rng = self.rng
        cid = rng.choice([0, 4, 5, 77, 0xFFFFFFFF])
        return [
            apf.ProtocolVersion(rng.choice([1, 2, 0]), 0, 0, uuid.UUID(int=rng.getrandbits(128))),
            apf.ServiceRequest(apf.AUTH_SERVICE), apf.ServiceRequest(apf.PFWD_SERVICE),
            apf.ServiceRequest("ssh-userauth"),
            apf.UserAuthRequest(self.user, apf.PFWD_SERVICE, "password", self.password),
            apf.UserAuthRequest(self.user, apf.PFWD_SERVICE, "password", b"wrong"),
            apf.UserAuthRequest(self.user, apf.PFWD_SERVICE, "none", None),
            apf.TcpipForward("", rng.choice([16992, 16993, 5900, 70000])),
            apf.CancelTcpipForward("", 16992),
            apf.UdpSendTo("a", 1, "b", 2, b"x" * rng.randint(0, 50), rng.random() < 0.5),
            apf.KeepAliveRequest(rng.getrandbits(32)), apf.KeepAliveReply(1),
            apf.KeepAliveOptionsReply(30, 0),
            apf.ChannelOpen("forwarded-tcpip", cid, 1000, "", 16992, "", 1),
            apf.ChannelOpenConfirmation(cid, 9, rng.getrandbits(32)),
            apf.ChannelOpenFailure(cid, 2),
            apf.ChannelWindowAdjust(cid, rng.choice([1, 0xFFFFFFFF])),
            apf.ChannelData(cid, b"y" * rng.randint(0, 40)),
            apf.ChannelClose(cid),
            apf.Disconnect(11),
            apf.JsonControl('{"action":"connType","value":%d}' % rng.randint(0, 3)),
            apf.JsonControl("not json"), apf.JsonControl('{"action":"meiState"}'),
        ]

    def case(self) -> tuple[str, bytes]:
        """One hostile stream and the name of its kind."""
        rng = self.rng
        kind = rng.choice(["random", "after_version", "after_login", "truncated", "oversized",
                           "out_of_order", "mutated", "channel_abuse", "http"])
        login = self.stream(self.login(uuid.UUID(int=rng.getrandbits(128))))
        if kind == "random":
            data = rng.randbytes(rng.randint(1, 300))
        elif kind == "after_version":
            data = self.login()[0].encode() + rng.randbytes(rng.randint(1, 200))
        elif kind == "after_login":
            data = login + rng.randbytes(rng.randint(1, 200))
        elif kind == "truncated":
            data = login[:rng.randint(1, len(login) - 1)]
        elif kind == "oversized":
            data = rng.choice(self.oversized(login))
        elif kind == "out_of_order":
            pool = self.pool()
            data = self.stream([rng.choice(pool) for _ in range(rng.randint(1, 8))])
        elif kind == "mutated":
            data = bytearray(login + apf.KeepAliveRequest(5).encode())
            for _ in range(rng.randint(1, 5)):
                at = rng.randrange(len(data))
                action = rng.random()
                if action < 0.5:
                    data[at] = rng.randrange(256)
                elif action < 0.75:
                    del data[at]
                else:
                    data[at:at] = bytes([rng.randrange(256)])
            data = bytes(data)
        elif kind == "channel_abuse":
            pool = self.pool()[12:19]
            data = login + self.stream([rng.choice(pool) for _ in range(rng.randint(1, 6))])
        else:
            data = rng.choice([b"GET " + rng.randbytes(50), b"G" + rng.randbytes(20),
                               b"HEAD /" + b"a" * 5000, b"GET /x HTTP/1.1\r\n\r\n"])
        return kind, data

    def oversized(self, login: bytes) -> list[bytes]:
        big = self.rng.choice([2049, 70000, 0x7FFFFFFF, 0xFFFFFFFF])
        return [
            bytes([apf.MessageType.SERVICE_REQUEST]) + _u32(big) + b"a" * 100,
            bytes([apf.MessageType.USERAUTH_REQUEST]) + _u32(len(self.user))
            + self.user.encode() + _u32(big),
            bytes([apf.MessageType.JSON_CONTROL]) + _u32(apf.MAX_JSON - 1) + b"{" * 80000,
            bytes([apf.MessageType.GLOBAL_REQUEST]) + _u32(13) + b"tcpip-forward\x01"
            + _u32(big),
            login + bytes([apf.MessageType.CHANNEL_DATA]) + _u32(4) + _u32(big) + b"z" * 64,
            login + bytes([apf.MessageType.GLOBAL_REQUEST]) + _u32(25)
            + b"udp-send-to@amt.intel.com\x00" + _u32(1) + b"a" + _u32(1) + _u32(1) + b"b"
            + _u32(1) + _u32(big),
        ]

    def chunks(self, data: bytes) -> list[bytes]:
        """Whole, or cut at random places (each piece its own TLS record)."""
        if self.rng.random() < 0.5 or len(data) < 2:
            return [data]
        cuts = sorted(self.rng.sample(range(1, len(data)), min(len(data) - 1,
                                                               self.rng.randint(1, 8))))
        return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


@implementer(IHandshakeListener)
class RawClient(Protocol):
    """Sends bytes over TLS and notes what comes back."""

    def __init__(self) -> None:
        self.secure: defer.Deferred[None] = defer.Deferred()
        self.done: defer.Deferred[None] = defer.Deferred()
        self.received = bytearray()
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True

    def handshakeCompleted(self) -> None:
        self.secure.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        if not self.secure.called:
            self.secure.errback(reason)
        self.done.callback(None)


class TlsFuzzTests(MpsServerTestCase):
    """Hostile devices over real TLS; a good device logs in after each."""

    async def send_case(self, chunks: list[bytes]) -> RawClient:
        client = RawClient()
        reactor.connectSSL("127.0.0.1", self.port.getHost().port,
                           ClientFactory.forProtocol(lambda: client), client_context())
        try:
            await client.secure
        except Exception:
            return client  # the server closed during the handshake: fine
        for chunk in chunks:
            if not client.connected:
                break
            client.transport.write(chunk)
            await deferLater(reactor, 0, lambda: None)
        # Give the server a moment to react, then hang up ourselves.
        hangup = reactor.callLater(0.02, lambda: client.connected
                                   and client.transport.abortConnection())
        await client.done
        if hangup.active():
            hangup.cancel()
        for protocol in list(self.factory.connections):
            await protocol.when_lost()
        return client

    async def good_device(self) -> None:
        device = await self.ready_device(system_id=uuid.uuid4())
        self.assertEqual(await device.keepalive(7), 7)
        await device.close()
        for protocol in list(self.factory.connections):
            await protocol.when_lost()

    async def test_hostile_streams_then_good_device(self) -> None:
        """200 seeded hostile streams never break the server; a good device logs in after each."""
        maker = CaseMaker(random.Random(SEED), self.user, self.password)
        kinds: dict[str, int] = {}
        for _ in range(TLS_CASES):
            kind, data = maker.case()
            kinds[kind] = kinds.get(kind, 0) + 1
            await self.send_case(maker.chunks(data))
            await self.good_device()
        self.assertEqual(len(kinds), 9, kinds)
        self.assertEqual(self.presence.online(), [])
        self.assertEqual(self.factory.connections, frozenset())
        stats = self.factory.stats
        self.assertEqual((stats.connections, stats.devices, stats.channels_open), (0, 0, 0))
        self.assertGreater(stats.protocol_errors, 20)
        self.assertGreaterEqual(stats.auth_successes, TLS_CASES)


class MemoryFuzzTests(MpsServerTestCase):
    """Many more hostile streams straight into the protocol (StringTransport, no sockets)."""

    def run_stream(self, chunks: list[bytes], after: Optional[Callable[[Any], None]] = None
                   ) -> StringTransport:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for chunk in chunks:
            if transport.disconnecting:
                break
            protocol.dataReceived(chunk)
        if after is not None:
            after(protocol)
        self.clock.advance(100)  # every deadline passes
        protocol.connectionLost(Failure(ConnectionError("test over")))
        return transport

    def test_hostile_streams_in_memory(self) -> None:
        """2000 seeded hostile streams, whole or split, leave no device, channel or timer."""
        maker = CaseMaker(random.Random(SEED + 1), self.user, self.password)
        for _ in range(MEMORY_CASES):
            _, data = maker.case()
            self.run_stream(maker.chunks(data))
        self.assertEqual(self.presence.online(), [])
        self.assertEqual(self.factory.devices(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        stats = self.factory.stats
        self.assertEqual((stats.connections, stats.devices, stats.channels_open), (0, 0, 0))

    def test_every_byte_split(self) -> None:
        """A valid session fed one byte at a time reaches the ready state and answers."""
        maker = CaseMaker(random.Random(SEED), self.user, self.password)
        data = maker.stream(maker.login() + [apf.KeepAliveRequest(9)])

        def check(protocol: Any) -> None:
            self.assertEqual(self.factory.devices(), [protocol.node_id])

        transport = self.run_stream([data[i:i + 1] for i in range(len(data))], check)
        parser = apf.ApfParser(apf.Direction.TO_DEVICE)
        parser.expect_request_reply(True)
        replies = parser.feed(transport.value())
        self.assertEqual(replies[-2:], [apf.KeepAliveReply(9),
                                        apf.Disconnect(apf.DisconnectReason.CONNECTION_TIMED_OUT)])

    def test_preauth_buffer_cap(self) -> None:
        """A huge JSON_CONTROL before login is cut off at 72 KiB, not buffered to 1 MiB."""
        head = bytes([apf.MessageType.JSON_CONTROL]) + _u32(apf.MAX_JSON - 1)
        transport = self.run_stream([head] + [b"{" * 8192] * 20)
        self.assertTrue(transport.value().endswith(
            apf.Disconnect(apf.DisconnectReason.PROTOCOL_ERROR).encode()))
        self.assertEqual(self.factory.stats.protocol_errors, 1)
