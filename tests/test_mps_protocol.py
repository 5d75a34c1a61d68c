"""Tests for meshd.mps.protocol, meshd.mps.cira and meshd.mps.channels: the MPS server over
real TLS on 127.0.0.1 with simulated CIRA devices (tests/cira_client.py); the machines'
clock is a task.Clock, so timeouts are exact and instant."""

from __future__ import annotations

import base64
import os
import tempfile
import uuid
from typing import Any, Optional

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from meshd.events import LocalEventBus
from meshd.mps import apf
from meshd.mps.channels import Channel, ChannelError, ChannelOpenError, NotConnected
from meshd.mps.cira import (
    CREDENTIALS_PREFIX,
    MpsStats,
    cira_credentials_info,
    cira_node_id,
    cira_username,
    create_cira_credentials,
    remove_cira_credentials,
)
from meshd.mps.machine import State
from meshd.mps.protocol import MpsServerFactory, http_answer
from meshd.presence import CONN_AGENT, CONN_CIRA, Connection, LocalPresence
from meshd.store.memory import MemoryStore
from tests.cira_client import (
    CiraDevice,
    ClosedEarly,
    HttpResponder,
    LoginRefused,
    client_context,
    connect_device,
    server_context,
)

NOW = 1_700_000_000.0
MESH_ID = "mesh//f8eM5VPkC$P93u1J@abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQR"
AGENT_MESH_ID = "mesh//zQbukjKfEEljEFCU@5yOLabcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL"
OTHER_MESH_ID = "mesh//OtherGroupAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
SYSTEM_ID = uuid.UUID("12345678-9abc-def0-1122-334455667788")


def expected_node_id(system_id: uuid.UUID, domain: str = "") -> str:
    """The spec's node id derivation, written out independently of the code under test."""
    raw = base64.b64encode(system_id.bytes + system_id.bytes + system_id.bytes).decode()
    return f"node/{domain}/" + raw.replace("+", "@").replace("/", "$")


def mesh_doc(mesh_id: str, mtype: int, name: str = "AMT group") -> dict[str, Any]:
    return {"_id": mesh_id, "type": "mesh", "name": name, "mtype": mtype, "domain": "",
            "links": {}}


class Collector(Protocol):
    """A channel receiver that keeps what arrives and fires when enough has."""

    def __init__(self, wanted: int = 0) -> None:
        self.data = bytearray()
        self.wanted = wanted
        self.enough: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[Failure] = defer.Deferred()
        self.reason: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.wanted and len(self.data) >= self.wanted and not self.enough.called:
            self.enough.callback(bytes(self.data))
        elif not self.wanted and b"\r\n\r\n" in self.data and not self.enough.called:
            head, body = bytes(self.data).split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(body) >= length:
                self.enough.callback(bytes(self.data))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.lost.callback(None)


@implementer(IPushProducer)
class CountingProducer:
    """Records pause/resume calls from the channel it feeds."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1

    def stopProducing(self) -> None:
        self.stopped = True


class MpsServerTestCase(unittest.TestCase):
    """A real MPS TLS listener on 127.0.0.1 with a MemoryStore and one AMT-only group."""

    mps_pass: Optional[str] = None
    max_devices: Optional[int] = None

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.store.set(mesh_doc(MESH_ID, 1))
        self.user, password = self.successResultOf(
            defer.ensureDeferred(create_cira_credentials(self.store, MESH_ID, now=lambda: NOW)))
        self.password = password.encode()
        self.presence = LocalPresence()
        self.bus = LocalEventBus()
        self.events: list[dict[str, Any]] = []
        self.bus.subscribe(["*"], self.events.append)
        self.clock = Clock()
        self.factory = self.make_factory()
        self.port = reactor.listenSSL(0, self.factory, server_context(), interface="127.0.0.1")
        self.devices: list[CiraDevice] = []
        self.addCleanup(self._stop)

    def make_factory(self, store: Any = None) -> MpsServerFactory:
        return MpsServerFactory(store or self.store, self.presence, self.bus, self.clock,
                                server_id="test-server", mps_pass=self.mps_pass,
                                max_devices=self.max_devices, now=lambda: NOW)

    async def _stop(self) -> None:
        server_side = [p.when_lost() for p in self.factory.connections]
        await self.port.stopListening()
        for device in self.devices:
            device.ready.addErrback(lambda failure: None)  # tests that expect a refusal
            device.close()
        await defer.gatherResults([d.closed for d in self.devices] + server_side)
        # Connections accepted after the snapshot above.
        await defer.gatherResults([p.when_lost() for p in self.factory.connections])

    def connect(self, user: Optional[str] = None, password: Optional[bytes] = None,
                system_id: uuid.UUID = SYSTEM_ID, **kwargs: Any) -> CiraDevice:
        device = CiraDevice(self.user if user is None else user,
                            self.password if password is None else password,
                            system_id, **kwargs)
        self.devices.append(device)
        return connect_device(reactor, "127.0.0.1", self.port.getHost().port, device,
                              client_context())

    async def ready_device(self, **kwargs: Any) -> CiraDevice:
        device = self.connect(**kwargs)
        await device.ready
        return device

    async def refused(self, device: CiraDevice) -> Optional[int]:
        """Wait for a login refusal and the close; return the DISCONNECT reason."""
        with self.assertRaises(LoginRefused):
            await device.ready
        return await device.closed

    def node_events(self, action: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("action") == action]


class NamingTests(unittest.SynchronousTestCase):
    """User names and node ids derived as spec 4.2 says."""

    def test_username_from_group_id(self) -> None:
        """The CIRA user is the id suffix with @ and $ as X, cut to 16 characters."""
        self.assertEqual(cira_username("mesh//zQbukjKfEEljEFCU@5yOLxyz"), "zQbukjKfEEljEFCU")
        self.assertEqual(cira_username("mesh//f8eM5VPkC$P93u1Jxyz"), "f8eM5VPkCXP93u1J")
        self.assertEqual(cira_username("mesh/dom/a@b$cdefghijklmnopq"), "aXbXcdefghijklmn")

    def test_username_needs_16_characters(self) -> None:
        """A group id too short (or not a group id) has no CIRA user name."""
        self.assertRaises(ValueError, cira_username, "mesh//short")
        self.assertRaises(ValueError, cira_username, "node//zQbukjKfEEljEFCU@5yOL")

    def test_node_id_from_uuid(self) -> None:
        """The node id is base64 of the UUID bytes three times, + as @ and / as $."""
        for system_id in (SYSTEM_ID, uuid.UUID(int=(1 << 128) - 1), uuid.UUID(int=0xfbff)):
            self.assertEqual(cira_node_id("", system_id), expected_node_id(system_id))
            self.assertEqual(len(cira_node_id("", system_id)), len("node//") + 64)
        self.assertTrue(cira_node_id("d", SYSTEM_ID).startswith("node/d/"))
        self.assertIn("$", cira_node_id("", uuid.UUID(int=(1 << 128) - 1)))


class CredentialTests(unittest.SynchronousTestCase):
    """create_cira_credentials and friends, on a MemoryStore."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.store.set(mesh_doc(MESH_ID, 1))
        self.store.set(mesh_doc(OTHER_MESH_ID, 3))

    def create(self, mesh_id: str) -> Any:
        return defer.ensureDeferred(create_cira_credentials(self.store, mesh_id,
                                                            now=lambda: NOW))

    def test_password_shown_once_stored_hashed(self) -> None:
        """The clear password is returned and only a salted hash is stored, apart from the group."""
        user, password = self.successResultOf(self.create(MESH_ID))
        self.assertEqual(user, "f8eM5VPkCXP93u1J")
        self.assertEqual(len(password), 16)
        record = self.successResultOf(self.store.get(CREDENTIALS_PREFIX + user))
        self.assertEqual(record["meshid"], MESH_ID)
        self.assertNotIn(password, repr(record))
        self.assertNotIn("amt", self.successResultOf(self.store.get(MESH_ID)))
        info = self.successResultOf(defer.ensureDeferred(
            cira_credentials_info(self.store, MESH_ID)))
        self.assertEqual(info, {"user": user, "created": int(NOW * 1000)})

    def test_passwords_are_strong_and_random(self) -> None:
        """Each call makes a new password with upper, lower, digit and symbol."""
        passwords = {self.successResultOf(self.create(MESH_ID))[1] for _ in range(5)}
        self.assertEqual(len(passwords), 5)
        for password in passwords:
            self.assertTrue(any(c.isupper() for c in password))
            self.assertTrue(any(c.islower() for c in password))
            self.assertTrue(any(c.isdigit() for c in password))
            self.assertTrue(any(not c.isalnum() for c in password))

    def test_refused_for_unknown_or_non_amt_group(self) -> None:
        """Unknown groups and groups that cannot hold AMT devices get no credentials."""
        self.failureResultOf(self.create("mesh//NoSuchGroupAAAAAAAAAAAA"), ValueError)
        self.failureResultOf(self.create(OTHER_MESH_ID), ValueError)

    def test_user_name_collision_refused(self) -> None:
        """Two groups whose ids give the same 16-character user cannot both have credentials."""
        twin = MESH_ID[:-3] + "zzz"
        self.store.set(mesh_doc(twin, 1))
        self.successResultOf(self.create(MESH_ID))
        self.failureResultOf(self.create(twin), ValueError)

    def test_remove(self) -> None:
        """Removed credentials are gone, and removing twice says so."""
        self.successResultOf(self.create(MESH_ID))
        remove = lambda: defer.ensureDeferred(remove_cira_credentials(self.store, MESH_ID))
        self.assertTrue(self.successResultOf(remove()))
        self.assertFalse(self.successResultOf(remove()))

    def test_stats_shape(self) -> None:
        """The counters are a flat dict of ints with the names /health shows."""
        stats = MpsStats().as_dict()
        for key in ("connections", "devices", "authFailures", "unknownGroups", "timeouts",
                    "channelsOpened", "channelsOpen"):
            self.assertEqual(stats[key], 0)
        self.assertTrue(all(isinstance(v, int) for v in stats.values()))


class HttpAnswerTests(unittest.SynchronousTestCase):
    """The small HTTP server of the MPS port (spec 9)."""

    def test_root_and_others(self) -> None:
        """GET / is a page, HEAD / has no body, other paths are 404."""
        self.assertTrue(http_answer(b"GET / HTTP/1.1").startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(http_answer(b"HEAD / HTTP/1.1").endswith(b"\r\n\r\n"))
        self.assertIn(b"404", http_answer(b"GET /c/cookie HTTP/1.1").split(b"\r\n")[0])


class LoginTests(MpsServerTestCase):
    """Logins: good, bad, unknown, and what they leave behind."""

    async def test_new_device_logs_in(self) -> None:
        """A device of an AMT-only group logs in, forwards its ports and is created and present."""
        device = await self.ready_device(ports=(16992, 16993))
        self.assertEqual([m.service for m in device.of_type(apf.ServiceAccept)],
                         [apf.AUTH_SERVICE, apf.PFWD_SERVICE])
        self.assertEqual([m.port for m in device.of_type(apf.RequestSuccess)], [16992, 16993])
        node_id = expected_node_id(SYSTEM_ID)
        self.assertEqual(self.presence.state(node_id), CONN_CIRA)
        self.assertIs(self.presence.get(node_id, CONN_CIRA).handle,
                      self.factory.device(node_id))
        node = self.successResultOf(self.store.get(node_id))
        self.assertEqual((node["meshid"], node["mtype"], node["type"]), (MESH_ID, 1, "node"))
        self.assertEqual(node["intelamt"]["uuid"], str(SYSTEM_ID))
        self.assertEqual(node["host"], "127.0.0.1")
        connect = self.node_events("nodeconnect")
        self.assertEqual(connect, [{"action": "nodeconnect", "meshid": MESH_ID,
                                    "nodeid": node_id, "domain": "", "conn": CONN_CIRA,
                                    "pwr": 7, "ct": int(NOW * 1000), "nolog": 1}])
        self.assertEqual(len(self.node_events("addnode")), 1)
        stored = self.successResultOf(self.store.get_events(["*"], ""))
        self.assertEqual([e["action"] for e in stored], ["addnode"])
        stats = self.factory.stats_dict()
        self.assertEqual((stats["connections"], stats["devices"], stats["authSuccesses"],
                          stats["devicesAdded"]), (1, 1, 1, 1))
        self.assertEqual(device.violations, [])

    async def test_known_device_reconnects(self) -> None:
        """A known device is found again, not created twice; leaving is published offline."""
        first = await self.ready_device()
        await first.close()
        await self.wait_offline(expected_node_id(SYSTEM_ID))
        second = await self.ready_device()
        self.assertTrue(second.connected)
        self.assertEqual(len(self.node_events("addnode")), 1)
        self.assertEqual(self.factory.stats.devices_added, 1)
        self.assertEqual([e["conn"] for e in self.node_events("nodeconnect")], [2, 0, 2])

    async def wait_offline(self, node_id: str) -> None:
        for protocol in list(self.factory.connections):
            await protocol.when_lost()
        self.assertEqual(self.presence.state(node_id), 0)

    async def test_wrong_password(self) -> None:
        """A wrong password gets USERAUTH_FAILURE and DISCONNECT 15, is counted, leaves nothing."""
        device = self.connect(password=b"not the password")
        reason = await self.refused(device)
        self.assertEqual(reason, apf.DisconnectReason.INVALID_CREDENTIALS)
        self.assertEqual(device.of_type(apf.UserAuthFailure), [apf.UserAuthFailure()])
        stats = self.factory.stats
        self.assertEqual((stats.auth_failures, stats.bad_passwords, stats.auth_successes),
                         (1, 1, 0))
        self.assertIsNone(self.successResultOf(self.store.get(expected_node_id(SYSTEM_ID))))
        self.assertEqual(self.presence.online(), [])

    async def test_unknown_user(self) -> None:
        """A 16-character user that names no group is refused and counted as unknown group."""
        reason = await self.refused(self.connect(user="AAAAAAAAAAAAAAAA"))
        self.assertEqual(reason, apf.DisconnectReason.INVALID_CREDENTIALS)
        self.assertEqual((self.factory.stats.unknown_groups, self.factory.stats.auth_failures),
                         (1, 1))

    async def test_user_name_length(self) -> None:
        """A user name that is not 16 characters long is refused."""
        await self.refused(self.connect(user="short"))
        self.assertEqual(self.factory.stats.bad_usernames, 1)

    async def test_login_before_protocol_version_closes(self) -> None:
        """USERAUTH before PROTOCOLVERSION (MeshCentral's crash path) is a protocol error."""
        device = self.connect(login=False)
        device.send(apf.ServiceRequest(apf.AUTH_SERVICE))
        device.send(apf.UserAuthRequest(self.user, apf.PFWD_SERVICE, "password",
                                        self.password))
        reason = await device.closed
        self.assertEqual(reason, apf.DisconnectReason.PROTOCOL_ERROR)
        self.assertEqual((self.factory.stats.auth_successes,
                          self.factory.stats.protocol_errors), (0, 1))
        await self.ready_device(system_id=uuid.uuid4())

    async def test_deleted_group_refused(self) -> None:
        """Credentials of a deleted group no longer log in."""
        group = self.successResultOf(self.store.get(MESH_ID))
        group["deleted"] = True
        self.store.set(group)
        await self.refused(self.connect())
        self.assertEqual(self.factory.stats.unknown_groups, 1)

    async def test_device_of_another_group_refused(self) -> None:
        """A UUID whose device is in another group cannot be claimed with this password."""
        self.store.set(mesh_doc(OTHER_MESH_ID, 1))
        self.store.set({"_id": expected_node_id(SYSTEM_ID), "type": "node",
                        "meshid": OTHER_MESH_ID, "mtype": 1, "domain": "", "name": "x",
                        "intelamt": {"uuid": str(SYSTEM_ID)}})
        await self.refused(self.connect())
        self.assertEqual(self.factory.stats.refused_devices, 1)

    async def test_moved_device_follows_its_group(self) -> None:
        """A device created by a CIRA login and then moved to another AMT group logs in there."""
        device = await self.ready_device()
        await device.close()
        for protocol in list(self.factory.connections):
            await protocol.when_lost()
        self.store.set(mesh_doc(OTHER_MESH_ID, 1))
        node = self.successResultOf(self.store.get(expected_node_id(SYSTEM_ID)))
        node["meshid"] = OTHER_MESH_ID
        self.store.set(node)
        await self.ready_device()
        self.assertEqual(self.node_events("nodeconnect")[-1]["meshid"], OTHER_MESH_ID)

    async def test_store_failure_is_temporary(self) -> None:
        """A dead store during login closes with DISCONNECT 18 and no USERAUTH answer."""
        self.store.unavailable = True
        device = self.connect()
        with self.assertRaises(ClosedEarly):
            await device.ready
        self.assertEqual(device.disconnect_reason,
                         apf.DisconnectReason.TEMPORARILY_UNAVAILABLE)
        self.assertEqual(device.of_type(apf.UserAuthFailure), [])
        self.assertEqual(self.factory.stats.auth_errors, 1)

    async def test_fragmented_login(self) -> None:
        """The whole login sent one byte per TLS record works (MeshCentral drops it)."""
        device = self.connect(login=False)
        await device.secure
        stream = b"".join(m.encode() for m in (
            apf.ProtocolVersion(1, 0, 0, SYSTEM_ID), apf.ServiceRequest(apf.AUTH_SERVICE),
            apf.UserAuthRequest(self.user, apf.PFWD_SERVICE, "password", self.password)))
        for i in range(len(stream)):
            device.transport.write(stream[i:i + 1])
            await deferLater(reactor, 0, lambda: None)  # one TLS record per byte
        await device.ready
        self.assertEqual(self.factory.stats.auth_successes, 1)

    async def test_newest_connection_wins(self) -> None:
        """A second login for the same device closes the first with DISCONNECT 11."""
        first = await self.ready_device()
        old = self.factory.device(expected_node_id(SYSTEM_ID))
        second = await self.ready_device()
        self.assertEqual(await first.closed, apf.DisconnectReason.BY_APPLICATION)
        await old.when_lost()
        node_id = expected_node_id(SYSTEM_ID)
        self.assertIsNot(self.factory.device(node_id), old)
        self.assertIs(self.presence.get(node_id, CONN_CIRA).handle,
                      self.factory.device(node_id))
        self.assertTrue(second.connected)
        self.assertEqual(self.factory.stats.replaced, 1)
        self.assertEqual([e["conn"] for e in self.node_events("nodeconnect")], [2, 2])

    async def test_device_disconnect_closes(self) -> None:
        """A DISCONNECT from the device closes the socket and clears presence."""
        device = await self.ready_device()
        device.send(apf.Disconnect(apf.DisconnectReason.BY_APPLICATION))
        self.assertIsNone(await device.closed)
        for protocol in list(self.factory.connections):
            await protocol.when_lost()
        self.assertEqual(self.presence.online(), [])
        self.assertEqual(self.factory.stats.disconnects, 1)

    async def test_agent_keeps_power_on(self) -> None:
        """When CIRA goes while an agent stays, nodeconnect keeps the agent bit and power on."""
        node_id = expected_node_id(SYSTEM_ID)
        self.presence.add(Connection(node_id, CONN_AGENT, "test-server", NOW))
        device = await self.ready_device()
        await device.close()
        for protocol in list(self.factory.connections):
            await protocol.when_lost()
        last = self.node_events("nodeconnect")
        self.assertEqual([(e["conn"], e["pwr"]) for e in last],
                         [(CONN_AGENT | CONN_CIRA, 7), (CONN_AGENT, 1)])

    async def test_http_get_root(self) -> None:
        """A plain GET / over TLS on the MPS port gets the short page."""
        answer: defer.Deferred[bytes] = defer.Deferred()

        class Get(Protocol):
            def connectionMade(self) -> None:
                self.data = b""
                self.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

            def dataReceived(self, data: bytes) -> None:
                self.data += data

            def connectionLost(self, reason: Failure = None) -> None:  # type: ignore
                answer.callback(self.data)

        factory = ClientFactory.forProtocol(Get)
        reactor.connectSSL("127.0.0.1", self.port.getHost().port, factory, client_context())
        data = await answer
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(b"AMT", data)
        self.assertEqual(self.factory.stats.http_requests, 1)


class MpsPassTests(MpsServerTestCase):
    """settings.mpsPass: one password for every AMT group (MeshCentral compatibility)."""

    mps_pass = "Global-Pa55!"

    async def test_global_password_logs_into_group_without_credentials(self) -> None:
        """With mpsPass, a group with no credentials of its own accepts that password."""
        self.store.set(mesh_doc(AGENT_MESH_ID, 1))
        await self.ready_device(user="zQbukjKfEEljEFCU", password=b"Global-Pa55!")
        await self.refused(self.connect(user="zQbukjKfEEljEFCU", password=b"nope",
                                        system_id=uuid.uuid4()))
        self.assertEqual(self.factory.stats.bad_passwords, 1)

    async def test_group_password_still_works(self) -> None:
        """The group's own password keeps working next to mpsPass."""
        await self.ready_device()


class AgentGroupTests(MpsServerTestCase):
    """CIRA into an agent group (mtype 2) and the device limit."""

    max_devices = 2

    def setUp(self) -> None:
        super().setUp()
        self.store.set(mesh_doc(AGENT_MESH_ID, 2))
        self.agent_user, password = self.successResultOf(defer.ensureDeferred(
            create_cira_credentials(self.store, AGENT_MESH_ID)))
        self.agent_password = password.encode()

    async def test_agent_node_with_amt_uuid_is_used(self) -> None:
        """A device whose intelamt.uuid is the UUID is the one that goes online; none is created."""
        self.store.set({"_id": "node//AgentNodeId", "type": "node", "meshid": AGENT_MESH_ID,
                        "mtype": 2, "domain": "", "name": "pc1",
                        "intelamt": {"uuid": str(SYSTEM_ID)}})
        await self.ready_device(user=self.agent_user, password=self.agent_password)
        self.assertEqual(self.presence.state("node//AgentNodeId"), CONN_CIRA)
        self.assertEqual(self.factory.stats.devices_added, 0)

    async def test_unknown_uuid_in_agent_group_created(self) -> None:
        """An unknown UUID in an agent group creates a device with an agent stub."""
        await self.ready_device(user=self.agent_user, password=self.agent_password)
        node = self.successResultOf(self.store.get(expected_node_id(SYSTEM_ID)))
        self.assertEqual((node["mtype"], node["agent"]), (2, {"ver": 0, "id": 0, "caps": 0}))

    async def test_device_limit(self) -> None:
        """No device is created beyond max_devices; known devices still log in."""
        await self.ready_device(system_id=uuid.uuid4())
        await self.ready_device(system_id=uuid.uuid4())
        await self.refused(self.connect(system_id=uuid.uuid4()))
        self.assertEqual(self.factory.stats.device_limit, 1)
        self.assertEqual(self.successResultOf(self.store.count_by_type("node", "")), 2)


class KeepAliveAndTimeoutTests(MpsServerTestCase):
    """Keep-alives, and the login, idle and channel deadlines on the injected clock."""

    async def test_keepalive_echoed(self) -> None:
        """KEEPALIVE_REQUEST is answered with the same cookie."""
        device = await self.ready_device()
        self.assertEqual(await device.keepalive(0xDEADBEEF), 0xDEADBEEF)

    async def test_keepalive_options_after_5900(self) -> None:
        """Forwarding port 5900 (AMT's last) brings KEEPALIVE_OPTIONS_REQUEST 30 0."""
        device = await self.ready_device(ports=(16993, 16992, 664, 623, 16995, 16994, 5900))
        await device.keepalive(1)
        self.assertEqual(device.of_type(apf.KeepAliveOptionsRequest),
                         [apf.KeepAliveOptionsRequest(30, 0)])

    async def test_idle_timeout(self) -> None:
        """90 s without a message closes with DISCONNECT 16, counted, presence cleared."""
        device = await self.ready_device()
        self.clock.advance(89)
        await device.keepalive(2)  # the connection is still there...
        self.clock.advance(89)
        await device.keepalive(3)  # ...and each message restarts the 90 s
        self.clock.advance(91)
        self.assertEqual(await device.closed, apf.DisconnectReason.CONNECTION_TIMED_OUT)
        for protocol in list(self.factory.connections):
            await protocol.when_lost()
        self.assertEqual(self.factory.stats.timeouts, 1)
        self.assertEqual(self.presence.online(), [])
        self.assertEqual(self.node_events("nodeconnect")[-1]["conn"], 0)

    async def test_login_timeout(self) -> None:
        """A connection that does not log in within 30 s is closed."""
        device = self.connect(login=False)
        device.send(apf.ProtocolVersion(1, 0, 0, SYSTEM_ID))
        while not any(p.state is State.AWAITING_AUTH_SERVICE for p in self.factory.connections):
            await self.tick()
        self.clock.advance(31)
        self.assertEqual(await device.closed, apf.DisconnectReason.CONNECTION_TIMED_OUT)
        self.assertEqual(self.factory.stats.timeouts, 1)

    def tick(self) -> "defer.Deferred[None]":
        return deferLater(reactor, 0.01, lambda: None)


class ChannelTests(MpsServerTestCase):
    """Server-opened channels: WSMAN through CIRA, refusals and window accounting."""

    async def test_wsman_request_through_channel(self) -> None:
        """An HTTP POST /wsman through a channel to 16992 is answered by the device."""
        device = await self.ready_device(services={16992: HttpResponder})
        node_id = expected_node_id(SYSTEM_ID)
        channel = await self.factory.open_channel(node_id, 16992)
        self.assertIsInstance(channel, Channel)
        self.assertEqual(channel.window, 32768)
        receiver = Collector()
        channel.attach(receiver)
        body = b"<Envelope>" + b"x" * 700 + b"</Envelope>"
        channel.write(b"POST /wsman HTTP/1.1\r\nHost: " + node_id.encode() + b":16992\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
        response = await receiver.enough
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(b'request="POST /wsman HTTP/1.1" bytes="%d"' % len(body), response)
        opened = device.of_type(apf.ChannelOpen)[0]
        self.assertEqual((opened.channel_type, opened.connected_port, opened.sender_channel,
                          opened.initial_window), ("forwarded-tcpip", 16992, 4, 32768))
        channel.loseConnection()
        await channel.when_closed()
        await receiver.lost
        self.assertTrue(receiver.reason.check(ConnectionDone))
        stats = self.factory.stats
        self.assertEqual((stats.channels_opened, stats.channels_confirmed, stats.channels_closed,
                          stats.channels_open), (1, 1, 1, 0))
        self.assertEqual(device.violations, [])

    async def test_port_not_forwarded(self) -> None:
        """A channel to a port the device did not forward is refused locally."""
        await self.ready_device(ports=(16993,))
        await self.assertFailure(
            self.factory.open_channel(expected_node_id(SYSTEM_ID), 16992), ChannelError)
        self.assertEqual(self.factory.stats.channels_refused, 1)

    async def test_offline_device(self) -> None:
        """A channel to a device without a CIRA connection fails with NotConnected."""
        await self.assertFailure(self.factory.open_channel("node//nobody", 16992),
                                 NotConnected)

    async def test_device_refuses_channel(self) -> None:
        """CHANNEL_OPEN_FAILURE from the device fails the open with its reason."""
        await self.ready_device(services={})
        error = await self.assertFailure(
            self.factory.open_channel(expected_node_id(SYSTEM_ID), 16992), ChannelOpenError)
        self.assertEqual(error.reason, apf.OpenFailureReason.CONNECT_FAILED)
        self.assertEqual((self.factory.stats.channels_failed,
                          self.factory.stats.channels_open), (1, 0))

    async def test_device_opened_channel_refused(self) -> None:
        """A CHANNEL_OPEN from the device is refused with reason 3."""
        device = await self.ready_device()
        device.send(apf.ChannelOpen("forwarded-tcpip", 77, 1000, "", 80, "", 1))
        await device.keepalive(1)
        self.assertEqual(device.of_type(apf.ChannelOpenFailure),
                         [apf.ChannelOpenFailure(77, apf.OpenFailureReason.UNKNOWN_CHANNEL_TYPE)])

    async def test_connection_end_ends_channel(self) -> None:
        """When the CIRA connection goes, an open channel's protocol hears ConnectionLost."""
        device = await self.ready_device(services={16992: HttpResponder})
        channel = await self.factory.open_channel(expected_node_id(SYSTEM_ID), 16992)
        receiver = Collector()
        channel.attach(receiver)
        await device.close()
        await receiver.lost
        self.assertTrue(receiver.reason.check(ConnectionLost))
        self.assertEqual(self.factory.stats.channels_open, 0)

    async def test_slow_server_consumer_closes_device_window(self) -> None:
        """A paused reader lets the device send one window and no more; resuming gets all."""
        device = await self.ready_device(services={16992: lambda: None})
        channel = await self.factory.open_channel(expected_node_id(SYSTEM_ID), 16992)
        total = 100_000
        receiver = Collector(wanted=total)
        channel.attach(receiver)
        channel.pauseProducing()
        device_side = device.channel_opened[0]
        device_side.write(b"d" * total)
        await device.keepalive(1)  # the server has read everything sent so far
        self.assertEqual(len(receiver.data), 0)
        self.assertEqual(device_side.send_credit, 0)
        self.assertEqual(len(device_side.pending), total - 32768)
        self.assertEqual(device.of_type(apf.ChannelWindowAdjust), [])
        channel.resumeProducing()
        self.assertEqual(len(await receiver.enough), total)
        adjusts = device.of_type(apf.ChannelWindowAdjust)
        self.assertTrue(adjusts)
        self.assertTrue(all(a.bytes_to_add > 16384 for a in adjusts))
        self.assertEqual(device.violations, [])

    async def test_slow_device_pauses_server_producer(self) -> None:
        """Beyond the device's window the producer pauses until the device reopens it."""
        device = await self.ready_device(services={16992: lambda: None}, window=4096,
                                         auto_adjust=False)
        channel = await self.factory.open_channel(expected_node_id(SYSTEM_ID), 16992)
        channel.attach(Collector())
        producer = CountingProducer()
        channel.registerProducer(producer, True)
        total = 20_000
        channel.write(b"s" * total)
        self.assertTrue(producer.paused)
        device_side = device.channel_opened[0]
        rounds = 0
        while len(device_side.received) < total:
            await device.keepalive(rounds)
            self.assertLessEqual(len(device_side.received), 4096 * (rounds + 1))
            self.assertEqual(device_side.unconsumed, min(4096, total - 4096 * rounds))
            device_side.consume()
            rounds += 1
        await device.keepalive(99)
        self.assertEqual(rounds, 5)
        self.assertEqual(bytes(device_side.received), b"s" * total)
        self.assertFalse(producer.paused)
        self.assertEqual((producer.pauses, producer.resumes), (1, 1))
        self.assertEqual(device.violations, [])

    async def test_pull_producer_is_paced(self) -> None:
        """A pull producer is asked for more only when the device's window has room."""
        device = await self.ready_device(services={16992: lambda: None}, window=3000)
        channel = await self.factory.open_channel(expected_node_id(SYSTEM_ID), 16992)
        channel.attach(Collector())
        chunks = [bytes([65 + i]) * 1000 for i in range(20)]

        class Pull:
            asked = 0

            def resumeProducing(self) -> None:
                self.asked += 1
                if chunks:
                    channel.write(chunks.pop(0))

            def stopProducing(self) -> None:
                pass

        producer = Pull()
        channel.registerProducer(producer, False)
        device_side = device.channel_opened[0]
        while len(device_side.received) < 20_000:
            await device.keepalive(1)
        self.assertEqual(bytes(device_side.received),
                         b"".join(bytes([65 + i]) * 1000 for i in range(20)))
        self.assertEqual(device.violations, [])
        self.assertGreaterEqual(producer.asked, 20)


class SQLiteStoreTests(MpsServerTestCase):
    """The same login against the SQLite store (thread pool, real file)."""

    async def test_login_with_sqlite(self) -> None:
        """A device logs in and is recorded in a SQLite store."""
        from meshd.store.sqlite import SQLiteStore

        path = tempfile.mkdtemp(dir=os.getcwd())
        store = SQLiteStore(path, reactor)
        await store.open()
        self.addCleanup(store.close)
        await store.set(mesh_doc(MESH_ID, 1))
        user, password = await create_cira_credentials(store, MESH_ID)
        await self.port.stopListening()
        self.factory = self.make_factory(store)
        self.port = reactor.listenSSL(0, self.factory, server_context(), interface="127.0.0.1")
        await self.ready_device(user=user, password=password.encode())
        node = await store.get(expected_node_id(SYSTEM_ID))
        self.assertEqual(node["meshid"], MESH_ID)
        self.assertEqual(node["intelamt"]["uuid"], str(SYSTEM_ID))
