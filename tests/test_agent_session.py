"""Tests for meshd.agent.session and meshd.agent.server's AgentManager, without sockets.

The agent side is the spec-built FakeAgent of tests.test_agent_handshake.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meshd.agent import identity
from meshd.agent.core import Core
from meshd.agent.server import AgentManager
from meshd.agent.session import MAX_CORE_PUSHES, AgentSession
from meshd.events import LocalEventBus
from meshd.presence import CONN_AGENT, LocalPresence
from meshd.store.memory import MemoryStore
from tests.test_agent_handshake import (
    MESH_ID,
    FakeAgent,
    expected_node_id,
    server_agent_identity,
    web_full_hash,
)

MESH_KEY = identity.mesh_key(identity.mesh_id_to_str(MESH_ID))


class Wire:
    """One side of a fake connection: what the server sent, and whether it closed."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def close(self) -> None:
        self.closed = True


class SessionTests(TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.store.set({"_id": MESH_KEY, "type": "mesh", "mtype": 2, "name": "g", "domain": ""})
        self.clock = Clock()
        self.clock.advance(1000)
        self.bus = LocalEventBus()
        self.events: list[dict[str, Any]] = []
        self.bus.subscribe(["*"], self.events.append)
        self.presence = LocalPresence()
        self.core: Optional[Core] = None
        cert, key = server_agent_identity()
        self.manager = AgentManager(
            store=self.store, presence=self.presence, bus=self.bus, clock=self.clock,
            agent_cert=cert, agent_key=key, tls_hashes=lambda: {web_full_hash()},
            run_crypto=lambda f, *a: defer.maybeDeferred(f, *a),
            core_provider=lambda info: self.core)

    def connect(self, agent: Optional[FakeAgent] = None) -> tuple[AgentSession, Wire, FakeAgent]:
        """Run a whole handshake between a FakeAgent and a new session."""
        agent = agent or FakeAgent()
        wire = Wire()
        session = AgentSession(self.manager, wire.send, wire.close, "127.0.0.1")
        session.start()
        pending = list(agent.hello())
        handled = 0
        while pending or handled < len(wire.sent):
            while handled < len(wire.sent):
                frame = wire.sent[handled]
                handled += 1
                if int.from_bytes(frame[:2], "big") in (1, 2, 4):
                    pending.extend(agent.on_server(frame))
            if pending:
                session.frame_received(pending.pop(0))
        return session, wire, agent

    async def test_admitted_device_online(self) -> None:
        """An agent of a known group is confirmed, recorded, online, and asked for its core."""
        session, wire, agent = self.connect()
        self.assertTrue(agent.confirmed)
        node_key = "node//" + expected_node_id(agent.cert)
        self.assertEqual(session.node_key, node_key)
        node = await self.store.get(node_key)
        assert node is not None
        self.assertEqual((node["meshid"], node["name"], node["agent"]["id"]), (MESH_KEY, "vm", 6))
        self.assertEqual(self.presence.state(node_key), CONN_AGENT)
        self.assertEqual(wire.sent[-1], b"\x00\x0b\x00\x00")
        actions = [e["action"] for e in self.events]
        self.assertIn("addnode", actions)
        self.assertIn("nodeconnect", actions)
        [power] = await self.store.get_power_events(node_key)
        self.assertEqual(power["power"], 1)

    async def test_unknown_group_held_then_closed(self) -> None:
        """An unknown group gets no confirmation; the socket is held, then closed at the deadline."""
        await self.store.remove(MESH_KEY)
        session, wire, agent = self.connect()
        self.assertFalse(agent.confirmed)
        self.assertFalse(wire.closed)
        self.assertEqual(self.manager.stats["refused"], 1)
        self.clock.advance(61)
        self.assertTrue(wire.closed)
        self.assertEqual(self.presence.online(), [])

    def test_bad_signature_refused(self) -> None:
        """A bad agent signature is refused and nothing is recorded."""
        agent = FakeAgent(sign=lambda data: bytes(256))
        session, wire, agent = self.connect(agent)
        self.assertFalse(agent.confirmed)
        self.assertIsNone(session.node_key)
        self.assertEqual(self.manager.stats["refused"], 1)

    def test_second_connection_replaces_first(self) -> None:
        """A new connection of the same node closes the old one and keeps the node online."""
        first, first_wire, agent = self.connect()
        second, second_wire, _ = self.connect(FakeAgent(node=(agent.cert, agent.key)))
        self.assertTrue(first_wire.closed)
        first.connection_lost()
        assert second.node_key is not None
        self.assertEqual(self.presence.state(second.node_key), CONN_AGENT)
        self.assertIs(self.presence.get(second.node_key, CONN_AGENT).handle, second)
        self.assertEqual(self.manager.stats["replaced"], 1)

    async def test_disconnect_offline(self) -> None:
        """A lost connection marks the node offline with a power event."""
        session, _wire, _agent = self.connect()
        node_key = session.node_key
        session.connection_lost()
        self.assertEqual(self.presence.state(node_key), 0)
        powers = [p["power"] for p in await self.store.get_power_events(node_key)]
        self.assertEqual(powers, [1, 0])
        connects = [e for e in self.events if e["action"] == "nodeconnect"]
        self.assertEqual([e["conn"] for e in connects], [CONN_AGENT, 0])

    def test_core_push_and_ok(self) -> None:
        """A different core is pushed; the matching hash then gets CoreOk."""
        self.core = Core.from_blob("test", b"\x00\x00\x00\x00print('core')")
        session, wire, _agent = self.connect()
        session.frame_received(b"\x00\x0b\x00\x00")  # no core yet
        self.assertEqual(wire.sent[-1], b"\x00\x0a\x00\x00" + self.core.hash + self.core.blob)
        session.frame_received(b"\x00\x0b\x00\x00" + self.core.hash)
        self.assertEqual(wire.sent[-3], b"\x00\x10\x00\x00")
        self.assertIn(b'"serverInfo"', wire.sent[-2])

    def test_core_push_loop_guard(self) -> None:
        """An agent that never takes the core is pushed at most MAX_CORE_PUSHES times."""
        self.core = Core.from_blob("test", b"\x00\x00\x00\x00x")
        session, wire, _agent = self.connect()
        for _ in range(MAX_CORE_PUSHES + 2):
            session.frame_received(b"\x00\x0b\x00\x00")
        pushes = [f for f in wire.sent if f.startswith(b"\x00\x0a")]
        self.assertEqual(len(pushes), MAX_CORE_PUSHES)
        self.assertEqual(wire.sent[-1], b"\x00\x10\x00\x00")

    def test_json_ping_any_frame_type(self) -> None:
        """JSON is recognised by content; ping gets pong."""
        session, wire, _agent = self.connect()
        session.frame_received(b'{"action":"ping"}')
        self.assertEqual(wire.sent[-1], b'{"action":"pong"}')

    async def test_coreinfo_updates_node(self) -> None:
        """coreinfo updates the device record and tells users (changenode) when
        something changed, and only then."""
        session, _wire, _agent = self.connect()
        heard: list[dict[str, Any]] = []
        self.bus.subscribe([session.node_key], heard.append)
        coreinfo = (b'{"action":"coreinfo","osdesc":"Debian 12","value":"v1",'
                    b'"root":true}')
        session.frame_received(coreinfo)
        node = await self.store.get(session.node_key)
        assert node is not None
        self.assertEqual((node["osdesc"], node["agent"]["core"], node["agent"]["root"]),
                         ("Debian 12", "v1", True))
        [event] = [e for e in heard if e.get("action") == "changenode"]
        self.assertEqual((event["nodeid"], event["node"]["osdesc"], event["nolog"]),
                         (session.node_key, "Debian 12", 1))
        session.frame_received(coreinfo)
        await self.store.get(session.node_key)
        self.assertEqual(len([e for e in heard if e.get("action") == "changenode"]), 1)

    def test_garbage_after_auth_closes(self) -> None:
        """A malformed binary frame after authentication closes that connection only."""
        session, wire, _agent = self.connect()
        session.frame_received(b"\x00")
        self.assertTrue(wire.closed)

    def test_agent_messages_published(self) -> None:
        """msg replies from the agent are published for user sessions."""
        session, _wire, _agent = self.connect()
        got: list[dict[str, Any]] = []
        self.bus.subscribe(["agent:" + session.node_key], got.append)
        session.frame_received(b'{"action":"msg","type":"runcommands","result":"hi",'
                               b'"responseid":"r1"}')
        self.assertEqual(got[0]["message"]["result"], "hi")

    def test_send_to_node(self) -> None:
        """JSON can be sent to a connected node by its key."""
        session, wire, _agent = self.connect()
        self.assertTrue(self.manager.send_to_node(session.node_key, {"action": "sysinfo"}))
        self.assertEqual(wire.sent[-1], b'{"action":"sysinfo"}')
        self.assertFalse(self.manager.send_to_node("node//nobody", {"action": "x"}))

    async def test_temporary_agent_removed(self) -> None:
        """A temporary agent's device (capability 0x20, `meshagent connect`) is removed when it
        disconnects; a permanent one stays."""
        for caps, kept in ((0x138, False), (0x118, True)):
            agent = FakeAgent()
            original = agent.agent_info

            def info(original: Any = original, caps: int = caps) -> bytes:
                frame = bytearray(original())
                frame[66:70] = caps.to_bytes(4, "big")
                return bytes(frame)

            agent.agent_info = info  # type: ignore[method-assign]
            session, _wire, _agent = self.connect(agent)
            node_key = session.node_key
            self.assertIsNotNone(await self.store.get(node_key))
            session.connection_lost()
            self.assertEqual(await self.store.get(node_key) is not None, kept, hex(caps))
