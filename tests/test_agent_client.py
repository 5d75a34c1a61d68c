"""Tests for the Python agent (``agentsrc``): settings, state, handshake, back-off, session, core.

The agent side of the handshake is run against meshd's own server machine
(:class:`meshd.agent.handshake.ServerHandshake`) in memory, both machines talking; impostor and
man-in-the-middle servers are built by filtering or rewriting frames between them. No sockets,
no real time (``task.Clock``), except the ``runcommands`` tests, which spawn a real ``/bin/sh``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
import sys
import zlib
from functools import lru_cache
from io import StringIO
from typing import Any, Callable, Optional
from unittest import mock

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial import unittest

import agentsrc.core
from agentsrc import coreblob
from agentsrc.backoff import CAP, FIRST_DELAY, Backoff
from agentsrc.client import (
    PYTHON_CORE_CAPABILITY,
    AgentService,
    agent_architecture,
    build_agent_info,
)
from agentsrc.core import agentcore
from agentsrc.core.agentcore import NETINFO_DELAY, Core
from agentsrc.handshake import (
    AgentHandshake,
    AgentInfoSent,
    Confirmed,
    Refused,
    RefuseReason,
    Send,
    ServerVerified,
    State,
)
from agentsrc.main import default_state_dir, main
from agentsrc.session import CORE_OK_FALLBACK, AgentSession, CoreLibrary
from agentsrc.settings import ServerUrl, SettingsError, load_settings, parse_msh
from agentsrc.state import StateDir, StateError, atomic_write, make_node_identity
from meshd.agent import identity
from meshd.agent.handshake import Authenticated, Fail, FailReason, ServerHandshake
from meshd.agent.handshake import Send as ServerSend
from meshd.agent.wire import AgentCapability, AgentInfo
from tests.certutil import make_ca, make_leaf

_NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
MESH_ID = bytes(range(100, 148))


# -- fixtures ----------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _rsa(slot: int) -> rsa.RSAPrivateKey:
    """One cached RSA-2048 key per slot: key generation dominates the run time."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _self_signed(key: rsa.RSAPrivateKey, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW)
        .not_valid_after(_NOW + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA384())
    )


@lru_cache(maxsize=None)
def server_agent_identity(slot: int = 1) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A server's agent certificate and key (MeshCentral: agentserver-cert-public.crt)."""
    key = _rsa(slot)
    return _self_signed(key, f"MeshCentralAgentServer-{slot}"), key


@lru_cache(maxsize=None)
def web_cert(slot: int = 0) -> x509.Certificate:
    """A server's web TLS certificate (what the agent hashes into Hweb)."""
    ca_cert, ca_key = make_ca(f"Test Root {slot}")
    cert, _key = make_leaf(ca_cert, ca_key, "localhost", sans=("localhost", "127.0.0.1"))
    return cert


@lru_cache(maxsize=None)
def node() -> Any:
    """The agent's node identity (CN=MeshNodeCertificate, RSA-2048)."""
    return make_node_identity(2048, _NOW)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def pkcs1_server_id(cert: x509.Certificate) -> bytes:
    """ServerID per spec §2, computed without meshd: H(PKCS#1 public key DER)."""
    return hashlib.sha384(cert.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1)).digest()


def agent_info(hostname: str = "vm") -> AgentInfo:
    return AgentInfo(1, 6, 0, 1, MESH_ID, 0x08 | PYTHON_CORE_CAPABILITY, hostname)


def make_agent(
    *,
    server_id: Optional[bytes] = None,
    tls: Optional[x509.Certificate] = None,
    trusted: Optional[bytes] = None,
    agent_name: Optional[str] = None,
    clock: Optional[task.Clock] = None,
) -> AgentHandshake:
    identity_ = node()
    return AgentHandshake(
        node_key=identity_.key,
        node_cert_der=identity_.certificate_der,
        server_id=pkcs1_server_id(server_agent_identity()[0]) if server_id is None else server_id,
        tls_cert_der=_der(tls or web_cert()),
        agent_info=agent_info(),
        trusted_tls_hash=trusted,
        commit_date="2026-Jan-1 00:00:00+0000",
        host_info="Debian GNU/Linux 12 (bookworm) - x64",
        agent_name=agent_name,
        now=(clock or task.Clock()).seconds,
    )


def make_server(slot: int = 1, tls: Optional[x509.Certificate] = None) -> ServerHandshake:
    cert, key = server_agent_identity(slot)
    server = ServerHandshake(
        cert, key, identity.accepted_tls_hashes(tls or web_cert()), now=task.Clock().seconds
    )
    server.start()
    return server


Rewrite = Callable[[bytes], Optional[bytes]]


class Pair:
    """Both machines talking in memory; ``to_server``/``to_agent`` may drop or rewrite frames."""

    def __init__(
        self,
        agent: AgentHandshake,
        server: ServerHandshake,
        *,
        to_server: Rewrite = lambda frame: frame,
        to_agent: Rewrite = lambda frame: frame,
    ) -> None:
        self.agent, self.server = agent, server
        self.to_server, self.to_agent = to_server, to_agent
        self.agent_frames: list[Send] = []
        self.server_frames: list[bytes] = []
        self.agent_events: list[Any] = []
        self.server_events: list[Any] = []

    def run(self) -> None:
        pending_to_server: list[Send] = list(self.agent.start())
        pending_to_agent: list[bytes] = []
        while pending_to_server or pending_to_agent:
            while pending_to_server:
                send = pending_to_server.pop(0)
                self.agent_frames.append(send)
                frame = self.to_server(send.frame)
                if frame is None:
                    continue
                for event in self.server.receive(frame):
                    self.server_events.append(event)
                    if isinstance(event, ServerSend):
                        pending_to_agent.append(event.frame)
                    elif isinstance(event, Authenticated):
                        pending_to_agent.extend(self.server.confirm())
            while pending_to_agent:
                frame = pending_to_agent.pop(0)
                self.server_frames.append(frame)
                rewritten = self.to_agent(frame)
                if rewritten is None:
                    continue
                for agent_event in self.agent.receive(rewritten):
                    self.agent_events.append(agent_event)
                    if isinstance(agent_event, Send):
                        pending_to_server.append(agent_event)

    def agent_commands(self) -> list[int]:
        return [
            -1 if send.text else int.from_bytes(send.frame[:2], "big") for send in self.agent_frames
        ]

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.agent_events if isinstance(event, kind)]


def refusal(events: list[Any]) -> RefuseReason:
    """The reason of the single Refused event in ``events``."""
    [refused] = events
    assert isinstance(refused, Refused), refused
    return refused.reason


def drop_server_id(frame: bytes) -> Optional[bytes]:
    """An impostor server that ignores the agent's command 5 (as MeshCentral mostly does)."""
    return None if frame[:2] == b"\x00\x05" else frame


# -- .msh settings -----------------------------------------------------------------------------

SERVER_ID_HEX = "5A9316B3A7A0AA40ECB50C1D7B0ACC79828D5176E15F4714C438369AA1DB864C9DF1E8A9514CBF9A2B40F430686E34F6"
MESH_ID_HEX = "0xEC475ABE16A3492ADEF52EDA2847A377FCF6F28380A26781C3DE4ED8A35B0054EE58A9A173A73212E69AE00B83DD0D0F"
MESHCENTRAL_MSH = (
    "\r\nMeshName=grp1\r\nMeshType=2\r\nMeshID=" + MESH_ID_HEX + "\r\nServerID=" + SERVER_ID_HEX
    + "\r\nMeshServer=wss://127.0.0.1:21443/agent.ashx\r\n"
    + 'translation={"en":{"agent":"Agent","url":"Server URL"}}\r\n'
)


class SettingsTests(unittest.TestCase):
    """agentsrc.settings: the .msh file."""

    def test_meshcentral_file(self) -> None:
        """A file as MeshCentral's /meshsettings serves it (blank first line, CRLF) parses."""
        settings = parse_msh(MESHCENTRAL_MSH)
        self.assertEqual(settings.servers, (ServerUrl("wss://127.0.0.1:21443/agent.ashx",
                                                      "127.0.0.1", 21443, "/agent.ashx"),))
        self.assertEqual(settings.mesh_id, bytes.fromhex(MESH_ID_HEX[2:]))
        self.assertEqual(settings.server_id, bytes.fromhex(SERVER_ID_HEX))
        self.assertEqual(settings.mesh_name, "grp1")
        self.assertEqual(settings.idle_timeout, 120.0)
        self.assertIn("translation", settings.extra)

    def test_minimal_and_options(self) -> None:
        """Comments, blanks, optional keys and several URLs are read; empty values unset."""
        settings = parse_msh(
            "# comment\n  MeshServer = wss://a.example:8443/x/agent.ashx, wss://[::1]/agent.ashx \n"
            f"MeshID={MESH_ID_HEX.lower()}\nServerID={SERVER_ID_HEX.lower()}\n"
            "agentName=box 1\nTag=t1\ncontrolChannelIdleTimeout=30\nnoUpdateCoreModule=1\n"
            "MeshName=old\nMeshName=\nnot a setting\n"
        )
        self.assertEqual([(s.host, s.port, s.path) for s in settings.servers],
                         [("a.example", 8443, "/x/agent.ashx"), ("::1", 443, "/agent.ashx")])
        self.assertEqual(settings.agent_name, "box 1")
        self.assertEqual(settings.tag, "t1")
        self.assertEqual(settings.idle_timeout, 30.0)
        self.assertTrue(settings.no_update_core_module)
        self.assertIsNone(settings.mesh_name)

    def test_errors_name_the_key(self) -> None:
        """Missing or malformed required keys raise SettingsError naming the key."""
        base = {"MeshServer": "wss://h/agent.ashx", "MeshID": MESH_ID_HEX,
                "ServerID": SERVER_ID_HEX}
        cases = {
            "MeshServer": ("MeshServer", None),
            "MeshID": ("MeshID", "1234"),
            "ServerID": ("ServerID", "0x12"),
            "ws://": ("MeshServer", "ws://h/agent.ashx"),
            "local": ("MeshServer", "local"),
            "idle": ("controlChannelIdleTimeout", "soon"),
        }
        for name, (key, value) in cases.items():
            values = dict(base)
            target = "controlChannelIdleTimeout" if name == "idle" else key
            if value is None:
                del values[target]
            else:
                values[target] = value
            text = "\n".join(f"{k}={v}" for k, v in values.items())
            with self.assertRaises(SettingsError, msg=name) as caught:
                parse_msh(text)
            self.assertIn(key, str(caught.exception), name)

    def test_load_settings_file(self) -> None:
        """load_settings reads a UTF-8 file with a BOM; an unreadable file is a SettingsError."""
        path = os.path.join(self.mktemp())
        with open(path, "wb") as handle:
            handle.write(b"\xef\xbb\xbf" + MESHCENTRAL_MSH.encode())
        self.assertEqual(load_settings(path).mesh_name, "grp1")
        self.assertRaises(SettingsError, load_settings, path + ".missing")


# -- state folder ------------------------------------------------------------------------------


class StateTests(unittest.TestCase):
    """agentsrc.state: identity and pinned hash files."""

    def setUp(self) -> None:
        self.state = StateDir(os.path.join(self.mktemp(), "agent-state"))

    def test_identity_created_once_with_private_modes(self) -> None:
        """The node key and certificate are created 0600 in a 0700 folder and reloaded as is."""
        old = os.umask(0o022)
        try:
            first, created = self.state.load_or_create_identity(bits=2048, now=_NOW)
        finally:
            os.umask(old)
        self.assertTrue(created)
        self.assertEqual(stat.S_IMODE(os.stat(self.state.path).st_mode), 0o700)
        for name in ("node-key.pem", "node-cert.pem"):
            mode = stat.S_IMODE(os.stat(os.path.join(self.state.path, name)).st_mode)
            self.assertEqual(mode, 0o600, name)
        self.assertEqual([n for n in os.listdir(self.state.path) if n.startswith(".tmp")], [])
        cert = first.certificate
        self.assertEqual(
            cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "MeshNodeCertificate"
        )
        self.assertEqual(first.key.key_size, 2048)
        again, created_again = self.state.load_or_create_identity(bits=2048, now=_NOW)
        self.assertFalse(created_again)
        self.assertEqual(again.node_id, first.node_id)
        self.assertEqual(first.node_id, identity.node_id_from_cert(first.certificate_der))

    def test_default_key_is_rsa_3072(self) -> None:
        """Without --fastkey the node key is RSA-3072, like the real agent's."""
        made, _ = self.state.load_or_create_identity(now=_NOW)
        self.assertEqual(made.key.key_size, 3072)

    def test_mismatched_or_partial_identity_refused(self) -> None:
        """A key without its certificate, or a foreign certificate, is an error (id kept)."""
        self.state.load_or_create_identity(bits=2048, now=_NOW)
        other = _self_signed(_rsa(7), "MeshNodeCertificate")
        atomic_write(os.path.join(self.state.path, "node-cert.pem"),
                     other.public_bytes(serialization.Encoding.PEM))
        self.assertRaises(StateError, self.state.load_or_create_identity, bits=2048, now=_NOW)
        os.unlink(os.path.join(self.state.path, "node-cert.pem"))
        self.assertRaises(StateError, self.state.load_or_create_identity, bits=2048, now=_NOW)

    def test_tls_hash_bound_to_server_id(self) -> None:
        """The pinned TLS hash is returned only for the ServerID it was verified with."""
        self.assertIsNone(self.state.trusted_tls_hash(b"\x01" * 48))
        self.state.store_tls_hash(b"\x01" * 48, b"\x02" * 48)
        self.assertEqual(self.state.trusted_tls_hash(b"\x01" * 48), b"\x02" * 48)
        self.assertIsNone(self.state.trusted_tls_hash(b"\x03" * 48))
        mode = stat.S_IMODE(os.stat(os.path.join(self.state.path, "server.json")).st_mode)
        self.assertEqual(mode, 0o600)
        self.state.forget_tls_hash()
        self.assertIsNone(self.state.trusted_tls_hash(b"\x01" * 48))


# -- handshake against meshd's server machine --------------------------------------------------


class HandshakeTests(unittest.TestCase):
    """agentsrc.handshake against meshd.agent.handshake.ServerHandshake, in memory."""

    def test_full_handshake(self) -> None:
        """Fresh agent: observed frame order, server verified and pinned, node id agreed."""
        pair = Pair(make_agent(agent_name="box"), make_server())
        pair.run()
        self.assertEqual(pair.agent_commands(), [30, 31, 5, 1, 2, -1, 3])
        self.assertEqual([int.from_bytes(f[:2], "big") for f in pair.server_frames], [1, 2, 4])
        self.assertEqual(pair.of(ServerVerified), [ServerVerified(pair.agent.tls_hash)])
        self.assertEqual(len(pair.of(AgentInfoSent)), 1)
        self.assertEqual(pair.of(Confirmed), [Confirmed(skipped=False)])
        self.assertIs(pair.agent.state, State.CONFIRMED)
        [auth] = [e for e in pair.server_events if isinstance(e, Authenticated)]
        self.assertEqual(auth.node_id, node().node_id)
        self.assertEqual(auth.agent_name, "box")
        self.assertEqual(auth.agent_info.mesh_id, MESH_ID)
        self.assertEqual(auth.commit_date, "2026-Jan-1 00:00:00+0000")
        self.assertEqual(auth.expected_server_id, pkcs1_server_id(server_agent_identity()[0]))
        self.assertFalse(auth.server_auth_skipped)
        self.assertEqual(pair.agent.tls_hash, hashlib.sha384(_der(web_cert())).digest())

    def test_skip_handshake(self) -> None:
        """With the pinned TLS hash the agent sends 4, gets no S 2, and sends 3 before 2."""
        trusted = hashlib.sha384(_der(web_cert())).digest()
        pair = Pair(make_agent(trusted=trusted), make_server())
        pair.run()
        self.assertEqual(pair.agent_commands(), [30, 31, 5, 4, 1, 3, 2])
        self.assertEqual([int.from_bytes(f[:2], "big") for f in pair.server_frames], [1, 4])
        self.assertEqual(pair.of(Confirmed), [Confirmed(skipped=True)])
        self.assertEqual(pair.of(ServerVerified), [])
        [auth] = [e for e in pair.server_events if isinstance(e, Authenticated)]
        self.assertTrue(auth.server_auth_skipped)

    def test_changed_tls_certificate_takes_full_path(self) -> None:
        """A pinned hash of another certificate does not skip: the server is verified again."""
        pair = Pair(make_agent(trusted=b"\x09" * 48), make_server())
        pair.run()
        self.assertNotIn(4, pair.agent_commands())
        self.assertEqual(pair.of(Confirmed), [Confirmed(skipped=False)])

    def test_wrong_server_id_refused(self) -> None:
        """A server holding another agent key (an impostor) is refused; no AgentInfo is sent."""
        pair = Pair(make_agent(), make_server(slot=5), to_server=drop_server_id)
        pair.run()
        [refused] = pair.of(Refused)
        self.assertIs(refused.reason, RefuseReason.SERVER_ID_MISMATCH)
        self.assertIn("ServerID", refused.detail)
        self.assertNotIn(3, pair.agent_commands())
        self.assertEqual(pair.of(ServerVerified), [])
        self.assertIs(pair.agent.state, State.REFUSED)
        self.assertEqual(pair.agent.receive(b"\x00\x04"), [])

    def test_meshd_server_refuses_wrong_server_id_first(self) -> None:
        """meshd's server checks the agent's command 5 and fails before signing anything."""
        pair = Pair(make_agent(), make_server(slot=5))
        pair.run()
        [fail] = [e for e in pair.server_events if isinstance(e, Fail)]
        self.assertIs(fail.reason, FailReason.SERVER_ID_MISMATCH)
        self.assertEqual(pair.of(Confirmed), [])

    def test_wrong_tls_hash_echo_refused(self) -> None:
        """A server echoing the hash of another TLS certificate (interception) is refused."""
        seen = web_cert(1)  # what the agent's TLS connection saw (an interceptor's certificate)
        real = hashlib.sha384(_der(web_cert())).digest()

        def rewrite(frame: bytes) -> bytes:  # the interceptor forwards A 1 as for the real cert
            if frame[:2] == b"\x00\x01":
                return frame[:2] + real + frame[50:]
            return frame

        pair = Pair(make_agent(tls=seen), make_server(), to_server=rewrite)
        pair.run()
        [refused] = pair.of(Refused)
        self.assertIs(refused.reason, RefuseReason.BAD_TLS_HASH)
        self.assertEqual(pair.agent_commands(), [30, 31, 5, 1])

    def test_relayed_signature_over_other_tls_refused(self) -> None:
        """An interceptor that also fakes the echo fails the signature check (Hweb is bound)."""
        seen = web_cert(1)
        seen_hash = hashlib.sha384(_der(seen)).digest()
        real = hashlib.sha384(_der(web_cert())).digest()

        def up(frame: bytes) -> bytes:
            return frame[:2] + real + frame[50:] if frame[:2] == b"\x00\x01" else frame

        def down(frame: bytes) -> bytes:
            return frame[:2] + seen_hash + frame[50:] if frame[:2] == b"\x00\x01" else frame

        pair = Pair(make_agent(tls=seen), make_server(), to_server=up, to_agent=down)
        pair.run()
        [refused] = pair.of(Refused)
        self.assertIs(refused.reason, RefuseReason.BAD_SIGNATURE)
        self.assertNotIn(3, pair.agent_commands())

    def test_confirm_before_server_proof_refused(self) -> None:
        """S 4 on the full path before S 2 verified is refused."""
        agent = make_agent()
        agent.start()
        events = agent.receive(b"\x00\x01" + agent.tls_hash + os.urandom(48))
        self.assertEqual([int.from_bytes(e.frame[:2], "big") for e in events
                          if isinstance(e, Send)], [2])
        self.assertIs(refusal(agent.receive(b"\x00\x04")), RefuseReason.UNEXPECTED)

    def test_malformed_frames_refused(self) -> None:
        """Truncated or unknown frames, and too many frames, are refused with a reason."""
        for frame, reason in (
            (b"\x00\x01" + b"\x00" * 50, RefuseReason.MALFORMED),
            (b"\x00\x03" + b"\x00" * 70, RefuseReason.MALFORMED),
            (b"\x00", RefuseReason.MALFORMED),
        ):
            agent = make_agent()
            agent.start()
            self.assertIs(refusal(agent.receive(frame)), reason, frame[:4])
        agent = make_agent()
        agent.start()
        events: list[Any] = []
        for _ in range(9):
            events.extend(agent.receive(b'{"action":"noise"}'))
        self.assertEqual([e.reason for e in events], [RefuseReason.TOO_MANY_FRAMES])

    def test_timeout(self) -> None:
        """No S 4 before the deadline: refused with TIMEOUT."""
        clock = task.Clock()
        agent = make_agent(clock=clock)
        agent.start()
        clock.advance(119)
        self.assertEqual(agent.check_timeout(), [])
        clock.advance(1)
        self.assertIs(refusal(agent.check_timeout()), RefuseReason.TIMEOUT)

    def test_legacy_server_id(self) -> None:
        """A 32-byte SHA-256 ServerID (old .mshx) pins the same key."""
        cert = server_agent_identity()[0]
        pair = Pair(make_agent(server_id=identity.server_id_sha256(_der(cert))), make_server())
        pair.run()
        self.assertEqual(pair.of(Confirmed), [Confirmed(skipped=False)])


# -- back-off ----------------------------------------------------------------------------------


class FailingEndpoint:
    """An endpoint whose connection attempts fail at once."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.attempts += 1
        return defer.fail(ConnectionRefusedError("refused"))


def sample_settings() -> Any:
    return parse_msh(MESHCENTRAL_MSH)


class BackoffTests(unittest.TestCase):
    """agentsrc.backoff and the service's reconnect schedule."""

    def test_bounds(self) -> None:
        """First delay 0.5-2 s, then between the last and twice it, capped at 4-6 min."""
        import random

        generator = random.Random(4)
        backoff = Backoff(generator.uniform)
        delays = [backoff.next_delay() for _ in range(40)]
        self.assertTrue(FIRST_DELAY[0] <= delays[0] <= FIRST_DELAY[1])
        for last, delay in zip(delays, delays[1:]):
            self.assertTrue(min(last, CAP[0]) <= delay <= min(2 * last, CAP[1]), (last, delay))
        self.assertTrue(CAP[0] <= delays[-1] <= CAP[1])
        backoff.reset()
        self.assertTrue(FIRST_DELAY[0] <= backoff.next_delay() <= FIRST_DELAY[1])

    def test_service_schedule_with_clock(self) -> None:
        """Failed connects are retried at 2, 4, 8 … s (upper bounds), capped at 360 s."""
        clock = task.Clock()
        endpoint = FailingEndpoint()
        service = AgentService(
            sample_settings(), StateDir(self.mktemp()), node(), reactor=clock,
            endpoint_factory=lambda reactor, server: endpoint, uniform=lambda a, b: b,
            choice=lambda n: 0,
        )
        service.startService()
        self.assertEqual(endpoint.attempts, 1)
        expected = [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 360.0, 360.0]
        for number, delay in enumerate(expected, start=2):
            clock.advance(delay - 0.01)
            self.assertEqual(endpoint.attempts, number - 1)
            clock.advance(0.01)
            self.assertEqual(endpoint.attempts, number)
        service.backoff.reset()  # what AgentInfoSent does
        self.assertEqual(service.backoff.next_delay(), 2.0)
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_rotates_servers(self) -> None:
        """Several MeshServer URLs are tried in turn, starting at a random one."""
        settings = parse_msh(MESHCENTRAL_MSH.replace(
            "MeshServer=wss://127.0.0.1:21443/agent.ashx",
            "MeshServer=wss://a:1/agent.ashx,wss://b:2/agent.ashx,wss://c:3/agent.ashx"))
        clock = task.Clock()
        tried: list[str] = []
        endpoint = FailingEndpoint()

        def factory(reactor: Any, server: ServerUrl) -> FailingEndpoint:
            tried.append(server.host)
            return endpoint

        service = AgentService(settings, StateDir(self.mktemp()), node(), reactor=clock,
                               endpoint_factory=factory, uniform=lambda a, b: a,
                               choice=lambda n: 1)
        service.startService()
        for _ in range(3):
            clock.advance(10)
        service.stopService()
        self.assertEqual(tried, ["b", "c", "a", "b"])


# -- core blob -----------------------------------------------------------------------------------


def write_core(folder: str, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = os.path.join(folder, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
    return folder


TINY_CORE = {
    "__init__.py": "CORE_API = 1\nfrom .impl import create_core\n",
    "impl.py": (
        "from .sub import ANSWER\n"
        "class Core:\n"
        "    def __init__(self, context):\n        self.context = context\n        self.seen = []\n"
        "    def start(self):\n"
        "        self.context.send_json({'action': 'coreinfo', 'value': 'tiny ' + "
        "str(self.context.core_hash)[:8], 'answer': ANSWER})\n"
        "    def stop(self):\n        self.seen.append('stopped')\n"
        "    def handle_json(self, message):\n        self.seen.append(message)\n"
        "        if message.get('action') == 'ping':\n"
        "            self.context.send_json({'action': 'pong', 'from': 'tiny'})\n"
        "    def handle_binary(self, code, payload):\n        self.seen.append((code, payload))\n"
        "def create_core(context):\n    return Core(context)\n"
    ),
    "sub/__init__.py": "ANSWER = 42\n",
}


class CoreBlobTests(unittest.TestCase):
    """agentsrc.coreblob: format, limits, in-memory loading."""

    def test_reproducible_and_framed(self) -> None:
        """The built-in core blob is prefix + stored ZIP, the same on every build; hash H(blob)."""
        blob = coreblob.build_core_blob()
        self.assertEqual(blob, coreblob.build_core_blob())
        self.assertEqual(blob[:8], b"\0\0\0\0PK\x03\x04")
        self.assertEqual(coreblob.core_hash(blob), hashlib.sha384(blob).digest())
        files = coreblob.parse_core_blob(blob)
        self.assertIn("__init__.py", files)
        self.assertIn("agentcore.py", files)
        self.assertFalse(any("__pycache__" in name for name in files))

    def test_loads_with_relative_imports(self) -> None:
        """A pushed package imports in memory under its own name; unloading removes it."""
        blob = coreblob.build_core_blob(write_core(self.mktemp(), TINY_CORE))
        module = coreblob.load_core(blob)
        self.assertTrue(module.__name__.startswith("_meshd_core_"))
        self.assertEqual(sys.modules[module.__name__ + ".sub"].ANSWER, 42)
        coreblob.unload_core(module.__name__)
        self.assertFalse([n for n in sys.modules if n.startswith(module.__name__)])

    def test_builtin_core_loads_as_blob(self) -> None:
        """The real agentsrc/core is self-contained: it loads from its own blob."""
        blob = coreblob.build_core_blob()
        module = coreblob.load_core(blob)
        self.addCleanup(coreblob.unload_core, module.__name__)
        self.assertIsNot(module, agentsrc.core)
        self.assertEqual(module.CORE_API, 1)

    def test_refused_blobs(self) -> None:
        """Non-Python, unsafe names, no __init__, import errors and bad APIs are refused."""
        import io
        import zipfile

        def zipped(files: dict[str, bytes]) -> bytes:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
            return b"\0\0\0\0" + buffer.getvalue()

        cases = {
            "javascript": b"\0\0\0\0var addedModules = [];\r\n",
            "no prefix": zipped({"__init__.py": b""})[4:],
            "parent": zipped({"__init__.py": b"", "../evil.py": b""}),
            "absolute": zipped({"__init__.py": b"", "/etc/evil.py": b""}),
            "not py": zipped({"__init__.py": b"", "x.so": b""}),
            "no init": zipped({"a.py": b""}),
            "raises": zipped({"__init__.py": b"raise RuntimeError('boom')"}),
            "no api": zipped({"__init__.py": b"X = 1"}),
            "truncated": zipped({"__init__.py": b"CORE_API = 1"})[:-30],
        }
        for name, blob in cases.items():
            with self.assertRaises(coreblob.CoreBlobError, msg=name):
                coreblob.load_core(blob)
        self.assertFalse([n for n in sys.modules if n.startswith("_meshd_core_")])


# -- session -----------------------------------------------------------------------------------


class FakeConnection:
    """Records what the session sends; ``close`` marks the connection closed."""

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, bool]] = []
        self.closed: Optional[str] = None

    def send(self, frame: bytes, text: bool) -> None:
        self.frames.append((frame, text))

    def close(self, reason: str) -> None:
        self.closed = reason

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(frame) for frame, text in self.frames if text]

    def binary(self) -> list[bytes]:
        return [frame for frame, text in self.frames if not text]

    def clear(self) -> None:
        self.frames.clear()


def core_module_frame(blob: bytes, digest: Optional[bytes] = None) -> bytes:
    return b"\x00\x0a\x00\x00" + (digest or hashlib.sha384(blob).digest()) + blob


class SessionTests(unittest.TestCase):
    """agentsrc.session: core-module commands and JSON dispatch after S 4."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.state = StateDir(self.mktemp())
        self.library = CoreLibrary(self.state)
        self.addCleanup(self.library.clear)

    def session(self, **kwargs: Any) -> tuple[AgentSession, FakeConnection]:
        connection = FakeConnection()
        session = AgentSession(
            library=self.library, builtin=agentsrc.core, send=connection.send,
            close=connection.close, reactor=self.clock, node_id="NODE", server_url="wss://x/",
            agent_version="0.1.0", tag=kwargs.pop("tag", "tag1"), **kwargs,
        )
        self.addCleanup(session.stop)
        session.start()
        return session, connection

    def test_start_sends_tag_and_builtin_coreinfo(self) -> None:
        """A 15 carries the tag; the built-in core reports coreinfo and, 5 s later, netinfo."""
        session, connection = self.session()
        self.assertEqual(connection.binary(), [b"\x00\x0ftag1"])
        [info] = connection.json()
        self.assertEqual(info["action"], "coreinfo")
        self.assertEqual(info["value"], "Python core 0.1.0 (built-in)")
        self.assertEqual(info["caps"], 8 | 2)  # console and terminal
        self.assertIn("osdesc", info)
        self.clock.advance(NETINFO_DELAY)
        netinfo = connection.json()[-1]
        self.assertEqual(netinfo["action"], "netinfo")
        self.assertIsInstance(netinfo["netif2"], dict)

    def test_agent_and_core_hash_requests(self) -> None:
        """S 12 → zero hash (never update); S 11 → no core (4 bytes), echoing request ids."""
        session, connection = self.session()
        connection.clear()
        session.receive(b"\x00\x0c\x00\x07")
        session.receive(b"\x00\x0b\x00\x00")
        self.assertEqual(connection.binary(),
                         [b"\x00\x0c\x00\x07" + bytes(48), b"\x00\x0b\x00\x00"])

    def test_javascript_core_declined(self) -> None:
        """MeshCentral's JS core is declined with a zero hash; the built-in core keeps running."""
        session, connection = self.session()
        builtin_core = session.core
        connection.clear()
        session.receive(core_module_frame(b"\0\0\0\0var addedModules = [];\r\n"))
        session.receive(b"\x00\x0b\x00\x00")
        self.assertEqual(connection.binary(), [b"\x00\x0b\x00\x00" + bytes(48)] * 2)
        self.assertIs(session.core, builtin_core)
        self.assertIsNone(self.state.load_core())

    def test_bad_hash_dropped(self) -> None:
        """A blob that does not match its hash is dropped: A 11 without a hash."""
        session, connection = self.session()
        connection.clear()
        session.receive(core_module_frame(coreblob.build_core_blob(), b"\x01" * 48))
        self.assertEqual(connection.binary(), [b"\x00\x0b\x00\x00"])
        self.assertIsNone(session.core_hash)

    def test_push_runs_stores_and_confirms(self) -> None:
        """A pushed Python core replaces the built-in one, is stored, and is confirmed by hash."""
        blob = coreblob.build_core_blob(write_core(self.mktemp(), TINY_CORE))
        digest = hashlib.sha384(blob).digest()
        session, connection = self.session()
        connection.clear()
        session.receive(core_module_frame(blob))
        self.assertEqual(session.core_hash, digest)
        self.assertEqual(connection.json(), [
            {"action": "coreinfo", "value": "tiny " + digest.hex()[:8], "answer": 42}])
        self.assertEqual(connection.binary(), [b"\x00\x0b\x00\x00" + digest])
        self.assertEqual(self.state.load_core(), (blob, digest))
        connection.clear()
        session.receive(b'{"action":"ping"}')
        session.receive(b"\x03\xe8\x00\x00data")
        self.assertEqual(connection.json(), [{"action": "pong", "from": "tiny"}])
        self.assertEqual(session.core.seen, [{"action": "ping"}, (1000, b"\x00\x00data")])
        connection.clear()
        session.receive(core_module_frame(blob))  # the same core again: just confirmed
        self.assertEqual(connection.frames, [(b"\x00\x0b\x00\x00" + digest, False)])

    def test_stored_core_waits_for_core_ok(self) -> None:
        """Next connection: the stored core is reported, waits for S 16, gets queued JSON."""
        blob = coreblob.build_core_blob(write_core(self.mktemp(), TINY_CORE))
        digest = hashlib.sha384(blob).digest()
        self.state.store_core(blob)
        session, connection = self.session()
        self.assertIsNone(session.core)
        session.receive(b"\x00\x0b\x00\x00")
        self.assertEqual(connection.binary()[-1], b"\x00\x0b\x00\x00" + digest)
        session.receive(b'{"action":"serverInfo"}')
        session.receive(b"\x00\x10\x00\x00")
        self.assertEqual(session.core_hash, digest)
        self.assertEqual(session.core.seen, [{"action": "serverInfo"}])

    def test_stored_core_fallback(self) -> None:
        """Without S 16 the stored core starts after the 60 s fallback."""
        self.state.store_core(coreblob.build_core_blob(write_core(self.mktemp(), TINY_CORE)))
        session, _ = self.session()
        self.clock.advance(CORE_OK_FALLBACK - 1)
        self.assertIsNone(session.core)
        self.clock.advance(1)
        self.assertIsNotNone(session.core_hash)

    def test_clear_core(self) -> None:
        """S 10 without a hash deletes the pushed core and restarts the built-in one."""
        blob = coreblob.build_core_blob(write_core(self.mktemp(), TINY_CORE))
        session, connection = self.session()
        session.receive(core_module_frame(blob))
        pushed = session.core
        session.receive(b"\x00\x0a\x00\x00")
        self.assertEqual(pushed.seen[-1], "stopped")
        self.assertIsNone(session.core_hash)
        self.assertIsInstance(session.core, agentcore.Core)
        self.assertIsNone(self.state.load_core())

    def test_compressed_core(self) -> None:
        """S 20 (raw DEFLATE) is inflated and handled like S 10."""
        blob = coreblob.build_core_blob(write_core(self.mktemp(), TINY_CORE))
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = deflater.compress(blob) + deflater.flush()
        digest = hashlib.sha384(blob).digest()
        session, connection = self.session()
        session.receive(b"\x00\x14\x00\x00" + digest + packed)
        self.assertEqual(session.core_hash, digest)

    def test_broken_core_keeps_builtin(self) -> None:
        """A pushed core that fails to start is not stored; the built-in core runs; A 11 bare."""
        files = dict(TINY_CORE)
        files["impl.py"] = files["impl.py"].replace(
            "    def start(self):\n", "    def start(self):\n        raise RuntimeError('x')\n")
        blob = coreblob.build_core_blob(write_core(self.mktemp(), files))
        session, connection = self.session()
        connection.clear()
        session.receive(core_module_frame(blob))
        self.assertEqual(connection.binary(), [b"\x00\x0b\x00\x00"])
        self.assertIsInstance(session.core, agentcore.Core)
        self.assertIsNone(self.state.load_core())
        self.flushLoggedErrors(RuntimeError)

    def test_no_update_core_module(self) -> None:
        """noUpdateCoreModule=1 declines pushes with the zero hash."""
        session, connection = self.session(no_update_core_module=True)
        connection.clear()
        session.receive(core_module_frame(coreblob.build_core_blob()))
        self.assertEqual(connection.binary(), [b"\x00\x0b\x00\x00" + bytes(48)])
        self.assertIsNone(session.core_hash)

    def test_garbage_closes(self) -> None:
        """A frame the codec rejects closes the connection; nothing after it is handled."""
        session, connection = self.session()
        session.receive(b"\x00\x63\x00\x00")
        self.assertIsNotNone(connection.closed)

    def test_stop_stops_core(self) -> None:
        """stop() stops the core; later frames and core output are dropped."""
        session, connection = self.session()
        session.stop()
        connection.clear()
        session.receive(b'{"action":"ping"}')
        self.clock.advance(NETINFO_DELAY)
        self.assertEqual(connection.frames, [])


# -- the built-in core -------------------------------------------------------------------------


class FakeContext:
    """A core context that records JSON and runs on a given reactor."""

    def __init__(self, reactor_: Any) -> None:
        self.reactor = reactor_
        self.sent: list[dict[str, Any]] = []
        self.log = Logger()
        self.node_id = "NODE"
        self.server_url = "wss://x/agent.ashx"
        self.agent_version = "0.1.0"
        self.core_hash: Optional[str] = None

    def send_json(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def send_binary(self, frame: bytes) -> None:
        raise AssertionError("no binary expected")


class CoreTests(unittest.TestCase):
    """agentsrc.core: JSON actions of the built-in core."""

    def core(self, reactor_: Any = None) -> tuple[Core, FakeContext]:
        context = FakeContext(reactor_ if reactor_ is not None else task.Clock())
        core = Core(context)
        core.start()
        self.addCleanup(core.stop)
        context.sent.clear()
        return core, context

    def test_ping_pong_and_unknown(self) -> None:
        """ping → pong; unknown actions and junk are ignored."""
        core, context = self.core()
        core.handle_json({"action": "ping"})
        core.handle_json({"action": "nope"})
        core.handle_json({"action": 5})
        core.handle_json({"action": "msg", "type": "unknown"})
        self.assertEqual(context.sent, [{"action": "pong"}])

    def test_sysinfo_only_when_hash_differs(self) -> None:
        """sysinfo answers with data and its hash unless the server already has that hash."""
        core, context = self.core()
        core.handle_json({"action": "sysinfo"})
        [reply] = context.sent
        data = reply["data"]
        body = {k: v for k, v in data.items() if k != "hash"}
        self.assertEqual(data["hash"], hashlib.sha384(
            json.dumps(body, separators=(",", ":")).encode()).hexdigest())
        self.assertIn("agentvers", data["hardware"])
        context.sent.clear()
        core.handle_json({"action": "sysinfo", "hash": data["hash"]})
        self.assertEqual(context.sent, [])

    def test_netinfo_on_change(self) -> None:
        """netinfo goes out 5 s after start and then only when the interfaces change."""
        clock = task.Clock()
        core, context = self.core(clock)
        answers = [{"lo": [{"address": "127.0.0.1"}]}] * 2 + [{"eth0": []}]
        with mock.patch.object(agentcore.sysinfo, "network_interfaces", side_effect=answers):
            clock.advance(NETINFO_DELAY)
            clock.advance(agentcore.NETINFO_INTERVAL)
            clock.advance(agentcore.NETINFO_INTERVAL)
        self.assertEqual([m["netif2"] for m in context.sent], [answers[0], answers[2]])

    def test_console_needs_rights(self) -> None:
        """Console commands need rights 8 and 16 and answer to the same sessionid."""
        core, context = self.core()
        core.handle_json({"action": "msg", "type": "console", "value": "help", "rights": 8,
                          "sessionid": "s1"})
        self.assertEqual(context.sent, [])
        core.handle_json({"action": "msg", "type": "console", "value": "info",
                          "rights": 0xFFFFFFFF, "sessionid": "s1"})
        [reply] = context.sent
        self.assertEqual((reply["type"], reply["sessionid"]), ("console", "s1"))
        self.assertIn("Node id: NODE", reply["value"])

    def test_runcommands_refusals_reply(self) -> None:
        """Unsupported types and run-as-user-only still get their reply (no hung caller)."""
        core, context = self.core()
        core.handle_json({"action": "runcommands", "type": 1, "cmds": "dir", "reply": True,
                          "responseid": "r1"})
        core.handle_json({"action": "runcommands", "type": 3, "cmds": "id", "runAsUser": 2,
                          "reply": True, "responseid": "r2"})
        results = [m for m in context.sent if m.get("type") == "runcommands"]
        self.assertEqual([m["responseid"] for m in results], ["r1", "r2"])
        self.assertIn("not supported", results[0]["result"])

    @defer.inlineCallbacks
    def test_runcommands_round_trip(self) -> Any:
        """type 3 runs /bin/sh: output streamed as console msgs, then the reply with responseid."""
        core, context = self.core(reactor)
        done: defer.Deferred[None] = defer.Deferred()
        original = context.send_json

        def send(message: dict[str, Any]) -> None:
            original(message)
            if message.get("responseid") == "meshctrl":
                done.callback(None)

        context.send_json = send  # type: ignore[method-assign]
        core.handle_json({"action": "runcommands", "type": 3, "runAsUser": 0, "reply": True,
                          "responseid": "meshctrl",
                          "cmds": "echo hello-from-agent\r\necho err >&2\necho $((6*7))"})
        core.handle_json({"action": "runcommands", "type": 3, "cmds": "true", "reply": True,
                          "responseid": "second"})
        yield done
        busy = [m for m in context.sent if m.get("responseid") == "second"]
        self.assertEqual(busy[0]["result"], "Run commands can't execute, already busy.")
        [result] = [m for m in context.sent if m.get("responseid") == "meshctrl"]
        self.assertEqual(result["action"], "msg")
        self.assertEqual(sorted(result["result"].splitlines()), ["42", "err", "hello-from-agent"])
        streamed = "".join(m["value"] for m in context.sent
                           if m.get("type") == "console" and "busy" not in m["value"])
        self.assertEqual(streamed, result["result"])

    @defer.inlineCallbacks
    def test_runcommands_without_reply(self) -> Any:
        """Without reply the core announces the commands and says when they completed."""
        core, context = self.core(reactor)
        done: defer.Deferred[None] = defer.Deferred()
        original = context.send_json

        def send(message: dict[str, Any]) -> None:
            original(message)
            if message.get("value") == "Run commands completed.":
                done.callback(None)

        context.send_json = send  # type: ignore[method-assign]
        core.handle_json({"action": "runcommands", "type": 3, "cmds": "echo hi", "reply": False})
        yield done
        values = [m["value"] for m in context.sent]
        self.assertEqual(values, ["Run commands (0): echo hi", "hi\n", "Run commands completed."])


# -- agent info and the command line -----------------------------------------------------------


class CommandLineTests(unittest.TestCase):
    """agentsrc.main and the command 3 fields."""

    def test_agent_info_fields(self) -> None:
        """Command 3: Linux x86-64 id 6, the group id, console + Python-core capability, host."""
        info = build_agent_info(sample_settings(), hostname="host-1")
        self.assertEqual(agent_architecture("Linux", "x86_64"), 6)
        self.assertEqual(agent_architecture("Darwin", "arm64"), 29)
        self.assertEqual(info.mesh_id, bytes.fromhex(MESH_ID_HEX[2:]))
        self.assertEqual(info.hostname, "host-1")
        self.assertEqual(info.capabilities, int(AgentCapability.CONSOLE) | PYTHON_CORE_CAPABILITY)
        self.assertFalse(info.capabilities & AgentCapability.JAVASCRIPT)

    def test_show_id_creates_identity(self) -> None:
        """--show-id prints the node id of a new identity stored beside the .msh."""
        folder = self.mktemp()
        os.makedirs(folder)
        msh = os.path.join(folder, "agent.msh")
        with open(msh, "w") as handle:
            handle.write(MESHCENTRAL_MSH)
        out = StringIO()
        with mock.patch.object(sys, "stdout", out):
            self.assertEqual(main(["--msh", msh, "--fastkey", "--show-id"]), 0)
        state = StateDir(default_state_dir(msh))
        self.assertEqual(state.path, os.path.join(os.path.abspath(folder), "agent-state"))
        loaded, created = state.load_or_create_identity(now=_NOW)
        self.assertFalse(created)
        self.assertEqual(out.getvalue().strip(), loaded.node_id)

    def test_bad_settings_exit_status(self) -> None:
        """A bad .msh exits with status 2 and a message naming the key."""
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("MeshServer=ws://x/agent.ashx\n")
        err = StringIO()
        with mock.patch.object(sys, "stderr", err):
            self.assertEqual(main(["--msh", path, "--show-id"]), 2)
        self.assertIn("MeshID", err.getvalue())
