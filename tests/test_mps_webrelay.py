"""/webrelay.ashx: admission and rights, the relay session's closes, session recording, and
the whole path browser WebSocket -> meshd -> CIRA channel -> simulated AMT device against the
real server (with and without recording)."""

from __future__ import annotations

import os
from typing import Any, Optional
from urllib.parse import quote

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from OpenSSL import SSL
from twisted.internet import defer, reactor, ssl
from twisted.internet.task import Clock
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import TestCase

from meshd import passwords
from meshd.accounts import Accounts
from meshd.agent import identity
from meshd.control.auth import Authenticator
from meshd.control.cookies import LoginCookies
from meshd.config import SessionRecording
from meshd.control.rights import MESHRIGHT_AGENTCONSOLE, MESHRIGHT_REMOTECONTROL
from meshd.events import LocalEventBus
from meshd.mps.channels import ChannelOpenError, NotConnected
from meshd.mps.webrelay import (
    CLOSE_NO_PORT,
    CLOSE_NOT_CONNECTED,
    CLOSE_REFUSED,
    RECORDING_NOTICE,
    Admission,
    Refused,
    RelaySession,
    WebRelay,
    choose_port,
    webrelay_resource,
)
from meshd.relay.recorder import Recorder
from meshd.relay.recording import read_recording
from meshd.store.memory import MemoryStore
from tests.cira_client import (
    CiraDevice,
    DeviceChannel,
    HttpResponder,
    client_context,
    connect_device,
    server_context,
)

PASSWORD = "relay user password"
NODE = "node//" + "A" * 64
MESH = "mesh//" + "B" * 64


def _meshauth(name: str, password: str) -> dict[str, str]:
    import base64

    return {"x-meshauth": base64.b64encode(name.encode()).decode() + ","
            + base64.b64encode(password.encode()).decode()}


class FakeConnection:
    def __init__(self, ports: frozenset[int]) -> None:
        self.forwarded_ports = ports
        self.peer = "192.0.2.7"


class FakeMps:
    """The MpsServerFactory's channel API; records every open."""

    def __init__(self, connection: Optional[FakeConnection] = None,
                 failure: Optional[Exception] = None) -> None:
        self.connection = connection
        self.failure = failure
        self.opened: list[tuple[str, int]] = []

    def device(self, node_id: str) -> Optional[FakeConnection]:
        return self.connection

    def open_channel(self, node_id: str, port: int) -> "defer.Deferred[Any]":
        self.opened.append((node_id, port))
        if self.failure is not None:
            return defer.fail(self.failure)
        return defer.Deferred()


class FakeSide:
    """The WebSocket as a RelaySession sees it."""

    def __init__(self) -> None:
        self.closed: Optional[tuple[int, str]] = None
        self.sent: list[bytes] = []
        self.paused = False
        self.reading: list[str] = []

    def send_binary(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def pause_reading(self) -> None:
        self.paused = True
        self.reading.append("pause")

    def resume_reading(self) -> None:
        self.paused = False
        self.reading.append("resume")

    def producer(self) -> Any:
        return self

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False

    def register_producer(self, producer: Any) -> None:
        pass

    def unregister_producer(self) -> None:
        pass


class World:
    """An in-memory store with a user, an Intel AMT group and one CIRA device."""

    def __init__(self, mps: Any, rights: Optional[int],
                 recording: Optional[tuple[SessionRecording, str]] = None) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.bus = LocalEventBus()
        self.events: list[dict[str, Any]] = []
        self.bus.subscribe(["*"], self.events.append)

        def run_blocking(function: Any, *args: Any) -> "defer.Deferred[Any]":
            return defer.maybeDeferred(function, *args)

        salt, hashed = passwords.hash_password(PASSWORD)
        user: dict[str, Any] = {"_id": "user//alice", "type": "user", "name": "alice",
                                "domain": "", "salt": salt, "hash": hashed}
        if rights is not None:
            user["links"] = {MESH: {"rights": rights}}
        self.store.set(user)
        self.store.set({"_id": MESH, "type": "mesh", "mtype": 1, "name": "amt", "domain": ""})
        self.store.set({"_id": NODE, "type": "node", "meshid": MESH, "name": "amt1",
                        "domain": "", "intelamt": {"state": 2}})
        self.accounts = Accounts(self.store, now=self.clock.seconds, run_blocking=run_blocking)
        self.run_blocking = run_blocking
        self.mps = mps
        self.recorder = None if recording is None else Recorder(
            recording[0], recording[1], domain="", now=self.clock.seconds, store=self.store)
        self.relay = WebRelay(
            store=self.store, mps=mps, bus=self.bus, clock=self.clock, recorder=self.recorder,
            authenticator=Authenticator(store=self.store, accounts=self.accounts,
                                        web_sessions=None,
                                        cookies=LoginCookies(self.store, self.clock.seconds),
                                        now=self.clock.seconds, run_blocking=run_blocking))

    async def admit(self, node: str = NODE, protocol: str = "1", **headers: str) -> Admission:
        return await self.relay.admit(headers or _meshauth("alice", PASSWORD),
                                      {"host": [node], "p": [protocol]}, "127.0.0.1")


class AdmissionTests(TestCase):
    async def test_rights_denied_nothing_opened(self) -> None:
        """A user without REMOTECONTROL on the device is refused with 403 and no channel
        is opened; so is a user with no link at all, and an unknown device."""
        for rights in (MESHRIGHT_AGENTCONSOLE, None):
            world = World(FakeMps(FakeConnection(frozenset({16992}))), rights)
            with self.assertRaises(Refused) as caught:
                await world.admit()
            self.assertEqual(caught.exception.code, 403)
            self.assertEqual(world.mps.opened, [])
        world = World(FakeMps(FakeConnection(frozenset({16992}))), MESHRIGHT_REMOTECONTROL)
        with self.assertRaises(Refused) as caught:
            await world.admit("node//" + "C" * 64)
        self.assertEqual(caught.exception.code, 403)

    async def test_remote_control_admitted(self) -> None:
        """REMOTECONTROL on the device group admits the user for that device."""
        world = World(FakeMps(), MESHRIGHT_REMOTECONTROL)
        admission = await world.admit()
        self.assertEqual((admission.node_id, admission.protocol), (NODE, 1))

    async def test_unauthenticated_refused(self) -> None:
        """No credentials, a wrong password, or x-meshauth: * are refused with 401."""
        world = World(FakeMps(), MESHRIGHT_REMOTECONTROL)
        for headers in ({"host": "x"}, _meshauth("alice", "wrong"), {"x-meshauth": "*"}):
            with self.assertRaises(Refused) as caught:
                await world.relay.admit(headers, {"host": [NODE]}, "127.0.0.1")
            self.assertEqual(caught.exception.code, 401)

    def test_upgrade_refused_over_http(self) -> None:
        """Through the WebSocket resource a refused upgrade is an HTTP 403, not a 101."""
        world = World(FakeMps(FakeConnection(frozenset({16992}))), None)
        resource = webrelay_resource(store=world.store, mps=world.mps, bus=world.bus,
                                     authenticator=world.relay.auth, clock=world.clock)
        factory = resource._factory
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        transport.registerProducer(FakeSide(), True)  # what twisted.web leaves registered
        protocol.makeConnection(transport)
        auth = _meshauth("alice", PASSWORD)["x-meshauth"]
        protocol.dataReceived(
            b"GET /webrelay.ashx?host=" + quote(NODE, safe="").encode() + b"&p=1 HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"x-meshauth: " + auth.encode() + b"\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403"), transport.value()[:40])
        self.assertEqual(world.mps.opened, [])

    def test_choose_port(self) -> None:
        """WSMAN prefers 16992 and falls back to TLS on 16993; redirection 16994/16995."""
        self.assertEqual(choose_port(1, frozenset({16992, 16993})), (16992, False))
        self.assertEqual(choose_port(1, frozenset({16993})), (16993, True))
        self.assertEqual(choose_port(2, frozenset({16992, 16995})), (16995, True))
        self.assertIsNone(choose_port(2, frozenset({16992, 16993})))


class RelaySessionTests(TestCase):
    async def _session(self, mps: FakeMps) -> tuple[World, FakeSide]:
        world = World(mps, MESHRIGHT_REMOTECONTROL)
        admission = await world.admit()
        side = FakeSide()
        RelaySession(world.relay, admission, side).start()
        return world, side

    async def test_not_connected_clear_close(self) -> None:
        """A device without a CIRA connection closes the WebSocket with 4001 and a reason;
        no channel is asked for and no session event is published."""
        world, side = await self._session(FakeMps(None))
        self.assertEqual(side.closed, (CLOSE_NOT_CONNECTED,
                                       "the device is not connected over CIRA"))
        self.assertEqual(world.mps.opened, [])
        self.assertEqual([e for e in world.events if e.get("action") == "relaylog"], [])

    async def test_channel_failures_close_with_codes(self) -> None:
        """No forwarded port closes with 4002, a refused channel with 4003, a connection
        lost meanwhile with 4001; the browser's reading is paused while the channel opens
        and resumed only to read the closing handshake."""
        world, side = await self._session(FakeMps(FakeConnection(frozenset({16994}))))
        self.assertEqual(side.closed[0] if side.closed else None, CLOSE_NO_PORT)
        self.assertEqual(world.mps.opened, [])
        world, side = await self._session(FakeMps(FakeConnection(frozenset({16992})),
                                                  ChannelOpenError(2, "no")))
        self.assertEqual(side.closed[0] if side.closed else None, CLOSE_REFUSED)
        self.assertEqual(world.mps.opened, [(NODE, 16992)])
        world, side = await self._session(FakeMps(FakeConnection(frozenset({16992})),
                                                  NotConnected("gone")))
        self.assertEqual(side.closed[0] if side.closed else None, CLOSE_NOT_CONNECTED)
        self.assertEqual(side.reading, ["pause", "resume"])


class FakeChannel:
    """A confirmed channel: records writes, producers and the close."""

    port = 16992

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.protocol: Any = None
        self.producer: Any = None
        self.closed = False

    def attach(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        self.producer = producer

    def unregisterProducer(self) -> None:  # noqa: N802
        self.producer = None

    def loseConnection(self) -> None:  # noqa: N802
        self.closed = True

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass


class RelayPipeTests(TestCase):
    async def test_bytes_both_ways_and_close_together(self) -> None:
        """Browser bytes sent before the channel is confirmed are delivered in order, device
        bytes become binary messages, the channel paces the browser, and the end of the
        channel closes the WebSocket with 1000 and publishes start and end events."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        mps = FakeMps(FakeConnection(frozenset({16992})))
        opened: defer.Deferred[Any] = defer.Deferred()
        mps.open_channel = lambda node_id, port: opened  # type: ignore[method-assign]
        world = World(mps, MESHRIGHT_REMOTECONTROL)
        side = FakeSide()
        session = RelaySession(world.relay, await world.admit(), side)
        session.start()
        session.message(b"one")
        session.message(b"two")
        channel = FakeChannel()
        opened.callback(channel)
        self.assertEqual(channel.written, [b"one", b"two"])
        self.assertIsNotNone(channel.producer)
        session.message(b"three")
        channel.protocol.dataReceived(b"answer")
        self.assertEqual(side.sent, [b"answer"])
        channel.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(side.closed, (1000, "the device closed the connection"))
        self.assertEqual(channel.written[-1], b"three")
        self.assertTrue(channel.closed)
        relaylog = [e for e in world.events if e.get("action") == "relaylog"]
        self.assertEqual([(e["msgid"], e["protocol"], e.get("nolog")) for e in relaylog],
                         [(13, 100, 1), (9, 100, 1)])

    async def test_websocket_close_closes_channel(self) -> None:
        """When the browser goes, the channel is closed (once) and nothing is sent back."""
        mps = FakeMps(FakeConnection(frozenset({16992})))
        channel = FakeChannel()
        mps.open_channel = lambda node_id, port: defer.succeed(channel)  # type: ignore
        world = World(mps, MESHRIGHT_REMOTECONTROL)
        side = FakeSide()
        session = RelaySession(world.relay, await world.admit(), side)
        session.start()
        session.websocket_closed()
        self.assertTrue(channel.closed)
        self.assertIsNone(side.closed)
        channel.protocol.dataReceived(b"late")
        self.assertEqual(side.sent, [])


class RecordingTests(TestCase):
    """Recording through the relay's recorder, with a fake channel and a real folder."""

    async def _record(self, policy: SessionRecording, protocol: str = "1",
                   port: int = 16992) -> tuple[World, FakeSide, str]:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        folder = self.mktemp()
        mps = FakeMps(FakeConnection(frozenset({16992, 16994})))
        channel = FakeChannel()
        channel.port = port
        mps.open_channel = lambda node_id, port: defer.succeed(channel)  # type: ignore
        world = World(mps, MESHRIGHT_REMOTECONTROL, (policy, folder))
        side = FakeSide()
        session = RelaySession(world.relay, await world.admit(protocol=protocol), side)
        session.message(b"early")  # held until the channel is ready, then recorded
        session.start()
        world.clock.advance(2)
        session.message(b"POST /wsman")
        channel.protocol.dataReceived(b"HTTP/1.1 200 OK")
        world.clock.advance(3)
        channel.protocol.connectionLost(Failure(ConnectionDone()))
        return world, side, folder

    async def test_wsman_recorded_both_ways_and_indexed(self) -> None:
        """A WSMAN session is written as a .mcrec file that parses back with MeshCentral's
        web relay metadata (protocol 100, intelamt, device name, both addresses), the
        browser's bytes flagged binary from the user and the device's binary from the
        device, an end record, and an index record in the store."""
        world, side, folder = await self._record(SessionRecording(protocols=(100,)))
        [name] = os.listdir(folder)
        self.assertTrue(name.startswith("relaysession-2023-11-14-22-13-20-alice-amt1-"), name)
        with open(os.path.join(folder, name), "rb") as f:
            metadata, records, ended = read_recording(f.read())
        self.assertTrue(ended)
        self.assertEqual((metadata["protocol"], metadata["intelamt"], metadata["userid"],
                          metadata["username"], metadata["nodeid"], metadata["devicename"],
                          metadata["ipaddr1"], metadata["ipaddr2"]),
                         (100, True, "user//alice", "alice", NODE, "amt1", "127.0.0.1",
                          "192.0.2.7"))
        self.assertEqual([(r.payload, r.binary, r.from_user) for r in records],
                         [(b"early", True, True), (b"POST /wsman", True, True),
                          (b"HTTP/1.1 200 OK", True, False)])
        self.assertEqual(side.sent, [b"HTTP/1.1 200 OK"])  # no notice for WSMAN
        [index] = self.successResultOf(world.store.find_by_type("recording"))
        self.assertEqual((index["file"], index["protocol"], index["userid"], index["nodeid"],
                          index["end"] - index["start"]),
                         (name, 100, "user//alice", NODE, 5000))
        self.assertEqual(index["size"], os.stat(os.path.join(folder, name)).st_size)

    async def test_redirection_notice(self) -> None:
        """A recorded redirection session (protocol 101) tells the browser with 0xF0
        before any device byte, and the notice itself is not in the recording."""
        world, side, folder = await self._record(SessionRecording(), protocol="2", port=16994)
        self.assertEqual(side.sent, [RECORDING_NOTICE, b"HTTP/1.1 200 OK"])
        [name] = os.listdir(folder)
        with open(os.path.join(folder, name), "rb") as f:
            metadata, records, _ = read_recording(f.read())
        self.assertEqual(metadata["protocol"], 101)
        self.assertNotIn(RECORDING_NOTICE, [r.payload for r in records])

    async def test_protocol_not_listed(self) -> None:
        """A domain recording only redirection (101) writes nothing for a WSMAN session,
        sends no notice and indexes nothing."""
        world, side, folder = await self._record(SessionRecording(protocols=(101,)))
        self.assertFalse(os.path.exists(folder))
        self.assertEqual(side.sent, [b"HTTP/1.1 200 OK"])
        self.assertEqual(self.successResultOf(world.store.find_by_type("recording")), [])

    async def test_unwritable_folder_unrecorded(self) -> None:
        """A recording folder that cannot be made leaves the session working, unrecorded."""
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file where the folder should be")
        mps = FakeMps(FakeConnection(frozenset({16992})))
        channel = FakeChannel()
        mps.open_channel = lambda node_id, port: defer.succeed(channel)  # type: ignore
        world = World(mps, MESHRIGHT_REMOTECONTROL,
                      (SessionRecording(), os.path.join(blocker, "recordings")))
        side = FakeSide()
        session = RelaySession(world.relay, await world.admit(), side)
        session.start()
        session.message(b"POST")
        self.assertEqual(channel.written, [b"POST"])
        self.assertIsNone(session.recording)
        session.websocket_closed()
        self.assertTrue(channel.closed)


# --- end to end against the real server ------------------------------------------------------


class TlsHttpResponder:
    """A WSMAN-like service behind TLS, as AMT serves 16993 (server side in memory BIOs)."""

    def __init__(self) -> None:
        self.tls = SSL.Connection(server_context().getContext(), None)
        self.tls.set_accept_state()
        self.inner = HttpResponder()

    def data_received(self, channel: DeviceChannel, data: bytes) -> None:
        self.tls.bio_write(data)
        plain = b""
        while True:
            try:
                chunk = self.tls.recv(65536)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                break
            if not chunk:
                break
            plain += chunk
        self._flush(channel)
        if plain:
            self.inner.data_received(_Encrypting(self, channel), plain)  # type: ignore[arg-type]

    def _flush(self, channel: DeviceChannel) -> None:
        out = b""
        while True:
            try:
                out += self.tls.bio_read(65536)
            except SSL.WantReadError:
                break
        if out:
            channel.write(out)


class _Encrypting:
    def __init__(self, responder: TlsHttpResponder, channel: DeviceChannel) -> None:
        self._responder = responder
        self._channel = channel

    def write(self, data: bytes) -> None:
        self._responder.tls.sendall(data)
        self._responder._flush(self._channel)


class RelayClient(WebSocketClientProtocol):
    """Collects binary messages until a whole HTTP response (with Content-Length) arrived."""

    def onOpen(self) -> None:  # noqa: N802
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        self.factory.received += payload
        data = bytes(self.factory.received)
        if b"\r\n\r\n" in data and not self.factory.answered.called:
            head, body = data.split(b"\r\n\r\n", 1)
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if length and len(body) >= length[0]:
                self.factory.answered.callback(data)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:  # noqa: N802, N803
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"not opened: {code} {reason}"))
        if not self.factory.answered.called:
            self.factory.answered.errback(ConnectionError(f"closed: {code} {reason}"))
        self.factory.closed.callback((code, reason))


def relay_client(port: int, root_pem: bytes, path: str, cookie: str) -> Any:
    factory = WebSocketClientFactory(f"wss://127.0.0.1:{port}{path}",
                                     headers={"Cookie": f"xid={cookie}"})
    factory.protocol = RelayClient
    factory.opened = defer.Deferred()  # type: ignore[attr-defined]
    factory.answered = defer.Deferred()  # type: ignore[attr-defined]
    factory.closed = defer.Deferred()  # type: ignore[attr-defined]
    factory.received = bytearray()  # type: ignore[attr-defined]
    # The chain is checked; the name is not (the test certificate names 127.0.0.1 as a DNS
    # name, which service_identity rejects).
    context = ssl.CertificateOptions(verify=True,
                                     caCerts=[ssl.Certificate.loadPEM(root_pem).original])
    connectWS(factory, context)
    return factory


def wsman_post(body: bytes) -> bytes:
    return (b"POST /wsman HTTP/1.1\r\nHost: amt:16992\r\nContent-Type: application/soap+xml"
            b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


class AmtServer:
    """A started meshd with an administrator, an Intel AMT-only group with CIRA credentials
    from meshd-admin, and two simulated devices logged in over TLS: ``plain`` forwards
    16992 and 16993 (WSMAN answered on 16992), ``secure`` forwards only 16993 (WSMAN
    behind TLS inside the channel).  Everything is cleaned up by the test."""

    def __init__(self, test: TestCase, config: Optional[dict[str, Any]] = None) -> None:
        self.test = test
        self.config = config
        self.datapath = ""
        self.cookie = ""
        self.root_pem = b""
        self.node_ids: dict[str, str] = {}

    async def start(self) -> "AmtServer":
        import json

        from meshd.store.sqlite import SQLiteStore
        from tests.server import ServerProcess, fresh_datapath
        from tests.test_login import admin, login
        from tests.test_meshagent import eventually

        test = self.test
        datapath = self.datapath = fresh_datapath()
        extra: list[str] = []
        if self.config is not None:
            with open(datapath + ".json", "w") as config_file:
                json.dump(self.config, config_file)
            extra = ["--config", datapath + ".json"]
        server = self.server = ServerProcess(datapath, extra).start()
        test.addCleanup(server.stop)
        result = admin(datapath, "createaccount", "boss", "--pass", PASSWORD, "--siteadmin")
        test.assertEqual(result.returncode, 0, result.stderr)
        store = self.store = SQLiteStore(datapath, reactor)
        await store.open()
        test.addCleanup(store.close)
        mesh_id = identity.mesh_id_to_str(os.urandom(48))
        mesh_key = identity.mesh_key(mesh_id)
        await store.set({"_id": mesh_key, "type": "mesh", "mtype": 1, "name": "amt",
                         "domain": "", "links": {"user//boss": {"rights": 0xFFFFFFFF}}})
        user = await store.get("user//boss")
        assert user is not None
        user.setdefault("links", {})[mesh_key] = {"rights": 0xFFFFFFFF}
        await store.set(user)
        result = admin(datapath, "ciracredentials", mesh_id)
        test.assertEqual(result.returncode, 0, result.stderr)
        lines = dict(line.split(" ", 2)[1:] for line in result.stdout.splitlines()[:2])

        self.plain = CiraDevice(lines["user"], lines["password"].encode(),
                                ports=(16992, 16993), services={16992: HttpResponder})
        self.secure = CiraDevice(lines["user"], lines["password"].encode(), ports=(16993,),
                                 services={16993: TlsHttpResponder})
        for device in (self.plain, self.secure):
            connect_device(reactor, "127.0.0.1", server.mpsport, device, client_context(False))
            await device.ready
            test.addCleanup(device.close)

        async def nodes() -> Any:
            found = await store.find_nodes_by_mesh([mesh_key])
            return found if len(found) == 2 else None

        found = await eventually(nodes, 30)
        test.assertTrue(found)
        self.node_ids = {n["intelamt"]["uuid"]: n["_id"] for n in found}
        response = login(server, "boss", PASSWORD)
        self.cookie = response.cookie() or ""
        test.assertTrue(self.cookie, f"{response.status} {response.headers} {response.body}"
                        f"\n{server.log()[-3000:]}")
        with open(os.path.join(datapath, "root-cert-public.crt"), "rb") as f:
            self.root_pem = f.read()
        return self

    def node_id(self, device: CiraDevice) -> str:
        return str(self.node_ids[str(device.system_id)])

    def client(self, device: CiraDevice, query: str = "&p=1") -> Any:
        """A WebSocket to /webrelay.ashx for ``device`` (see :func:`relay_client`)."""
        return relay_client(self.server.port, self.root_pem,
                            f"/webrelay.ashx?host={quote(self.node_id(device), safe='')}"
                            + query, self.cookie)

    async def post(self, device: CiraDevice, body: bytes) -> tuple[bytes, DeviceChannel]:
        """One WSMAN POST through the web relay; the WebSocket is closed afterwards and the
        device has seen its channel close.  Returns the answer and the device's channel."""
        client = self.client(device, "&p=1&tls=0")
        protocol = await client.opened
        protocol.sendMessage(wsman_post(body), isBinary=True)
        answer: bytes = await client.answered
        channel = device.channel_opened[-1]
        protocol.sendClose(1000)
        self.test.assertEqual((await client.closed)[0], 1000)
        await channel.when_closed
        return answer, channel


class WebRelayEndToEndTests(TestCase):
    timeout = 120

    async def test_wsman_post_through_cira(self) -> None:
        """A logged-in administrator's WebSocket reaches the device's WSMAN over CIRA: the
        POST arrives at the simulated device, its answer comes back on the WebSocket (plain
        16992, and 16993 with TLS inside the channel), and closing the WebSocket closes the
        channel (the MPS counters in /health count both channels opened, confirmed and
        closed); with session recording off nothing is recorded; a device that is not
        connected closes the WebSocket with 4001."""
        import http.client
        import json

        from tests.test_meshagent import eventually

        amt = await AmtServer(self).start()
        for device, port in ((amt.plain, 16992), (amt.secure, 16993)):
            body = b"<Envelope>" + b"x" * 3000 + b"</Envelope>"
            answer, channel = await amt.post(device, body)
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"), answer[:60])
            self.assertIn(b'request="POST /wsman HTTP/1.1" bytes="%d"' % len(body), answer)
            self.assertEqual([c.port for c in device.channel_opened], [port])
        self.assertFalse(os.path.exists(os.path.join(amt.datapath, "recordings")))
        self.assertEqual(await amt.store.find_by_type("recording"), [])

        async def channels() -> Any:
            conn = http.client.HTTPSConnection("127.0.0.1", amt.server.port,
                                               context=amt.server.ssl_context(), timeout=10)
            conn.request("GET", "/health")
            mps = json.loads(conn.getresponse().read())["mps"]
            conn.close()
            counts = tuple(mps[key] for key in ("channelsOpened", "channelsConfirmed",
                                                "channelsClosed", "channelsOpen"))
            return counts if counts == (2, 2, 2, 0) else None

        self.assertTrue(await eventually(channels, 10))

        await amt.plain.close()

        async def gone() -> bool:
            client = amt.client(amt.plain)
            client.answered.addErrback(lambda failure: None)  # no answer is expected
            code, _ = await client.closed
            return code == CLOSE_NOT_CONNECTED

        self.assertTrue(await eventually(gone, 20))

    async def test_wsman_sessions_recorded(self) -> None:
        """With sessionRecording on for protocol 100, each WSMAN session over CIRA (plain
        16992, and 16993 with TLS inside the channel) is written to the data folder's
        recordings/ as a .mcrec file that parses back with the POST from the user side and
        the device's answer from the device side (inside the TLS), ends properly and is
        indexed in the store with its user, device, protocol, times and size."""
        from tests.test_meshagent import eventually

        amt = await AmtServer(self, {"domains": {"": {"sessionRecording": {
            "protocols": [100]}}}}).start()
        folder = os.path.join(amt.datapath, "recordings")
        sessions = {}
        for device in (amt.plain, amt.secure):
            body = b"<Envelope>" + device.system_id.hex.encode() + b"</Envelope>"
            answer, _ = await amt.post(device, body)
            sessions[amt.node_id(device)] = (wsman_post(body), answer)

        async def indexed() -> Any:
            found = await amt.store.find_by_type("recording")
            return found if len(found) == 2 else None

        index = await eventually(indexed, 20)
        self.assertTrue(index, amt.server.log()[-3000:])
        self.assertEqual(sorted(os.listdir(folder)), sorted(doc["file"] for doc in index))
        for doc in index:
            path = os.path.join(folder, doc["file"])
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            with open(path, "rb") as f:
                data = f.read()
            metadata, records, ended = read_recording(data)
            self.assertTrue(ended)
            sent, answer = sessions[doc["nodeid"]]
            self.assertEqual((metadata["protocol"], metadata["intelamt"], metadata["userid"],
                              metadata["nodeid"]), (100, True, "user//boss", doc["nodeid"]))
            self.assertEqual(b"".join(r.payload for r in records if r.from_user), sent)
            self.assertEqual(b"".join(r.payload for r in records if not r.from_user), answer)
            self.assertTrue(all(r.binary for r in records))
            self.assertEqual((doc["protocol"], doc["userid"], doc["size"]),
                             (100, "user//boss", len(data)))
            self.assertLessEqual(doc["start"], doc["end"])
