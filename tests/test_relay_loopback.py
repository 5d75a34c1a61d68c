"""The relay over real WebSockets on 127.0.0.1: pairing, close propagation,
back-pressure with a reader that stops reading (bounded server memory), and the frame
forwarder paired sides switch to (types, order, byte counts, recording, pings, errors)."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, Optional
from urllib.parse import quote

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from meshd.control.rights import SITERIGHT_ADMIN
from meshd.relay.protocol import relay_resource
from meshd.relay.server import RelayServer
from tests.test_control_session import World

FRAME = 64 * 1024


class Side(WebSocketClientProtocol):
    """A test client: records frames; optionally streams numbered binary frames."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[bytes, bool]] = []
        self.pongs = []
        self.received = 0
        self.opened: defer.Deferred[None] = defer.Deferred()
        self.connected_c: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.order_ok = True
        self.next_index = 0

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary and payload in (b"c", b"cr") and not self.connected_c.called:
            self.connected_c.callback(None)
        if isBinary and len(payload) == FRAME:
            if int.from_bytes(payload[:4], "big") != self.next_index:
                self.order_ok = False
            self.next_index += 1
            self.received += len(payload)
        else:
            self.frames.append((payload, isBinary))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"refused: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback(None)

    def onPong(self, payload: bytes) -> None:
        self.pongs.append(payload)

    pongs: list[bytes]


def client_frame(payload: bytes, opcode: int = 2) -> bytes:
    """A masked client frame built by hand (for bytes written straight to a socket)."""
    key = os.urandom(4)
    size = len(payload)
    head = (struct.pack("!BB", 0x80 | opcode, 0x80 | size) if size < 126 else
            struct.pack("!BBH", 0x80 | opcode, 0xFE, size) if size < 65536 else
            struct.pack("!BBQ", 0x80 | opcode, 0xFF, size))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class FakeRecording:
    """What the table writes to a recording: (payload, binary, from the user side)."""

    recorder: Any = None

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, bool, bool]] = []
        self.finished = False

    def frame(self, payload: bytes, binary: bool, from_user: bool) -> None:
        self.frames.append((payload, binary, from_user))


class FakeRecorder:
    def __init__(self) -> None:
        self.recordings: list[FakeRecording] = []

    def wants(self, protocol: Any, user_id: Any, node_id: Any) -> bool:
        return True

    def open(self, **kwargs: Any) -> FakeRecording:
        self.recordings.append(FakeRecording())
        return self.recordings[-1]

    def finished(self, recording: FakeRecording, **kwargs: Any) -> None:
        recording.finished = True


@implementer(IPushProducer)
class Streamer:
    """Writes ``count`` numbered 64 KiB frames, only while its transport wants data."""

    def __init__(self, side: Side, count: int) -> None:
        self.side = side
        self.count = count
        self.sent = 0
        self.paused = False
        self.done: defer.Deferred[None] = defer.Deferred()

    def start(self) -> None:
        assert self.side.transport is not None
        self.side.transport.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        burst = 0
        while not self.paused and self.sent < self.count and burst < 16:
            frame = self.sent.to_bytes(4, "big") * (FRAME // 4)
            self.side.sendMessage(frame, isBinary=True)
            self.sent += 1
            burst += 1
        if self.sent >= self.count:
            if not self.done.called:
                self.done.callback(None)
        elif not self.paused:
            reactor.callLater(0, self._pump)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            reactor.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self.paused = True


async def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        await deferLater(reactor, 0.02, lambda: None)
    return bool(predicate())


class LoopbackBase(TestCase):
    """A relay on a loopback port and helpers to open sides (no tests of its own)."""

    timeout = 60

    def setUp(self) -> None:
        self.world = World()
        self.admin_id = self.world.add_user("admin", SITERIGHT_ADMIN)
        self.recorder: Optional[FakeRecorder] = None
        self.relay = RelayServer(store=self.world.store, bus=self.world.bus, clock=reactor,
                                 auth=self.world.hub.auth, cookies=self.world.hub.cookies,
                                 recorder_for=lambda domain: self.recorder)
        root = Resource()
        # No handshake timers: Autobahn's batched timers outlive the test otherwise.
        root.putChild(b"meshrelay.ashx", relay_resource(
            self.relay, reactor, openHandshakeTimeout=0, closeHandshakeTimeout=0,
            autoPingInterval=0))
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.sides: list[Side] = []
        self.addCleanup(self._all_closed)

    async def _all_closed(self) -> None:
        for side in self.sides:
            if side.transport is not None and not side.closed.called:
                side.dropConnection(abort=True)
        await wait_for(lambda: all(s.closed.called for s in self.sides)
                       and len(self.relay.table) == 0)
        await deferLater(reactor, 0.05, lambda: None)

    def cookie(self, payload: dict[str, Any]) -> str:
        return self.successResultOf(defer.ensureDeferred(self.world.hub.cookies.encode(payload)))

    async def open(self, query: str, small_buffer: bool = False) -> Side:
        url = f"ws://127.0.0.1:{self.port.getHost().port}/meshrelay.ashx?{query}"
        factory = WebSocketClientFactory(url)
        factory.protocol = Side
        factory.setProtocolOptions(maxMessagePayloadSize=0, autoPingInterval=0,
                                   openHandshakeTimeout=0, closeHandshakeTimeout=0)
        connected: defer.Deferred[Side] = defer.Deferred()
        protocol_holder: list[Side] = []

        def build(addr: Any) -> Side:
            protocol = Side()
            protocol.factory = factory
            protocol_holder.append(protocol)
            return protocol

        factory.buildProtocol = build  # type: ignore[method-assign]
        connector = reactor.connectTCP("127.0.0.1", self.port.getHost().port, factory)
        side = await wait_for(lambda: bool(protocol_holder)) and protocol_holder[0]
        assert side
        self.sides.append(side)
        self.addCleanup(connector.disconnect)
        if small_buffer:
            await wait_for(lambda: side.transport is not None)
            side.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        del connected
        await side.opened
        return side

    def user_query(self, relay_id: str) -> str:
        auth = self.cookie({"userid": self.admin_id, "domainid": "", "ip": "127.0.0.1"})
        return f"browser=1&p=1&id={relay_id}&auth={quote(auth)}"

    def agent_query(self, relay_id: str) -> str:
        rauth = self.cookie({"ruserid": self.admin_id, "x": "1"})
        return f"p=1&id={relay_id}&rauth={quote(rauth)}"

class LoopbackRelayTests(LoopbackBase):
    async def test_pair_forward_and_close(self) -> None:
        """Over real sockets: both sides get c, text and binary frames cross with their
        type, and closing one side closes the other."""
        user = await self.open(self.user_query("pair1"))
        agent = await self.open(self.agent_query("pair1"))
        await user.connected_c
        await agent.connected_c
        user.sendMessage(b"1", isBinary=False)
        agent.sendMessage(b"\x01\x02", isBinary=True)
        self.assertTrue(await wait_for(lambda: (b"1", False) in agent.frames
                                       and (b"\x01\x02", True) in user.frames))
        user.sendClose()
        await agent.closed
        self.assertTrue(await wait_for(lambda: len(self.relay.table) == 0))

    async def test_unauthenticated_refused(self) -> None:
        """An upgrade with neither a user nor a relay cookie is refused before it opens."""
        with self.assertRaises(ConnectionError):
            await self.open("id=nobody&p=1")

    async def test_stalled_reader_bounds_server_memory(self) -> None:
        """A reader that stops reading stalls the writer: the server buffers a bounded
        amount, and everything arrives in order once the reader reads again."""
        count = 2560  # 160 MiB: more than every socket buffer on the way can hold
        user = await self.open(self.user_query("bp"))
        agent = await self.open(self.agent_query("bp"), small_buffer=True)
        await user.connected_c
        await agent.connected_c
        assert agent.transport is not None
        agent.transport.pauseProducing()  # the reader stops reading
        streamer = Streamer(user, count)
        streamer.start()
        # Wait until the writer is stalled: its count stops moving.
        last = -1
        for _ in range(100):
            await deferLater(reactor, 0.2, lambda: None)
            if streamer.sent == last and streamer.paused:
                break
            last = streamer.sent
        self.assertTrue(streamer.paused, "the writer was never paused")
        self.assertLess(streamer.sent, count, "nothing throttled the writer")
        server_sides = [self.relay.table.relay("bp").first.peer,
                        self.relay.table.relay("bp").second.peer]
        buffered = max(side.buffered_bytes() for side in server_sides)
        self.assertLess(buffered, 1024 * 1024, f"server buffered {buffered} bytes")
        self.assertTrue(self.relay.table.relay("bp").first.paused,
                        "the writer's socket is still read")
        agent.transport.resumeProducing()
        await streamer.done
        self.assertTrue(await wait_for(lambda: agent.received == count * FRAME, 30),
                        f"{agent.received} of {count * FRAME}")
        self.assertTrue(agent.order_ok)
        user.sendClose()
        await agent.closed


class ForwardingTests(LoopbackBase):
    """Paired sides move frames through meshd.relay.frames, not Autobahn's messages."""

    async def pair(self, relay_id: str) -> tuple[Side, Side, Any, Any]:
        """Both client sides (after c) and their server sides (user, agent)."""
        user = await self.open(self.user_query(relay_id))
        agent = await self.open(self.agent_query(relay_id))
        await user.connected_c
        await agent.connected_c
        relay = self.relay.table.relay(relay_id)
        assert relay is not None and relay.second is not None
        return user, agent, relay.first.peer, relay.second.peer

    async def test_frames_cross_with_types_order_and_counts(self) -> None:
        """Binary frames of every size (empty, small, 64 KiB, larger, fragmented) and text
        frames between them arrive in order with their types; the server sides forward
        with the frame forwarder; the byte counts for the session events are exact."""
        user, agent, server_user, server_agent = await self.pair("fw")
        sent = [(b"1", False), (b"", True), (b"\x01\x02", True), (os.urandom(FRAME - 4), True),
                ('{"type":"options","é":1}'.encode(), False), (os.urandom(200000), True),
                (b"tail", True)]
        for payload, binary in sent:
            user.sendMessage(payload, isBinary=binary)
        user.sendMessage(b"fragmented-" * 1000, isBinary=True, fragmentSize=3000)
        agent.sendMessage(b"reply", isBinary=True)
        expected = sent + [(b"fragmented-" * 1000, True)]
        self.assertTrue(await wait_for(lambda: len(agent.frames) >= len(expected)
                                       and (b"reply", True) in user.frames))
        self.assertEqual(agent.frames[1:], expected)  # after c
        self.assertIsNotNone(server_user._forwarder)
        self.assertIsNotNone(server_agent._forwarder)
        relay = self.relay.table.relay("fw")
        assert relay is not None and relay.second is not None
        self.assertEqual(relay.first.received_bytes, sum(len(p) for p, _ in expected))
        self.assertEqual(relay.second.received_bytes, len(b"reply"))
        user.sendClose()
        await agent.closed

    async def test_recording_sees_every_message(self) -> None:
        """A recorded session ("cr") still gives the recording every message with its
        type and direction (a fragmented one as one message) while forwarding."""
        self.recorder = FakeRecorder()
        user, agent, server_user, _ = await self.pair("rec")
        self.assertIn((b"cr", False), user.frames)
        user.sendMessage(b"1", isBinary=False)
        user.sendMessage(b"typed", isBinary=True)
        agent.sendMessage(b"shown" * 5000, isBinary=True, fragmentSize=7000)
        agent.sendMessage(b"{}", isBinary=False)
        self.assertTrue(await wait_for(lambda: len(agent.frames) >= 3 and len(user.frames) >= 3))
        [recording] = self.recorder.recordings
        self.assertEqual(recording.frames, [(b"1", False, True), (b"typed", True, True),
                                            (b"shown" * 5000, True, False), (b"{}", False, False)])
        self.assertIsNotNone(server_user._forwarder)
        user.sendClose()
        await agent.closed
        self.assertTrue(await wait_for(lambda: recording.finished))

    async def test_ping_answered_while_forwarding(self) -> None:
        """A ping between binary frames is answered by the server, and the frames around
        it still cross."""
        user, agent, server_user, _ = await self.pair("ping")
        user.sendMessage(b"before", isBinary=True)
        user.sendPing(b"are-you-there")
        user.sendMessage(b"after", isBinary=True)
        self.assertTrue(await wait_for(lambda: user.pongs == [b"are-you-there"]
                                       and (b"after", True) in agent.frames))
        self.assertEqual(agent.frames[1:], [(b"before", True), (b"after", True)])
        self.assertIsNotNone(server_user._forwarder)
        user.sendClose()
        await agent.closed

    async def test_protocol_error_closes_both(self) -> None:
        """An unmasked client frame while forwarding fails that connection (Autobahn's
        handling) and the other side is closed."""
        user, agent, server_user, _ = await self.pair("err")
        user.sendMessage(b"fine", isBinary=True)
        self.assertTrue(await wait_for(lambda: (b"fine", True) in agent.frames))
        self.assertIsNotNone(server_user._forwarder)
        assert user.transport is not None
        user.transport.write(b"\x82\x03bad")
        await agent.closed
        await user.closed
        self.assertTrue(await wait_for(lambda: len(self.relay.table) == 0))

    async def test_oversized_frame_refused(self) -> None:
        """A frame header above the size limit fails the connection before any payload."""
        user, agent, server_user, _ = await self.pair("big")
        user.sendMessage(b"fine", isBinary=True)
        self.assertTrue(await wait_for(lambda: (b"fine", True) in agent.frames))
        assert user.transport is not None
        user.transport.write(b"\x82\xff" + struct.pack("!Q", 1 << 30) + b"\0\0\0\0")
        await agent.closed
        await user.closed

    async def test_switch_waits_for_the_end_of_a_frame(self) -> None:
        """A side whose frame is half parsed by Autobahn when forwarding could start lets
        Autobahn finish that message, then forwards the rest of the same read."""
        user, agent, _server_user, server_agent = await self.pair("half")
        server_agent._paired_side = lambda: None  # hold the switch back for a moment
        first, second = client_frame(b"A" * 70000), client_frame(b"B" * 1000)
        assert agent.transport is not None
        agent.transport.write(first[:30000])
        self.assertTrue(await wait_for(lambda: server_agent.current_frame is not None))
        self.assertIsNone(server_agent._forwarder)
        del server_agent._paired_side
        agent.transport.write(first[30000:] + second)
        self.assertTrue(await wait_for(lambda: len(user.frames) >= 3))
        self.assertEqual(user.frames[1:], [(b"A" * 70000, True), (b"B" * 1000, True)])
        self.assertIsNotNone(server_agent._forwarder)
        user.sendClose()
        await agent.closed
