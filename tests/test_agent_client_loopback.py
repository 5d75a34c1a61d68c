"""The Python agent's network side over real TLS and WebSocket on 127.0.0.1.

The server here is a small Autobahn test server driving meshd's own server handshake machine
(:class:`meshd.agent.handshake.ServerHandshake`), so :mod:`agentsrc.client` (TLS without chain
checks, peer-certificate hashing, Autobahn adapter, reconnect, skip path, core push,
``runcommands``) is tested end to end without Node; the interop test against a real MeshCentral
is ``tests/test_agent_client_meshcentral.py``'s job.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor, ssl
from twisted.internet.task import deferLater
from twisted.trial import unittest

from agentsrc import coreblob
from agentsrc.client import AgentService
from agentsrc.handshake import RefuseReason
from agentsrc.settings import parse_msh
from agentsrc.state import StateDir
from meshd.agent import identity
from meshd.agent.handshake import Authenticated, Fail, Send, ServerHandshake
from meshd.agent.wire import encode_json
from tests.certutil import make_ca, make_leaf
from tests.test_agent_client import node, server_agent_identity

TIMEOUT = 20.0


class LoopbackServerProtocol(WebSocketServerProtocol):
    """One agent connection on the test server."""

    factory: "LoopbackServerFactory"

    def onOpen(self) -> None:
        self.machine = ServerHandshake(
            self.factory.agent_cert, self.factory.agent_key, self.factory.tls_hashes,
            now=cast(Any, reactor).seconds,
        )
        self.machine.start()
        self.confirmed = False
        self.factory.connections.append(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = bytes(payload)
        if not self.confirmed:
            if self.factory.drop_server_id and frame[:2] == b"\x00\x05":
                return  # an impostor that does not look at the agent's ServerID
            for event in self.machine.receive(frame):
                if isinstance(event, Send):
                    self.sendMessage(event.frame, isBinary=True)
                elif isinstance(event, Authenticated):
                    self.factory.authenticated.append(event)
                    self.confirmed = True
                    for out in self.machine.confirm():
                        self.sendMessage(out, isBinary=True)
                    self.sendMessage(b"\x00\x0c\x00\x00", isBinary=True)
                    self.sendMessage(b"\x00\x0b\x00\x00", isBinary=True)
                elif isinstance(event, Fail):
                    self.factory.failures.append(event)
            return
        self.factory.received.append(frame)
        if frame[:2] == b"\x00\x0b":
            self.on_core_hash(frame[4:] or None)
        elif frame[:1] == b"{":
            message = json.loads(frame)
            self.factory.json.append(message)
            for waiter in list(self.factory.waiters):
                if waiter[0](message):
                    self.factory.waiters.remove(waiter)
                    waiter[1].callback(message)

    def on_core_hash(self, digest: Optional[bytes]) -> None:
        blob = self.factory.core_blob
        if blob is not None and digest != hashlib.sha384(blob).digest():
            self.sendMessage(b"\x00\x0a\x00\x00" + hashlib.sha384(blob).digest() + blob,
                             isBinary=True)
        else:
            self.sendMessage(b"\x00\x10\x00\x00", isBinary=True)

    def send_json(self, message: dict[str, Any]) -> None:
        self.sendMessage(encode_json(message), isBinary=True)  # as MeshCentral: JSON in binary


class LoopbackServerFactory(WebSocketServerFactory):
    protocol = LoopbackServerProtocol  # type: ignore[assignment]

    def __init__(self, slot: int, web_cert: Any, drop_server_id: bool = False) -> None:
        super().__init__()
        self.agent_cert, self.agent_key = server_agent_identity(slot)
        self.tls_hashes = identity.accepted_tls_hashes(web_cert)
        self.drop_server_id = drop_server_id
        self.core_blob: Optional[bytes] = None
        self.connections: list[LoopbackServerProtocol] = []
        self.authenticated: list[Authenticated] = []
        self.failures: list[Fail] = []
        self.received: list[bytes] = []
        self.json: list[dict[str, Any]] = []
        self.waiters: list[tuple[Any, defer.Deferred[dict[str, Any]]]] = []

    def wait_for(self, predicate: Any) -> defer.Deferred[dict[str, Any]]:
        for message in self.json:
            if predicate(message):
                return defer.succeed(message)
        waiting: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.waiters.append((predicate, waiting))
        waiting.addTimeout(TIMEOUT, reactor)
        return waiting


async def until(check: Any, timeout: float = TIMEOUT) -> None:
    """Poll ``check()`` on the real reactor until it is true."""
    waited = 0.0
    while not check():
        if waited > timeout:
            raise AssertionError("condition not reached in time")
        await deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


class LoopbackTests(unittest.TestCase):
    """agentsrc.client against a test server on 127.0.0.1 (real TLS, real WebSocket)."""

    def start_server(self, slot: int = 1, drop_server_id: bool = False) -> LoopbackServerFactory:
        ca_cert, ca_key = make_ca("Loopback Root")
        cert, key = make_leaf(ca_cert, ca_key, "localhost", sans=("localhost", "127.0.0.1"))
        pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        options = ssl.PrivateCertificate.loadPEM(pem).options()
        factory = LoopbackServerFactory(slot, cert, drop_server_id)
        port = cast(Any, reactor).listenSSL(0, factory, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        return factory

    def start_agent(self, factory: LoopbackServerFactory) -> AgentService:
        server_id = identity.server_id(server_agent_identity(1)[0])
        settings = parse_msh(
            f"MeshServer=wss://127.0.0.1:{self.port}/agent.ashx\n"
            f"MeshID=0x{bytes(range(48)).hex()}\nServerID={server_id}\n"
        )
        self.state = StateDir(self.mktemp())
        service = AgentService(settings, self.state, node(), reactor=reactor,
                               uniform=lambda a, b: a)
        service.startService()
        self.addCleanup(self.stop_agent, service, factory)
        return service

    async def _stop(self, service: AgentService, factory: LoopbackServerFactory) -> None:
        await service.stopService()
        for connection in factory.connections:
            connection.dropConnection(abort=True)
        await deferLater(reactor, 0.05, lambda: None)
        service.library.clear()

    def stop_agent(self, service: AgentService, factory: LoopbackServerFactory) -> Any:
        return defer.ensureDeferred(self._stop(service, factory))

    @defer.inlineCallbacks
    def test_connect_run_reconnect_skip(self) -> Any:
        """Full handshake, runcommands round trip, then a dropped connection reconnects (skip)."""
        factory = self.start_server()
        service = self.start_agent(factory)
        info = yield factory.wait_for(lambda m: m.get("action") == "coreinfo")
        self.assertEqual(info["value"], "Python core 0.1.0 (built-in)")
        [auth] = factory.authenticated
        self.assertIsNone(service.backoff.last)  # reset when AgentInfo went out
        self.assertEqual(auth.node_id, node().node_id)
        self.assertFalse(auth.server_auth_skipped)
        yield defer.ensureDeferred(until(lambda: {
            b"\x00\x0c\x00\x00" + bytes(48),  # never update me
            b"\x00\x0b\x00\x00",  # no pushed core yet
        } <= set(factory.received)))
        self.assertIsNotNone(self.state.trusted_tls_hash(service.settings.server_id))
        factory.connections[0].send_json({
            "action": "runcommands", "type": 3, "cmds": "echo loop-$((6*7))", "runAsUser": 0,
            "reply": True, "responseid": "r1"})
        result = yield factory.wait_for(lambda m: m.get("type") == "runcommands")
        self.assertEqual(result["result"], "loop-42\n")
        self.assertEqual(result["responseid"], "r1")
        factory.connections[0].dropConnection(abort=True)
        yield defer.ensureDeferred(until(lambda: len(factory.authenticated) == 2))
        self.assertTrue(factory.authenticated[1].server_auth_skipped)
        self.assertEqual(service.attempts, 2)

    @defer.inlineCallbacks
    def test_pushed_core_runs(self) -> Any:
        """The server pushes the Python core blob; the agent runs it and confirms its hash."""
        factory = self.start_server()
        factory.core_blob = coreblob.build_core_blob()
        digest = hashlib.sha384(factory.core_blob).digest()
        service = self.start_agent(factory)
        info = yield factory.wait_for(
            lambda m: m.get("action") == "coreinfo" and "built-in" not in m["value"])
        self.assertEqual(info["value"], f"Python core 0.1.0, {digest.hex()[:8]}")
        yield defer.ensureDeferred(until(lambda: b"\x00\x0b\x00\x00" + digest in factory.received))
        assert service.session is not None
        self.assertEqual(service.session.core_hash, digest)
        factory.connections[0].send_json({"action": "ping"})
        yield factory.wait_for(lambda m: m.get("action") == "pong")

    @defer.inlineCallbacks
    def test_impostor_refused_and_retried(self) -> Any:
        """A server with another agent key is refused, nothing runs, and the agent retries."""
        factory = self.start_server(slot=5, drop_server_id=True)
        service = self.start_agent(factory)
        yield defer.ensureDeferred(until(lambda: service.attempts >= 2))
        assert service.last_refusal is not None
        self.assertIs(service.last_refusal.reason, RefuseReason.SERVER_ID_MISMATCH)
        self.assertEqual(factory.authenticated, [])
        self.assertIsNotNone(service.backoff.last)  # never reset: no AgentInfo was sent
        self.assertEqual(factory.json, [])
        self.assertIsNone(self.state.trusted_tls_hash(service.settings.server_id))
