"""TLS server contexts for the HTTPS (web) and MPS (Intel AMT CIRA) listeners.

Who connects, and what they get:

* **HTTPS** -- browsers, ``meshctrl``, MeshAgents (control WebSocket and relay) and other
  servers. Everything here is modern, so the listener speaks TLS 1.2 and 1.3 only. Under
  TLS 1.2 it offers exactly six ECDHE-RSA suites (forward secrecy only, RSA certificates
  only), in server preference order; TLS 1.3 uses OpenSSL's default suites. ALPN offers
  ``http/1.1`` alone: the agent and browser WebSockets are HTTP/1.1 upgrades and meshd does not
  serve HTTP/2. Intermediate certificates (e.g. from an ACME CA) are sent with the leaf.

* **MPS** -- Intel AMT firmware opening a CIRA tunnel (APF over TLS, port 4433). Old AMT
  generations only speak TLS 1.0/1.1, may not do ECDHE, and sign with SHA-1, so this listener
  speaks TLS 1.0 to 1.2 (never 1.3, which no AMT needs) with the same six ECDHE-RSA suites
  followed by six RSA key-exchange AES suites. OpenSSL 3 refuses TLS 1.0/1.1 and SHA-1
  signatures at its default security level, hence ``@SECLEVEL=0``; 3DES, RC4, CBC-MD5 etc. stay
  out because they are not in the list. The server asks for a client certificate but neither
  requires nor verifies it and names no acceptable CAs: AMT may present one, and CIRA
  authentication is done by APF user/password (see specs/mps-apf.md section 8). The server's
  preference order is used, so a client that offers ECDHE gets it.

Both listeners: no TLS compression (CRIME), no renegotiation (client-initiated renegotiation
is a DoS lever and nothing legitimate needs it), session tickets and the in-memory session
cache left on (OpenSSL defaults).

Certificates are ``cryptography`` objects. :class:`ReloadableContextFactory` builds one
``OpenSSL.SSL.Context`` per certificate and hands it to each new connection;
:meth:`ReloadableContextFactory.replace` builds a fresh context (ACME renewal, MPS name change)
so connections accepted afterwards present the new certificate, while open connections keep the
context, and therefore the certificate, they were created with. Sessions and tickets issued
under the old context cannot be resumed under the new one; those clients do a full handshake.

The factory provides ``IOpenSSLServerConnectionCreator`` (used by
``TLSMemoryBIOFactory``, hence ``reactor.listenSSL`` and ``SSL4ServerEndpoint``) and the
legacy ``IOpenSSLContextFactory`` (``getContext()``).
"""

from __future__ import annotations

from typing import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

__all__ = [
    "MPS_TLS_CIPHERS",
    "WEB_TLS12_CIPHERS",
    "ReloadableContextFactory",
    "mps_context_factory",
    "web_context_factory",
]

# TLS 1.2 (and below) suites, OpenSSL names, in server preference order. Both lists are
# exact: the constructed context is checked to enable these suites and no others.
WEB_TLS12_CIPHERS: tuple[str, ...] = (
    "ECDHE-RSA-AES256-GCM-SHA384",  # 0xc030
    "ECDHE-RSA-AES256-SHA384",  # 0xc028
    "ECDHE-RSA-AES256-SHA",  # 0xc014
    "ECDHE-RSA-AES128-GCM-SHA256",  # 0xc02f
    "ECDHE-RSA-AES128-SHA256",  # 0xc027
    "ECDHE-RSA-AES128-SHA",  # 0xc013
)

MPS_TLS_CIPHERS: tuple[str, ...] = WEB_TLS12_CIPHERS + (
    # RSA key exchange: the oldest AMT firmware offers nothing else.
    "AES256-GCM-SHA384",  # 0x9d
    "AES256-SHA256",  # 0x3d
    "AES256-SHA",  # 0x35
    "AES128-GCM-SHA256",  # 0x9c
    "AES128-SHA256",  # 0x3c
    "AES128-SHA",  # 0x2f
)

# OpenSSL names the TLS 1.3 suites "TLS_..."; they are configured separately and left at the
# library defaults for the web listener (the MPS listener caps the version at 1.2).
_TLS13_PREFIX = "TLS_"

_COMMON_OPTIONS = (
    SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
)

_ALPN_HTTP11 = b"http/1.1"

_log = Logger()

ContextBuilder = Callable[
    [x509.Certificate, rsa.RSAPrivateKey, Sequence[x509.Certificate]], SSL.Context
]


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ReloadableContextFactory:
    """Server TLS settings whose certificate can be swapped without restarting the listener."""

    def __init__(
        self,
        name: str,
        build: ContextBuilder,
        cert: x509.Certificate,
        key: rsa.RSAPrivateKey,
        chain: Sequence[x509.Certificate] = (),
    ) -> None:
        self._name = name
        self._build = build
        self._context = build(cert, key, tuple(chain))
        self._certificate = cert

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate presented to connections accepted from now on."""
        return self._certificate

    def getContext(self) -> SSL.Context:
        """Return the current context (``IOpenSSLContextFactory``)."""
        return self._context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """Create the server-side connection object for one accepted TCP connection."""
        return SSL.Connection(self._context, None)

    def replace(
        self,
        cert: x509.Certificate,
        key: rsa.RSAPrivateKey,
        chain: Sequence[x509.Certificate] = (),
    ) -> None:
        """Use ``cert``/``key``/``chain`` for new connections; open ones are unaffected.

        Raises ``ValueError`` (and keeps the old certificate) if the key does not match.
        """
        context = self._build(cert, key, tuple(chain))
        self._context = context
        self._certificate = cert
        _log.info(
            "{listener} TLS certificate replaced: subject {subject}, serial {serial:x}, "
            "valid until {not_after}",
            listener=self._name,
            subject=cert.subject.rfc4514_string(),
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc.isoformat(),
        )


def web_context_factory(
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
    chain: Sequence[x509.Certificate] = (),
) -> ReloadableContextFactory:
    """TLS settings for the HTTPS listener: TLS 1.2/1.3, six ECDHE-RSA suites, ALPN http/1.1."""
    return ReloadableContextFactory("web", _build_web_context, cert, key, chain)


def mps_context_factory(
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
) -> ReloadableContextFactory:
    """TLS settings for the Intel AMT MPS listener: TLS 1.0-1.2, twelve suites, cert requested."""
    return ReloadableContextFactory("mps", _build_mps_context, cert, key)


def _build_web_context(
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
    chain: Sequence[x509.Certificate],
) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    # Free the 16 KiB read/write buffers of idle connections: thousands of quiet agents.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(_COMMON_OPTIONS)
    ctx.set_cipher_list(":".join(WEB_TLS12_CIPHERS).encode("ascii"))
    ctx.set_alpn_select_callback(_select_http11)
    # A session id context is required for session resumption to be accepted at all once
    # any verify mode is set; harmless otherwise. It also keeps the two listeners' sessions
    # apart should a client try one's session on the other.
    ctx.set_session_id(b"meshd-web")
    _load_identity(ctx, cert, key, chain)
    _check_ciphers(ctx, WEB_TLS12_CIPHERS, "web")
    return ctx


def _build_mps_context(
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
    chain: Sequence[x509.Certificate],
) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    # Free the 16 KiB read/write buffers of idle connections: thousands of quiet agents.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_min_proto_version(SSL.TLS1_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(_COMMON_OPTIONS)
    # SECLEVEL=0: OpenSSL 3 otherwise disables TLS 1.0/1.1 and SHA-1 handshake signatures.
    ctx.set_cipher_list((":".join(MPS_TLS_CIPHERS) + ":@SECLEVEL=0").encode("ascii"))
    # Send a CertificateRequest (no CA names: none are added to the client CA list), accept
    # whatever comes back, or nothing. AMT client certificates are not an authentication
    # factor here, so nothing is verified.
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any_certificate)
    ctx.set_session_id(b"meshd-mps")
    _load_identity(ctx, cert, key, chain)
    _check_ciphers(ctx, MPS_TLS_CIPHERS, "mps")
    return ctx


def _load_identity(
    ctx: SSL.Context,
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
    chain: Sequence[x509.Certificate],
) -> None:
    """Install the certificate, its key and the intermediates; reject a mismatched key."""
    if not isinstance(key, rsa.RSAPrivateKey):
        # Every TLS 1.2 suite offered is *-RSA-*: any other key type would leave TLS 1.2
        # clients (and all of AMT) with nothing to negotiate.
        raise TypeError(f"TLS private key must be RSA, not {type(key).__name__}")
    subject = cert.subject.rfc4514_string()
    try:
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise ValueError(
            f"TLS private key does not match the certificate for {subject!r}"
        ) from exc
    for extra in chain:
        ctx.add_extra_chain_cert(extra)


def _check_ciphers(ctx: SSL.Context, wanted: tuple[str, ...], listener: str) -> None:
    """Fail loudly if this OpenSSL build silently dropped (or added) a TLS 1.2 suite."""
    enabled = tuple(
        name
        for name in SSL.Connection(ctx, None).get_cipher_list()
        if not name.startswith(_TLS13_PREFIX)
    )
    if enabled != wanted:
        raise RuntimeError(
            f"{listener} TLS: OpenSSL enabled suites {enabled}, expected {wanted}"
        )


def _select_http11(connection: SSL.Connection, offered: list[bytes]) -> bytes:
    """ALPN: pick http/1.1 if offered; otherwise continue without ALPN."""
    if _ALPN_HTTP11 in offered:
        return _ALPN_HTTP11
    return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]


def _accept_any_certificate(
    connection: SSL.Connection,
    certificate: object,
    error_number: int,
    error_depth: int,
    ok: int,
) -> bool:
    """Verify callback that accepts any client certificate chain (it is not used for auth)."""
    return True
