"""Tests for meshd.tls over real TLS sockets on 127.0.0.1.

The server is ``reactor.listenSSL`` with a tiny echo protocol; clients are Python's ``ssl``
module (system OpenSSL) or a raw hand-written ClientHello, run in a thread so the reactor
serves meanwhile.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import struct
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL
from twisted.internet import defer, reactor, threads
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshd.tls import (
    MPS_TLS_CIPHERS,
    WEB_TLS12_CIPHERS,
    ReloadableContextFactory,
    mps_context_factory,
    web_context_factory,
)
from tests.certutil import make_ca, make_intermediate, make_leaf, write_pem

_TIMEOUT = 10.0
_PING = b"ping"


# --- test PKI (generated once per run) -------------------------------------------------------


@dataclass(frozen=True)
class _PKI:
    root: x509.Certificate
    root_key: rsa.RSAPrivateKey
    intermediate: x509.Certificate
    leaf: x509.Certificate  # issued by the intermediate
    leaf_key: rsa.RSAPrivateKey
    other: x509.Certificate  # issued by the root directly
    other_key: rsa.RSAPrivateKey
    client: x509.Certificate  # self-signed, as a stand-in for an AMT client certificate
    client_key: rsa.RSAPrivateKey


@functools.cache
def _pki() -> _PKI:
    root, root_key = make_ca("meshd test root")
    intermediate, intermediate_key = make_intermediate(root, root_key, "meshd test intermediate")
    sans = ("localhost", "127.0.0.1")
    leaf, leaf_key = make_leaf(intermediate, intermediate_key, "localhost", sans=sans)
    other, other_key = make_leaf(root, root_key, "other.localhost", sans=sans)
    client, client_key = make_ca("amt client")
    return _PKI(root, root_key, intermediate, leaf, leaf_key, other, other_key, client, client_key)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


# --- server side ------------------------------------------------------------------------------


class _Echo(Protocol):
    factory: _EchoFactory

    def connectionMade(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.factory.live.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.factory.peer_certificates.append(self.transport.getPeerCertificate())
        self.transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.live.discard(self)
        self.lost.callback(None)


class _EchoFactory(Factory):
    protocol = _Echo

    def __init__(self) -> None:
        self.live: set[_Echo] = set()
        self.peer_certificates: list[Any] = []

    def close_all(self) -> defer.Deferred[Any]:
        """Abort every server-side connection still open and wait until they are gone."""
        waiting = [p.lost for p in self.live]
        for proto in list(self.live):
            proto.transport.abortConnection()
        return defer.DeferredList(waiting)


# --- client side (runs in a thread) -----------------------------------------------------------

_VERSION_NAMES = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def _client_context(
    version: str,
    *,
    ciphers: str | None = None,
    cafile_pem: str | None = None,
    alpn: Sequence[str] | None = None,
    certfile: str | None = None,
) -> ssl.SSLContext:
    """A stdlib client context pinned to one TLS version (and optionally suites)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        # TLSVersion.TLSv1/TLSv1_1 are deprecated in the ssl module: exactly what we test.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = _VERSION_NAMES[version]
        ctx.maximum_version = _VERSION_NAMES[version]
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    elif version in ("1.0", "1.1"):
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if cafile_pem is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=cafile_pem)
    if alpn is not None:
        ctx.set_alpn_protocols(list(alpn))
    if certfile is not None:
        ctx.load_cert_chain(certfile)
    return ctx


@dataclass
class _Session:
    sock: ssl.SSLSocket
    version: str | None
    cipher: str
    alpn: str | None
    peer_der: bytes | None
    echo: bytes

    def ping(self) -> bytes:
        self.sock.sendall(_PING)
        return _recv_exact(self.sock, len(_PING))


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {data!r}")
        data += chunk
    return data


def _open(port: int, ctx: ssl.SSLContext) -> _Session:
    """Blocking: connect, handshake, echo one ping; the caller closes ``sock``."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
    try:
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise
    try:
        cipher = sock.cipher()
        assert cipher is not None
        session = _Session(
            sock=sock,
            version=sock.version(),
            cipher=cipher[0],
            alpn=sock.selected_alpn_protocol(),
            peer_der=sock.getpeercert(binary_form=True),
            echo=b"",
        )
        session.echo = session.ping()
        return session
    except BaseException:
        sock.close()
        raise


def _connect(port: int, ctx: ssl.SSLContext) -> _Session:
    """Blocking: like ``_open`` but the socket is closed before returning."""
    session = _open(port, ctx)
    session.sock.close()
    return session


def _in_thread(fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    return threads.deferToThread(fn, *args)


# --- raw TLS records: what no client library here can send -----------------------------------


def _client_hello(suites: Sequence[int], version: int = 0x0303) -> bytes:
    """A minimal ClientHello record offering exactly ``suites`` (no other extension)."""
    reneg_info = struct.pack("!HHB", 0xFF01, 1, 0)
    body = (
        struct.pack("!H", version)
        + os.urandom(32)
        + b"\x00"  # empty session id
        + struct.pack("!H", 2 * len(suites))
        + b"".join(struct.pack("!H", s) for s in suites)
        + b"\x01\x00"  # null compression only
        + struct.pack("!H", len(reneg_info))
        + reneg_info
    )
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return struct.pack("!BHH", 0x16, 0x0301, len(handshake)) + handshake


def _server_flight(port: int, hello: bytes) -> list[tuple[str, int, bytes]]:
    """Blocking: send ``hello``; return ("handshake", type, body) up to ServerHelloDone,
    or end with ("alert", description, b"")."""
    messages: list[tuple[str, int, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT) as sock:
        sock.sendall(hello)
        buffer = b""
        while True:
            record_type, _version, length = struct.unpack("!BHH", _recv_exact(sock, 5))
            payload = _recv_exact(sock, length)
            if record_type == 0x15:
                messages.append(("alert", payload[1], b""))
                return messages
            if record_type != 0x16:
                raise AssertionError(f"unexpected record type {record_type}")
            buffer += payload
            while len(buffer) >= 4:
                msg_len = int.from_bytes(buffer[1:4], "big")
                if len(buffer) < 4 + msg_len:
                    break
                messages.append(("handshake", buffer[0], buffer[4 : 4 + msg_len]))
                if buffer[0] == 14:  # ServerHelloDone
                    return messages
                buffer = buffer[4 + msg_len :]


# --- tests -----------------------------------------------------------------------------------


class _ListenerMixin:
    """Start a TLS echo listener and clean it (and its connections) up after the test."""

    def listen(self, creator: ReloadableContextFactory) -> tuple[int, _EchoFactory]:
        factory = _EchoFactory()
        port = reactor.listenSSL(0, factory, creator, interface="127.0.0.1")
        self.addCleanup(factory.close_all)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        return port.getHost().port, factory

    def web(self) -> tuple[int, _EchoFactory]:
        pki = _pki()
        return self.listen(web_context_factory(pki.leaf, pki.leaf_key, [pki.intermediate]))

    def mps(self) -> tuple[int, _EchoFactory]:
        pki = _pki()
        return self.listen(mps_context_factory(pki.other, pki.other_key))

    async def assert_refused(self, port: int, ctx: ssl.SSLContext) -> ssl.SSLError:
        try:
            session = await _in_thread(_connect, port, ctx)
        except ssl.SSLError as exc:
            return exc
        self.fail(  # type: ignore[attr-defined]
            f"handshake succeeded: {session.version} {session.cipher}"
        )
        raise AssertionError  # unreachable


class WebContextTests(_ListenerMixin, unittest.TestCase):
    """The HTTPS listener: TLS 1.2/1.3, six ECDHE-RSA suites, chain, ALPN http/1.1."""

    def test_factory_interfaces(self) -> None:
        """The factory provides IOpenSSLServerConnectionCreator and getContext()."""
        pki = _pki()
        creator = web_context_factory(pki.leaf, pki.leaf_key)
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, creator))
        self.assertIsInstance(creator.getContext(), SSL.Context)
        self.assertIsInstance(creator.serverConnectionForTLS(None), SSL.Connection)
        self.assertEqual(creator.certificate, pki.leaf)

    def test_cipher_constants(self) -> None:
        """The published suite lists are the six ECDHE-RSA and twelve MPS suites, in order."""
        self.assertEqual(len(WEB_TLS12_CIPHERS), 6)
        self.assertEqual(len(MPS_TLS_CIPHERS), 12)
        self.assertEqual(MPS_TLS_CIPHERS[:6], WEB_TLS12_CIPHERS)
        self.assertTrue(all(c.startswith("ECDHE-RSA-") for c in WEB_TLS12_CIPHERS))

    @defer.inlineCallbacks
    def test_old_versions_refused(self) -> Any:
        """TLS 1.0 and 1.1 clients are refused by the web listener."""
        port, _ = self.web()
        for version in ("1.0", "1.1"):
            yield defer.Deferred.fromCoroutine(
                self.assert_refused(port, _client_context(version))
            )

    @defer.inlineCallbacks
    def test_tls13_accepted(self) -> Any:
        """A TLS 1.3 client connects and can exchange data."""
        port, _ = self.web()
        session = yield _in_thread(_connect, port, _client_context("1.3"))
        self.assertEqual(session.version, "TLSv1.3")
        self.assertEqual(session.echo, _PING)

    @defer.inlineCallbacks
    def test_server_preference(self) -> Any:
        """Offered all six suites in reverse order, the server picks its first, 0xc030."""
        port, _ = self.web()
        ctx = _client_context("1.2", ciphers=":".join(reversed(WEB_TLS12_CIPHERS)))
        session = yield _in_thread(_connect, port, ctx)
        self.assertEqual(session.cipher, "ECDHE-RSA-AES256-GCM-SHA384")

    @defer.inlineCallbacks
    def test_non_pfs_suites_refused(self) -> Any:
        """RSA key-exchange suites (AES128-GCM-SHA256, AES256-SHA) are refused under TLS 1.2."""
        port, _ = self.web()
        for suite in ("AES128-GCM-SHA256", "AES256-SHA"):
            yield defer.Deferred.fromCoroutine(
                self.assert_refused(port, _client_context("1.2", ciphers=suite))
            )

    @defer.inlineCallbacks
    def test_chain_sent(self) -> Any:
        """The intermediate is sent: a client trusting only the root verifies the leaf."""
        pki = _pki()
        port, _ = self.web()
        ctx = _client_context("1.2", cafile_pem=_pem(pki.root))
        session = yield _in_thread(_connect, port, ctx)
        self.assertEqual(session.peer_der, _der(pki.leaf))

    @defer.inlineCallbacks
    def test_chain_missing_fails_verification(self) -> Any:
        """Control for test_chain_sent: without the intermediate, verification fails."""
        pki = _pki()
        port, _ = self.listen(web_context_factory(pki.leaf, pki.leaf_key))
        ctx = _client_context("1.2", cafile_pem=_pem(pki.root))
        error = yield defer.Deferred.fromCoroutine(self.assert_refused(port, ctx))
        self.assertIsInstance(error, ssl.SSLCertVerificationError)

    @defer.inlineCallbacks
    def test_alpn_http11(self) -> Any:
        """ALPN selects http/1.1 when a client offers h2 and http/1.1 (TLS 1.2 and 1.3)."""
        port, _ = self.web()
        for version in ("1.2", "1.3"):
            ctx = _client_context(version, alpn=["h2", "http/1.1"])
            session = yield _in_thread(_connect, port, ctx)
            self.assertEqual(session.alpn, "http/1.1", version)

    @defer.inlineCallbacks
    def test_alpn_h2_only(self) -> Any:
        """A client offering only h2 still connects, with no protocol selected."""
        port, _ = self.web()
        session = yield _in_thread(_connect, port, _client_context("1.3", alpn=["h2"]))
        self.assertIsNone(session.alpn)
        self.assertEqual(session.echo, _PING)


def _web_suite_test(suite: str) -> Callable[[WebContextTests], Any]:
    @defer.inlineCallbacks
    def test(self: WebContextTests) -> Any:
        port, _ = self.web()
        session = yield _in_thread(_connect, port, _client_context("1.2", ciphers=suite))
        self.assertEqual((session.version, session.cipher), ("TLSv1.2", suite))
        self.assertEqual(session.echo, _PING)

    test.__doc__ = f"TLS 1.2 with {suite} alone is accepted and negotiated."
    return test


for _suite in WEB_TLS12_CIPHERS:
    setattr(WebContextTests, "test_tls12_" + _suite.replace("-", "_"), _web_suite_test(_suite))


class MPSContextTests(_ListenerMixin, unittest.TestCase):
    """The MPS listener: TLS 1.0-1.2, twelve suites, client certificate requested."""

    @defer.inlineCallbacks
    def test_tls10_aes128_sha(self) -> Any:
        """A TLS 1.0 client offering only AES128-SHA connects (old Intel AMT)."""
        port, _ = self.mps()
        ctx = _client_context("1.0", ciphers="AES128-SHA:@SECLEVEL=0")
        session = yield _in_thread(_connect, port, ctx)
        self.assertEqual((session.version, session.cipher), ("TLSv1", "AES128-SHA"))
        self.assertEqual(session.echo, _PING)

    @defer.inlineCallbacks
    def test_tls11_accepted(self) -> Any:
        """A TLS 1.1 client connects."""
        port, _ = self.mps()
        session = yield _in_thread(_connect, port, _client_context("1.1"))
        self.assertEqual(session.version, "TLSv1.1")

    @defer.inlineCallbacks
    def test_tls13_refused(self) -> Any:
        """A TLS 1.3-only client is refused."""
        port, _ = self.mps()
        yield defer.Deferred.fromCoroutine(self.assert_refused(port, _client_context("1.3")))

    @defer.inlineCallbacks
    def test_server_preference(self) -> Any:
        """Offered RSA suites first, the server still picks ECDHE-RSA-AES256-GCM-SHA384."""
        port, _ = self.mps()
        ctx = _client_context("1.2", ciphers=":".join(reversed(MPS_TLS_CIPHERS)))
        session = yield _in_thread(_connect, port, ctx)
        self.assertEqual(session.cipher, "ECDHE-RSA-AES256-GCM-SHA384")

    @defer.inlineCallbacks
    def test_3des_refused(self) -> Any:
        """A ClientHello offering only DES-CBC3-SHA (0x000a) gets a handshake_failure alert."""
        port, _ = self.mps()
        flight = yield _in_thread(_server_flight, port, _client_hello([0x000A]))
        self.assertEqual(flight, [("alert", 40, b"")])

    @defer.inlineCallbacks
    def test_certificate_request_without_ca_names(self) -> Any:
        """A raw TLS 1.2 AES128-SHA hello gets a CertificateRequest listing no CA names."""
        port, _ = self.mps()
        flight = yield _in_thread(_server_flight, port, _client_hello([0x002F]))
        types = [t for kind, t, _ in flight if kind == "handshake"]
        self.assertEqual(types, [2, 11, 13, 14])  # ServerHello .. ServerHelloDone
        body = flight[2][2]
        offset = 1 + body[0]  # certificate_types
        offset += 2 + int.from_bytes(body[offset : offset + 2], "big")  # signature algorithms
        self.assertEqual(body[offset:], b"\x00\x00")  # certificate_authorities: empty

    @defer.inlineCallbacks
    def test_client_certificate_accepted_unverified(self) -> Any:
        """A client presenting a self-signed certificate connects; the server sees it."""
        pki = _pki()
        port, factory = self.mps()
        certfile = self.mktemp()
        write_pem(certfile, pki.client, pki.client_key)
        session = yield _in_thread(_connect, port, _client_context("1.2", certfile=certfile))
        self.assertEqual(session.echo, _PING)
        [seen] = factory.peer_certificates
        self.assertEqual(seen.to_cryptography(), pki.client)

    @defer.inlineCallbacks
    def test_no_client_certificate(self) -> Any:
        """A client without a certificate connects too (TLS 1.0 and 1.2)."""
        port, factory = self.mps()
        for version in ("1.0", "1.2"):
            session = yield _in_thread(_connect, port, _client_context(version))
            self.assertEqual(session.echo, _PING)
        self.assertEqual(factory.peer_certificates, [None, None])


def _mps_suite_test(suite: str) -> Callable[[MPSContextTests], Any]:
    @defer.inlineCallbacks
    def test(self: MPSContextTests) -> Any:
        port, _ = self.mps()
        ctx = _client_context("1.2", ciphers=suite + ":@SECLEVEL=0")
        session = yield _in_thread(_connect, port, ctx)
        self.assertEqual((session.version, session.cipher), ("TLSv1.2", suite))
        self.assertEqual(session.echo, _PING)

    test.__doc__ = f"TLS 1.2 with {suite} alone is accepted and negotiated."
    return test


for _suite in MPS_TLS_CIPHERS:
    setattr(MPSContextTests, "test_tls12_" + _suite.replace("-", "_"), _mps_suite_test(_suite))


class ReplaceTests(_ListenerMixin, unittest.TestCase):
    """Hot certificate replacement and key checks."""

    @defer.inlineCallbacks
    def test_replace(self) -> Any:
        """After replace(), new connections get the new cert; an open one keeps the old."""
        pki = _pki()
        creator = web_context_factory(pki.leaf, pki.leaf_key, [pki.intermediate])
        port, _ = self.listen(creator)
        first: _Session = yield _in_thread(_open, port, _client_context("1.3"))
        self.addCleanup(first.sock.close)
        self.assertEqual(first.peer_der, _der(pki.leaf))

        creator.replace(pki.other, pki.other_key)
        self.assertEqual(creator.certificate, pki.other)

        second = yield _in_thread(_connect, port, _client_context("1.2"))
        self.assertEqual(second.peer_der, _der(pki.other))
        echo = yield _in_thread(first.ping)
        self.assertEqual(echo, _PING)
        self.assertEqual(first.sock.getpeercert(binary_form=True), _der(pki.leaf))

    @defer.inlineCallbacks
    def test_replace_mps(self) -> Any:
        """replace() on the MPS factory keeps its settings (TLS 1.0 still works)."""
        pki = _pki()
        creator = mps_context_factory(pki.other, pki.other_key)
        port, _ = self.listen(creator)
        creator.replace(pki.leaf, pki.leaf_key)
        session = yield _in_thread(_connect, port, _client_context("1.0"))
        self.assertEqual((session.version, session.peer_der), ("TLSv1", _der(pki.leaf)))

    @defer.inlineCallbacks
    def test_replace_mismatch_keeps_old(self) -> Any:
        """A replace() with a mismatched key raises ValueError and the old cert stays."""
        pki = _pki()
        creator = web_context_factory(pki.leaf, pki.leaf_key)
        port, _ = self.listen(creator)
        self.assertRaises(ValueError, creator.replace, pki.other, pki.leaf_key)
        session = yield _in_thread(_connect, port, _client_context("1.2"))
        self.assertEqual(session.peer_der, _der(pki.leaf))

    def test_mismatched_key(self) -> None:
        """Both factories raise ValueError when the key does not match the certificate."""
        pki = _pki()
        for make in (web_context_factory, mps_context_factory):
            error = self.assertRaises(ValueError, make, pki.leaf, pki.other_key)
            self.assertIn("does not match", str(error))
