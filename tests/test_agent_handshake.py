"""Tests for meshd.agent.handshake, meshd.agent.identity and meshd.agent.pkcs7 (spec §2, §3).

The agent side is written here from the spec with ``cryptography`` and hand-built frames, so the
server machine is checked against an independent implementation, not against its own codec.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
from functools import lru_cache
from typing import Any, Callable, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshd.agent import identity
from meshd.agent import pkcs7 as meshd_pkcs7
from meshd.agent.handshake import (
    MAX_PREAUTH_FRAMES,
    Authenticated,
    Event,
    Fail,
    FailReason,
    Send,
    ServerHandshake,
    SignJob,
    State,
    VerifyJob,
    verify_pkcs1_sha384,
)
from tests.certutil import make_ca, make_leaf

_EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def _self_signed(key: Any, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_EPOCH)
        .not_valid_after(_EPOCH + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA384())
    )


@lru_cache(maxsize=None)
def _rsa(bits: int, slot: int = 0) -> rsa.RSAPrivateKey:
    """One cached RSA key per (size, slot): key generation dominates the run time."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@lru_cache(maxsize=None)
def server_agent_identity() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The server's agent certificate (MeshCentral: agentserver-cert-public.crt)."""
    key = _rsa(2048, 1)
    return _self_signed(key, "MeshCentralAgentServer-test"), key


@lru_cache(maxsize=None)
def web_cert() -> x509.Certificate:
    """The server's web TLS certificate (what the agent hashes into Hweb)."""
    ca_cert, ca_key = make_ca("Test Root")
    cert, _key = make_leaf(ca_cert, ca_key, "localhost", sans=("localhost", "127.0.0.1"))
    return cert


@lru_cache(maxsize=None)
def node_identity(bits: int = 2048, slot: int = 2) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """An agent's node certificate, like MeshAgent makes it: self-signed, CN=MeshNodeCertificate."""
    key = _rsa(bits, slot)
    return _self_signed(key, "MeshNodeCertificate"), key


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _pkcs1_hash(cert: x509.Certificate) -> bytes:
    return hashlib.sha384(cert.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1)).digest()


def expected_node_id(cert: x509.Certificate) -> str:
    """Node id per spec §2, computed without meshd."""
    return base64.b64encode(_pkcs1_hash(cert)).decode().replace("+", "@").replace("/", "$")


def web_full_hash() -> bytes:
    return hashlib.sha384(_der(web_cert())).digest()


def web_key_hash() -> bytes:
    return _pkcs1_hash(web_cert())


MESH_ID = bytes(range(7, 55))


class FakeAgent:
    """The MeshAgent side of the handshake, from spec §3 (frames built by hand)."""

    def __init__(
        self,
        *,
        node: Optional[tuple[x509.Certificate, rsa.RSAPrivateKey]] = None,
        skip: bool = False,
        hweb: Optional[bytes] = None,
        server_id: Optional[bytes] = None,
        agent_name: Optional[str] = None,
        sign: Optional[Callable[[bytes], bytes]] = None,
    ) -> None:
        self.cert, self.key = node or node_identity()
        self.skip = skip
        self.hweb = web_full_hash() if hweb is None else hweb
        server_cert, _ = server_agent_identity()
        self.server_id = _pkcs1_hash(server_cert) if server_id is None else server_id
        self.agent_name = agent_name
        self.sign = sign or (lambda data: self.key.sign(data, padding.PKCS1v15(), hashes.SHA384()))
        self.nonce = os.urandom(48)
        self.server_nonce: Optional[bytes] = None
        self.server_verified = False
        self.confirmed = False
        self.received: list[bytes] = []

    def hello(self) -> list[bytes]:
        """What the agent sends right after the WebSocket opens (observed order)."""
        frames = [
            b"\x00\x1e" + b"2022-Nov-2 23:01:45-0700\x00",
            b"\x00\x1f" + b"Debian GNU/Linux 12 (bookworm) - x64",
            b"\x00\x05" + self.server_id,
        ]
        if self.skip:
            frames.append(b"\x00\x04")
        frames.append(b"\x00\x01" + self.hweb + self.nonce)
        return frames

    def auth_verify(self) -> bytes:
        assert self.server_nonce is not None
        signature = self.sign(self.hweb + self.server_nonce + self.nonce)
        der = _der(self.cert)
        return b"\x00\x02" + len(der).to_bytes(2, "big") + der + signature

    def agent_info(self) -> bytes:
        name = b"vm"
        return (
            b"\x00\x03"
            + b"".join(v.to_bytes(4, "big") for v in (1, 6, 0, 1))
            + MESH_ID
            + (0x138).to_bytes(4, "big")
            + len(name).to_bytes(2, "big")
            + name
        )

    def after_verify(self) -> list[bytes]:
        frames = []
        if self.agent_name is not None:
            frames.append(json.dumps({"action": "agentName", "value": self.agent_name}).encode())
        frames.append(self.agent_info())
        return frames

    def on_server(self, frame: bytes) -> list[bytes]:
        """Handle one server frame, return the agent's answers."""
        self.received.append(frame)
        command = int.from_bytes(frame[:2], "big")
        if command == 1:
            if len(frame) != 98 or frame[2:50] != self.hweb:
                raise AssertionError("Bad server certificate hash")
            self.server_nonce = frame[50:98]
            if self.skip:
                return [self.agent_info(), self.auth_verify()]
            return [self.auth_verify()]
        if command == 2:
            assert self.server_nonce is not None
            cert_len = int.from_bytes(frame[2:4], "big")
            cert = x509.load_der_x509_certificate(frame[4 : 4 + cert_len])
            if _pkcs1_hash(cert) != self.server_id:
                raise AssertionError("Server certificate mismatch")
            public_key = cert.public_key()
            assert isinstance(public_key, rsa.RSAPublicKey)
            # The agent recomputes Hweb from the TLS peer itself (here: the web cert).
            data = hashlib.sha384(_der(web_cert())).digest() + self.nonce + self.server_nonce
            public_key.verify(frame[4 + cert_len :], data, padding.PKCS1v15(), hashes.SHA384())
            self.server_verified = True
            return self.after_verify()
        if command == 4:
            self.confirmed = True
            return []
        raise AssertionError(f"unexpected server command {command}")


class Clock:
    """A settable clock for ``now``."""

    def __init__(self) -> None:
        self.time = 1000.0

    def __call__(self) -> float:
        return self.time


def make_machine(**kwargs: Any) -> ServerHandshake:
    cert, key = server_agent_identity()
    kwargs.setdefault("now", Clock())
    kwargs.setdefault("tls_hashes", identity.accepted_tls_hashes(web_cert()))
    return ServerHandshake(cert, key, **kwargs)


def run(machine: ServerHandshake, agent: FakeAgent, confirm: bool = True) -> list[Event]:
    """Drive both sides until quiet; return every machine event. Confirms on Authenticated."""
    events: list[Event] = []
    to_server = list(agent.hello())
    for frame in machine.start():
        to_server.extend(agent.on_server(frame))
    while to_server:
        new = machine.receive(to_server.pop(0))
        events.extend(new)
        for event in new:
            if isinstance(event, Send):
                to_server.extend(agent.on_server(event.frame))
            elif isinstance(event, Authenticated) and confirm:
                for frame in machine.confirm():
                    to_server.extend(agent.on_server(frame))
    return events


def fails(events: list[Event]) -> list[Fail]:
    return [e for e in events if isinstance(e, Fail)]


class HandshakeTests(unittest.TestCase):
    """The server handshake against a spec-built agent."""

    def test_full_handshake(self) -> None:
        """A fresh agent authenticates; the node id matches an independent computation."""
        agent = FakeAgent(agent_name="my-pc")
        machine = make_machine()
        events = run(machine, agent)
        self.assertEqual(fails(events), [])
        done = [e for e in events if isinstance(e, Authenticated)]
        self.assertEqual(len(done), 1)
        result = done[0]
        self.assertEqual(result.node_id, expected_node_id(agent.cert))
        self.assertEqual(len(result.node_id), 64)
        self.assertEqual(result.certificate, agent.cert)
        self.assertEqual(result.agent_info.mesh_id, MESH_ID)
        self.assertEqual(result.agent_info.hostname, "vm")
        self.assertEqual(result.agent_info.capabilities, 0x138)
        self.assertEqual(result.agent_name, "my-pc")
        self.assertEqual(result.commit_date, "2022-Nov-2 23:01:45-0700")
        self.assertEqual(result.host_info, "Debian GNU/Linux 12 (bookworm) - x64")
        self.assertEqual(result.tls_hash, web_full_hash())
        self.assertFalse(result.server_auth_skipped)
        self.assertTrue(agent.server_verified)
        self.assertTrue(agent.confirmed)
        self.assertEqual(machine.state, State.CONFIRMED)

    def test_full_handshake_frames(self) -> None:
        """The server sends exactly S1 (98 bytes), S2 (cert + 256-byte sig), then S4."""
        agent = FakeAgent()
        run(make_machine(), agent)
        server_cert, _ = server_agent_identity()
        der = _der(server_cert)
        self.assertEqual([f[:2] for f in agent.received], [b"\x00\x01", b"\x00\x02", b"\x00\x04"])
        self.assertEqual(len(agent.received[0]), 98)
        self.assertEqual(agent.received[1][2:4], len(der).to_bytes(2, "big"))
        self.assertEqual(agent.received[1][4 : 4 + len(der)], der)
        self.assertEqual(len(agent.received[1]), 4 + len(der) + 256)
        self.assertEqual(agent.received[2], b"\x00\x04")

    def test_start_sends_nothing(self) -> None:
        """Like MeshCentral 1.1.55 the server waits for the agent's command 1."""
        self.assertEqual(make_machine().start(), [])

    def test_injected_nonce(self) -> None:
        """The server nonce comes from the injected source and is echoed in S1."""
        machine = make_machine(random_bytes=lambda n: b"\x5a" * n)
        agent = FakeAgent()
        run(machine, agent)
        self.assertEqual(agent.received[0][50:], b"\x5a" * 48)

    def test_bad_nonce_source(self) -> None:
        """A nonce source returning the wrong length is refused at start()."""
        machine = make_machine(random_bytes=lambda n: b"short")
        self.assertRaises(ValueError, machine.start)

    def test_skip_path(self) -> None:
        """After A4 the server sends S1 and S4 only; A3 may precede A2."""
        agent = FakeAgent(skip=True)
        events = run(make_machine(), agent)
        self.assertEqual(fails(events), [])
        self.assertEqual([f[:2] for f in agent.received], [b"\x00\x01", b"\x00\x04"])
        done = [e for e in events if isinstance(e, Authenticated)]
        self.assertTrue(done[0].server_auth_skipped)
        self.assertEqual(done[0].node_id, expected_node_id(agent.cert))

    def test_legacy_key_hash_accepted(self) -> None:
        """An agent presenting the TLS key hash (legacy) is accepted and that hash is echoed."""
        agent = FakeAgent(hweb=web_key_hash(), skip=True)
        events = run(make_machine(), agent)
        self.assertEqual(fails(events), [])
        self.assertEqual(agent.received[0][2:50], web_key_hash())
        done = [e for e in events if isinstance(e, Authenticated)]
        self.assertEqual(done[0].tls_hash, web_key_hash())

    def test_legacy_key_hash_full_path(self) -> None:
        """With the key hash the server signs Hweb‖Na‖Ns over the hash the agent sent."""
        agent = FakeAgent(hweb=web_key_hash())
        machine = make_machine()
        machine.start()
        for frame in agent.hello()[:-1]:
            self.assertEqual(machine.receive(frame), [])
        events = machine.receive(agent.hello()[-1])
        s1, s2 = (e.frame for e in events if isinstance(e, Send))
        server_cert, _ = server_agent_identity()
        cert_len = int.from_bytes(s2[2:4], "big")
        public_key = server_cert.public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        public_key.verify(
            s2[4 + cert_len :], web_key_hash() + agent.nonce + s1[50:],
            padding.PKCS1v15(), hashes.SHA384(),
        )

    def test_only_configured_hashes(self) -> None:
        """With only the full hash configured, the key hash is refused."""
        agent = FakeAgent(hweb=web_key_hash())
        events = run(make_machine(tls_hashes=[web_full_hash()]), agent)
        self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_TLS_HASH])

    def test_wrong_tls_hash(self) -> None:
        """An agent that saw another TLS cert fails at A1 and gets nothing."""
        agent = FakeAgent(hweb=hashlib.sha384(b"other cert").digest())
        events = run(make_machine(), agent)
        self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_TLS_HASH])
        self.assertEqual(agent.received, [])

    def test_bad_signature(self) -> None:
        """A signature over the wrong bytes fails with BAD_SIGNATURE."""
        node_cert, node_key = node_identity()
        agent = FakeAgent(
            sign=lambda data: node_key.sign(data[::-1], padding.PKCS1v15(), hashes.SHA384())
        )
        events = run(make_machine(), agent)
        self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_SIGNATURE])
        self.assertFalse([e for e in events if isinstance(e, Authenticated)])

    def test_swapped_nonces(self) -> None:
        """Signing Hweb‖Na‖Ns (the server's order) instead of Hweb‖Ns‖Na is refused."""
        agent = FakeAgent()
        _, node_key = node_identity()

        def swapped(data: bytes) -> bytes:
            reordered = data[:48] + data[96:] + data[48:96]
            return node_key.sign(reordered, padding.PKCS1v15(), hashes.SHA384())

        agent.sign = swapped
        events = run(make_machine(), agent)
        self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_SIGNATURE])

    def test_signature_by_other_key(self) -> None:
        """A signature made with a key other than the certificate's is refused."""
        other = _rsa(2048, 3)
        agent = FakeAgent(sign=lambda d: other.sign(d, padding.PKCS1v15(), hashes.SHA384()))
        events = run(make_machine(), agent)
        self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_SIGNATURE])

    def test_sha256_signature_refused(self) -> None:
        """RSA-PKCS#1 with SHA-256 is not what the spec says; refused."""
        _, node_key = node_identity()
        agent = FakeAgent(sign=lambda d: node_key.sign(d, padding.PKCS1v15(), hashes.SHA256()))
        events = run(make_machine(), agent)
        self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_SIGNATURE])

    def test_bigger_key_raw_signature(self) -> None:
        """A 2560-bit node key's raw 320-byte signature is taken as raw (length = modulus)."""
        agent = FakeAgent(node=node_identity(2560, 4))
        events = run(make_machine(), agent)
        self.assertEqual(fails(events), [])
        done = [e for e in events if isinstance(e, Authenticated)]
        self.assertEqual(done[0].node_id, expected_node_id(agent.cert))

    def test_non_rsa_node_cert(self) -> None:
        """A node certificate with an EC key is refused (RSA is required)."""
        ec_key = ec.generate_private_key(ec.SECP256R1())
        cert = _self_signed(ec_key, "MeshNodeCertificate")
        agent = FakeAgent(
            node=(cert, _rsa(2048, 2)),
            sign=lambda d: ec_key.sign(d, ec.ECDSA(hashes.SHA384())),
        )
        events = run(make_machine(), agent)
        self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_CERTIFICATE])

    def test_small_rsa_node_key(self) -> None:
        """A node key under 2048 bits is refused."""
        agent = FakeAgent(node=node_identity(1024, 5))
        events = run(make_machine(), agent)
        self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_CERTIFICATE])

    def test_garbage_certificate(self) -> None:
        """Bytes that are not a certificate in A2 fail with BAD_CERTIFICATE."""
        machine, agent = self._after_auth_request()
        events = machine.receive(b"\x00\x02\x00\x04abcd" + bytes(256))
        self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_CERTIFICATE])

    def test_server_id_mismatch(self) -> None:
        """An agent expecting another ServerID fails at A1 instead of stalling later."""
        agent = FakeAgent(server_id=hashlib.sha384(b"other server").digest())
        events = run(make_machine(), agent)
        self.assertEqual([f.reason for f in fails(events)], [FailReason.SERVER_ID_MISMATCH])

    def test_server_id_mismatch_with_skip(self) -> None:
        """With A4 the agent does not check our cert, so a ServerID mismatch is tolerated."""
        agent = FakeAgent(server_id=hashlib.sha384(b"other server").digest(), skip=True)
        events = run(make_machine(), agent)
        self.assertEqual(fails(events), [])
        done = [e for e in events if isinstance(e, Authenticated)]
        self.assertEqual(done[0].expected_server_id, agent.server_id)

    def test_legacy_sha256_server_id(self) -> None:
        """A 32-byte SHA-256 ServerID (old .mshx) matching our key is accepted."""
        server_cert, _ = server_agent_identity()
        legacy = hashlib.sha256(
            server_cert.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1)
        ).digest()
        agent = FakeAgent(server_id=legacy)
        agent.server_id = legacy
        machine = make_machine()
        machine.start()
        frames = agent.hello()
        events: list[Event] = []
        for frame in frames:
            events.extend(machine.receive(frame))
        self.assertEqual(fails(events), [])
        self.assertEqual(len([e for e in events if isinstance(e, Send)]), 2)

    # -- order and duplicates ------------------------------------------------------------------

    def _after_auth_request(self, **kwargs: Any) -> tuple[ServerHandshake, FakeAgent]:
        agent = FakeAgent(**kwargs)
        machine = make_machine()
        machine.start()
        for frame in agent.hello():
            for event in machine.receive(frame):
                if isinstance(event, Send) and event.frame[:2] == b"\x00\x01":
                    agent.server_nonce = event.frame[50:]
        return machine, agent

    def assertFailsWith(self, events: list[Event], reason: FailReason) -> None:
        self.assertEqual([f.reason for f in fails(events)], [reason])

    def test_auth_verify_before_request(self) -> None:
        """A2 before A1 is impossible for an honest agent (it needs Ns): UNEXPECTED."""
        agent = FakeAgent()
        agent.server_nonce = bytes(48)
        machine = make_machine()
        machine.start()
        self.assertFailsWith(machine.receive(agent.auth_verify()), FailReason.UNEXPECTED)

    def test_agent_info_before_request(self) -> None:
        """A3 before A1 fails with UNEXPECTED."""
        machine = make_machine()
        machine.start()
        self.assertFailsWith(machine.receive(FakeAgent().agent_info()), FailReason.UNEXPECTED)

    def test_duplicate_agent_info(self) -> None:
        """A second AgentInfo fails with UNEXPECTED."""
        machine, agent = self._after_auth_request()
        self.assertEqual(machine.receive(agent.agent_info()), [])
        self.assertFailsWith(machine.receive(agent.agent_info()), FailReason.UNEXPECTED)

    def test_duplicate_auth_request(self) -> None:
        """A second AuthRequest fails with UNEXPECTED."""
        machine, agent = self._after_auth_request()
        self.assertFailsWith(machine.receive(agent.hello()[-1]), FailReason.UNEXPECTED)

    def test_duplicate_auth_verify(self) -> None:
        """A second AuthVerify fails with UNEXPECTED."""
        machine, agent = self._after_auth_request()
        self.assertEqual(machine.receive(agent.auth_verify()), [])
        self.assertFailsWith(machine.receive(agent.auth_verify()), FailReason.UNEXPECTED)

    def test_hello_commands_after_request(self) -> None:
        """Commands 30, 31, 5 and 4 after A1 fail with UNEXPECTED."""
        for frame in (
            b"\x00\x1e2022\x00",
            b"\x00\x1fLinux",
            b"\x00\x05" + bytes(48),
            b"\x00\x04",
        ):
            machine, agent = self._after_auth_request()
            self.assertFailsWith(machine.receive(frame), FailReason.UNEXPECTED)

    def test_duplicate_hello_command(self) -> None:
        """The same informational command twice fails with UNEXPECTED."""
        machine = make_machine()
        machine.start()
        self.assertEqual(machine.receive(b"\x00\x1fLinux"), [])
        self.assertFailsWith(machine.receive(b"\x00\x1fLinux"), FailReason.UNEXPECTED)

    def test_frame_before_confirm(self) -> None:
        """Any frame between Authenticated and confirm() fails with UNEXPECTED."""
        machine = make_machine()
        events = run(machine, FakeAgent(), confirm=False)
        self.assertEqual(machine.state, State.AUTHENTICATED)
        self.assertTrue([e for e in events if isinstance(e, Authenticated)])
        self.assertFailsWith(machine.receive(b"\x00\x0f"), FailReason.UNEXPECTED)

    def test_malformed_frame(self) -> None:
        """A truncated or unknown command fails with MALFORMED."""
        for frame in (b"\x00\x01" + bytes(50), b"\x00\x09", b"\x00\x0b\x00\x00", b"{x"):
            machine = make_machine()
            machine.start()
            self.assertFailsWith(machine.receive(frame), FailReason.MALFORMED)

    def test_too_many_frames(self) -> None:
        """More than MAX_PREAUTH_FRAMES pre-auth frames (even ignored JSON) fail."""
        machine = make_machine()
        machine.start()
        for _ in range(MAX_PREAUTH_FRAMES):
            self.assertEqual(machine.receive(b'{"action":"noise"}'), [])
        self.assertFailsWith(machine.receive(b'{"action":"noise"}'), FailReason.TOO_MANY_FRAMES)

    def test_agent_name_rules(self) -> None:
        """agentName is taken once; an invalid value is ignored; a second one fails."""
        machine = make_machine()
        machine.start()
        self.assertEqual(machine.receive(b'{"action":"agentName","value":""}'), [])
        self.assertFailsWith(
            machine.receive(b'{"action":"agentName","value":"x"}'), FailReason.UNEXPECTED
        )
        agent = FakeAgent(agent_name="n" * 300)
        done = [e for e in run(make_machine(), agent) if isinstance(e, Authenticated)]
        self.assertIsNone(done[0].agent_name)

    def test_after_fail_ignored(self) -> None:
        """After a Fail every further frame is ignored."""
        machine = make_machine()
        machine.start()
        self.assertTrue(fails(machine.receive(b"\x00\x09")))
        self.assertEqual(machine.receive(b"\x00\x04"), [])
        self.assertEqual(machine.state, State.FAILED)
        self.assertEqual(machine.check_timeout(), [])

    def test_api_misuse(self) -> None:
        """receive before start, start twice, confirm early or receive after confirm raise."""
        machine = make_machine()
        self.assertRaises(RuntimeError, machine.receive, b"\x00\x04")
        machine.start()
        self.assertRaises(RuntimeError, machine.start)
        self.assertRaises(RuntimeError, machine.confirm)
        run_machine = make_machine()
        run(run_machine, FakeAgent())
        self.assertRaises(RuntimeError, run_machine.receive, b"\x00\x0f")
        self.assertRaises(RuntimeError, run_machine.confirm)

    def test_reject(self) -> None:
        """reject() after Authenticated (e.g. unknown group) yields Fail(REJECTED)."""
        machine = make_machine()
        run(machine, FakeAgent(), confirm=False)
        self.assertFailsWith(machine.reject("unknown group"), FailReason.REJECTED)
        self.assertEqual(machine.reject("again"), [])

    def test_timeout(self) -> None:
        """check_timeout fails the handshake only once the deadline has passed."""
        clock = Clock()
        machine = make_machine(now=clock, timeout=30.0)
        machine.start()
        self.assertEqual(machine.deadline, clock.time + 30.0)
        clock.time += 29.9
        self.assertEqual(machine.check_timeout(), [])
        clock.time += 0.1
        self.assertFailsWith(machine.check_timeout(), FailReason.TIMEOUT)

    def test_no_timeout_after_confirm(self) -> None:
        """A confirmed handshake never times out."""
        clock = Clock()
        machine = make_machine(now=clock)
        run(machine, FakeAgent())
        clock.time += 10_000
        self.assertEqual(machine.check_timeout(), [])

    def test_constructor_checks(self) -> None:
        """Mismatched key/cert or bad TLS hashes are refused at construction."""
        cert, _key = server_agent_identity()
        with self.assertRaises(ValueError):
            ServerHandshake(cert, _rsa(2048, 3), [web_full_hash()], now=Clock())
        with self.assertRaises(ValueError):
            ServerHandshake(cert, _key, [], now=Clock())
        with self.assertRaises(ValueError):
            ServerHandshake(cert, _key, [b"short"], now=Clock())

    # -- crypto offload ------------------------------------------------------------------------

    def test_offload(self) -> None:
        """With offload the machine yields jobs; results drive it to Authenticated."""
        agent = FakeAgent()
        machine = make_machine(offload=True)
        machine.start()
        events: list[Event] = []
        for frame in agent.hello():
            events.extend(machine.receive(frame))
        self.assertIsInstance(events[0], Send)
        sign_job = events[1]
        assert isinstance(sign_job, SignJob)
        agent.on_server(events[0].frame)  # type: ignore[union-attr]
        # The agent's A2 arrives while our signature is still being computed.
        verify_events = machine.receive(agent.auth_verify())
        verify_job = verify_events[0]
        assert isinstance(verify_job, VerifyJob)
        self.assertTrue(machine.execute(verify_job))
        self.assertEqual(machine.job_done(verify_job, True), [])
        signed = machine.job_done(sign_job, machine.execute(sign_job))
        self.assertEqual(len(signed), 1)
        replies = agent.on_server(signed[0].frame)  # type: ignore[union-attr]
        done = machine.receive(replies[-1])
        self.assertIsInstance(done[0], Authenticated)
        self.assertEqual(done[0].node_id, expected_node_id(agent.cert))  # type: ignore[union-attr]

    def test_offload_waits_for_sign(self) -> None:
        """Authenticated never precedes our S2 even if A2 and A3 arrive before signing ends."""
        agent = FakeAgent()
        machine = make_machine(offload=True)
        machine.start()
        events: list[Event] = []
        for frame in agent.hello():
            events.extend(machine.receive(frame))
        sign_job = events[1]
        assert isinstance(sign_job, SignJob)
        agent.on_server(events[0].frame)  # type: ignore[union-attr]
        verify_job = machine.receive(agent.auth_verify())[0]
        assert isinstance(verify_job, VerifyJob)
        self.assertEqual(machine.receive(agent.agent_info()), [])
        self.assertEqual(machine.job_done(verify_job, True), [])
        after = machine.job_done(sign_job, machine.execute(sign_job))
        self.assertIsInstance(after[0], Send)
        self.assertIsInstance(after[1], Authenticated)

    def test_offload_bad_signature(self) -> None:
        """A False verify result fails; late job results after a Fail are ignored."""
        agent = FakeAgent()
        machine = make_machine(offload=True)
        machine.start()
        events: list[Event] = []
        for frame in agent.hello():
            events.extend(machine.receive(frame))
        sign_job = events[1]
        assert isinstance(sign_job, SignJob)
        agent.on_server(events[0].frame)  # type: ignore[union-attr]
        verify_job = machine.receive(agent.auth_verify())[0]
        assert isinstance(verify_job, VerifyJob)
        self.assertFailsWith(machine.job_done(verify_job, False), FailReason.BAD_SIGNATURE)
        self.assertEqual(machine.job_done(sign_job, b"sig"), [])

    def test_offload_unknown_job(self) -> None:
        """job_done with a job the machine did not issue is a programming error."""
        machine = make_machine(offload=True)
        machine.start()
        self.assertRaises(RuntimeError, machine.job_done, SignJob(99, b""), b"x")

    def test_injected_verifier(self) -> None:
        """The injected verify function decides, and gets SPKI DER, signature and M_a."""
        calls: list[tuple[bytes, bytes, bytes]] = []

        def verify(key_der: bytes, signature: bytes, data: bytes) -> bool:
            calls.append((key_der, signature, data))
            return verify_pkcs1_sha384(key_der, signature, data)

        agent = FakeAgent()
        events = run(make_machine(verify=verify), agent)
        self.assertEqual(fails(events), [])
        key_der, _sig, data = calls[0]
        self.assertEqual(
            key_der,
            agent.cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        )
        self.assertEqual(data[:48], web_full_hash())
        self.assertEqual(data[96:], agent.nonce)

    def test_default_verifier_rejects_garbage(self) -> None:
        """verify_pkcs1_sha384 returns False for an unreadable key or a non-RSA key."""
        self.assertFalse(verify_pkcs1_sha384(b"nope", b"sig", b"data"))
        ec_der = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        )
        self.assertFalse(verify_pkcs1_sha384(ec_der, b"sig", b"data"))

    # -- PKCS#7 signatures (Windows agents with the OS cert store) -----------------------------

    def _pkcs7_signer(
        self, options: list[pkcs7.PKCS7Options], algorithm: Any = None
    ) -> Callable[[bytes], bytes]:
        cert, key = node_identity()
        # Binary: sign the bytes as they are (no MIME canonicalisation of line ends).
        options = [pkcs7.PKCS7Options.Binary, *options]

        def sign(data: bytes) -> bytes:
            return (
                pkcs7.PKCS7SignatureBuilder()
                .set_data(data)
                .add_signer(cert, key, algorithm or hashes.SHA384())
                .sign(serialization.Encoding.DER, options)
            )

        return sign

    def test_pkcs7_without_attributes(self) -> None:
        """A detached PKCS#7 signature without signed attributes is accepted."""
        sign = self._pkcs7_signer(
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoAttributes]
        )
        events = run(make_machine(), FakeAgent(sign=sign))
        self.assertEqual(fails(events), [])

    def test_pkcs7_with_attributes(self) -> None:
        """A detached PKCS#7 signature with signed attributes (messageDigest) is accepted."""
        sign = self._pkcs7_signer([pkcs7.PKCS7Options.DetachedSignature])
        events = run(make_machine(), FakeAgent(sign=sign))
        self.assertEqual(fails(events), [])

    def test_pkcs7_wrong_digest(self) -> None:
        """A PKCS#7 signature using SHA-256 is refused."""
        sign = self._pkcs7_signer(
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoAttributes],
            hashes.SHA256(),
        )
        events = run(make_machine(), FakeAgent(sign=sign))
        self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_SIGNATURE])

    def test_pkcs7_over_other_data(self) -> None:
        """A PKCS#7 signature over different bytes is refused (with and without attributes)."""
        for options in (
            [pkcs7.PKCS7Options.DetachedSignature],
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoAttributes],
        ):
            inner = self._pkcs7_signer(options)
            events = run(make_machine(), FakeAgent(sign=lambda d: inner(d + b"x")))
            self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_SIGNATURE])

    def test_signature_of_wrong_length(self) -> None:
        """A signature neither modulus-sized nor PKCS#7 is refused."""
        events = run(make_machine(), FakeAgent(sign=lambda d: bytes(300)))
        self.assertEqual([f.reason for f in fails(events)], [FailReason.BAD_SIGNATURE])


class Pkcs7Tests(unittest.TestCase):
    """meshd.agent.pkcs7 parses SignedData strictly."""

    def test_garbage(self) -> None:
        """Truncations of a valid blob and junk raise Pkcs7Error."""
        cert, key = node_identity()
        blob = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(b"m")
            .add_signer(cert, key, hashes.SHA384())
            .sign(
                serialization.Encoding.DER,
                [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.DetachedSignature],
            )
        )
        signed, signature = meshd_pkcs7.signed_payload(blob, b"m")
        key.public_key().verify(signature, signed, padding.PKCS1v15(), hashes.SHA384())
        for cut in range(0, len(blob), 7):
            with self.assertRaises(meshd_pkcs7.Pkcs7Error):
                meshd_pkcs7.signed_payload(blob[:cut], b"m")
        for junk in (b"", b"\x30\x80\x00\x00", b"\x30\x05\x06\x03abc", blob + b"\x00"):
            with self.assertRaises(meshd_pkcs7.Pkcs7Error):
                meshd_pkcs7.signed_payload(junk, b"m")


class IdentityTests(unittest.TestCase):
    """meshd.agent.identity computes the spec's ids and hashes."""

    def test_node_id(self) -> None:
        """node_id_from_cert is base64(SHA-384(PKCS#1)) with @/$ and no padding, 64 chars."""
        cert, _ = node_identity()
        node_id = identity.node_id_from_cert(_der(cert))
        self.assertEqual(node_id, expected_node_id(cert))
        self.assertEqual(identity.node_id_from_cert(cert), node_id)
        self.assertEqual(len(node_id), 64)
        self.assertNotIn("=", node_id)
        self.assertEqual(identity.node_key(node_id), "node//" + node_id)

    def test_observed_node_id_form(self) -> None:
        """The observed id decodes to 48 bytes and re-encodes unchanged."""
        observed = "SW1JRn4y1KtmcFBTiioYKczqyBJQW2uJdK185ALcM5rxvTbE99$JdPsXbRPE2gkC"
        raw = identity.decode_id(observed)
        self.assertEqual(len(raw), 48)
        self.assertEqual(identity.encode_id(raw), observed)

    def test_decode_id_rejects(self) -> None:
        """decode_id refuses other alphabets, padding and bad lengths."""
        for bad in ("", "ab+c", "ab/c", "abc=", "a", "abcde", "ab c"):
            with self.assertRaises(ValueError, msg=bad):
                identity.decode_id(bad)

    def test_server_id(self) -> None:
        """server_id is the upper-hex SHA-384 of the PKCS#1 public key (96 chars, no 0x)."""
        cert, _ = server_agent_identity()
        expected = _pkcs1_hash(cert).hex().upper()
        self.assertEqual(identity.server_id(cert), expected)
        self.assertEqual(identity.parse_server_id(expected), _pkcs1_hash(cert))
        self.assertEqual(identity.parse_server_id("0x" + expected.lower()), _pkcs1_hash(cert))
        self.assertRaises(ValueError, identity.parse_server_id, expected[:-1])
        self.assertEqual(len(identity.server_id_sha256(cert)), 32)

    def test_key_bits_equal_pkcs1(self) -> None:
        """For RSA the BIT STRING contents equal the PKCS#1 DER (as OpenSSL and forge hash)."""
        for cert in (node_identity()[0], web_cert()):
            self.assertEqual(
                identity.public_key_bits(cert),
                cert.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1),
            )

    def test_key_bits_ec(self) -> None:
        """For an EC certificate the key hash covers the encoded point."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _self_signed(key, "ec")
        point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.assertEqual(identity.public_key_bits(cert), point)

    def test_key_bits_garbage(self) -> None:
        """Non-certificate bytes raise ValueError."""
        for junk in (b"", b"\x30\x00", b"\x30\x03\x30\x01\x00", bytes(10)):
            self.assertRaises(ValueError, identity.public_key_bits, junk)

    def test_tls_hashes(self) -> None:
        """tls_cert_hash hashes the DER; accepted_tls_hashes adds the key hash."""
        cert = web_cert()
        self.assertEqual(identity.tls_cert_hash(_der(cert)), web_full_hash())
        self.assertEqual(identity.tls_cert_hash(cert), web_full_hash())
        self.assertEqual(identity.accepted_tls_hashes(cert), {web_full_hash(), web_key_hash()})

    def test_mesh_id_forms(self) -> None:
        """Mesh ids convert between raw, .msh hex (upper, 0x) and @/$ base64 forms."""
        raw = bytes(range(200, 248))
        msh = identity.mesh_id_to_msh(raw)
        self.assertEqual(msh, "0x" + raw.hex().upper())
        self.assertEqual(identity.mesh_id_from_msh(msh), raw)
        self.assertEqual(identity.mesh_id_from_msh(" " + msh.lower() + "\r"), raw)
        text = identity.mesh_id_to_str(raw)
        self.assertEqual(text, base64.b64encode(raw).decode().replace("+", "@").replace("/", "$"))
        self.assertEqual(identity.mesh_id_from_str(text), raw)
        self.assertEqual(identity.mesh_id_from_str(identity.mesh_key(text)), raw)
        self.assertEqual(identity.mesh_key(text), "mesh//" + text)
        self.assertEqual(identity.mesh_id_from_agent_info(raw), text)

    def test_legacy_mesh_id(self) -> None:
        """A 32-byte mesh id: 64-hex .msh, zero-padded in command 3, named by lower hex."""
        raw = bytes(range(32))
        self.assertEqual(identity.mesh_id_from_msh("0x" + raw.hex()), raw)
        field = identity.pad_mesh_id(raw)
        self.assertEqual(field, raw + bytes(16))
        self.assertEqual(identity.mesh_id_from_agent_info(field), raw.hex())
        self.assertEqual(identity.mesh_id_to_str(raw), raw.hex())
        self.assertEqual(identity.mesh_id_from_str(raw.hex()), raw)

    def test_mesh_id_rejects(self) -> None:
        """Malformed mesh ids raise ValueError."""
        for bad in ("", "0x", "0x1234", "ab" * 48, "0x" + "zz" * 48):
            with self.assertRaises(ValueError, msg=bad):
                identity.mesh_id_from_msh(bad)
        self.assertRaises(ValueError, identity.mesh_id_to_msh, bytes(47))
        self.assertRaises(ValueError, identity.mesh_id_from_agent_info, bytes(32))
        self.assertRaises(ValueError, identity.mesh_id_from_str, "mesh/x")
        self.assertRaises(ValueError, identity.mesh_id_from_str, identity.encode_id(bytes(30)))


_frames = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda command, body: command.to_bytes(2, "big") + body,
        st.sampled_from([1, 2, 3, 4, 5, 11, 15, 30, 31, 1000]),
        st.binary(max_size=200),
    ),
    st.sampled_from([b"\x00\x04", b'{"action":"agentName","value":"x"}', b"{"]),
)


class FuzzTests(unittest.TestCase):
    """Nothing an agent sends before authentication can raise out of the machine."""

    @settings(max_examples=200, deadline=None)
    @given(st.lists(_frames, max_size=20))
    def test_random_frames(self, frames: list[bytes]) -> None:
        """Random frame sequences yield events (at most one Fail), never exceptions."""
        machine = make_machine()
        machine.start()
        events: list[Event] = []
        for frame in frames:
            events.extend(machine.receive(frame))
        self.assertLessEqual(len(fails(events)), 1)
        self.assertFalse([e for e in events if isinstance(e, Authenticated)])
