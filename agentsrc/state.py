"""The agent's state folder: its identity, the pinned server TLS hash, the stored core.

Files (folder mode 0700, every file written to a temporary file, fsynced, renamed, mode 0600):

``node-key.pem``   the node's RSA private key (PKCS#8 PEM). Its public-key hash is the node id.
``node-cert.pem``  the node's self-signed certificate, ``CN=MeshNodeCertificate`` like the real
                   agent; sent in command 2. Deleting both gives a new node id.
``server.json``    ``{"server_id": hex, "tls_hash": hex}``: the TLS certificate hash of a server
                   that was fully verified (ServerID pinning + signature). On the next connection
                   with the same ServerID and the same TLS certificate the agent takes the "skip"
                   path (command 4). Bound to the ServerID: a new ``.msh`` ServerID ignores it.
``core.bin``       the last core blob the server pushed (see :mod:`agentsrc.coreblob`), verified
                   against its SHA-384 before it was stored and again when it is loaded.

Nothing here talks to the network; time comes in as ``now``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from meshd import files
from meshd.agent.identity import HASH_LEN, node_id_from_cert

__all__ = [
    "StateError",
    "NodeIdentity",
    "StateDir",
    "atomic_write",
    "make_node_identity",
    "DEFAULT_KEY_BITS",
    "FAST_KEY_BITS",
]

DEFAULT_KEY_BITS = 3072
"""Like the real agent (observed RSA-3072 node certificates)."""
FAST_KEY_BITS = 2048
"""``--fastkey``: quicker to generate, for tests (the smallest key meshd accepts)."""
NODE_CN = "MeshNodeCertificate"
MAX_CORE_FILE = 64 * 1024 * 1024

KEY_FILE = "node-key.pem"
CERT_FILE = "node-cert.pem"
SERVER_FILE = "server.json"
CORE_FILE = "core.bin"


class StateError(Exception):
    """The state folder is unusable (unreadable, or key and certificate do not match)."""


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 (temp file, fsync, rename)."""
    files.atomic_write(path, data, files.PRIVATE)


@dataclass(frozen=True)
class NodeIdentity:
    """The node's key and certificate (the certificate DER is what command 2 carries)."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def node_id(self) -> str:
        """MeshCentral's node id (base64 with ``@``/``$``) of this certificate."""
        return node_id_from_cert(self.certificate_der)


def make_node_identity(bits: int, now: datetime.datetime) -> NodeIdentity:
    """A new RSA key and self-signed ``CN=MeshNodeCertificate`` certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NODE_CN)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * 30))
        .sign(key, hashes.SHA384())
    )
    return NodeIdentity(key, certificate)


class StateDir:
    """One agent's state folder."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def ensure(self) -> None:
        """Create the folder (0700) if needed."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    # -- identity -------------------------------------------------------------------------------

    def load_or_create_identity(
        self, *, bits: int = DEFAULT_KEY_BITS, now: datetime.datetime
    ) -> tuple[NodeIdentity, bool]:
        """The node identity, created on first use. Returns ``(identity, created)``.

        A key without its certificate (or the reverse), or a pair that does not match, is an
        error rather than silently replaced: replacing it would change the node id.
        """
        self.ensure()
        key_path, cert_path = self._file(KEY_FILE), self._file(CERT_FILE)
        have_key, have_cert = os.path.exists(key_path), os.path.exists(cert_path)
        if not have_key and not have_cert:
            identity = make_node_identity(bits, now)
            atomic_write(
                key_path,
                identity.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            atomic_write(cert_path, identity.certificate.public_bytes(serialization.Encoding.PEM))
            return identity, True
        if have_key != have_cert:
            missing = CERT_FILE if have_key else KEY_FILE
            raise StateError(f"{self.path}: {missing} is missing; remove both files for a new id")
        try:
            with open(key_path, "rb") as handle:
                key = serialization.load_pem_private_key(handle.read(), password=None)
            with open(cert_path, "rb") as handle:
                certificate = x509.load_pem_x509_certificate(handle.read())
        except (OSError, ValueError, TypeError) as error:
            raise StateError(
                f"{self.path}: cannot read the node key/certificate: {error}"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise StateError(f"{self.path}: the node key is not RSA")
        public = certificate.public_key()
        if not isinstance(public, rsa.RSAPublicKey) or (
            public.public_numbers() != key.public_key().public_numbers()
        ):
            raise StateError(f"{self.path}: {KEY_FILE} does not match {CERT_FILE}")
        return NodeIdentity(key, certificate), False

    # -- pinned server TLS hash -----------------------------------------------------------------

    def trusted_tls_hash(self, server_id: bytes) -> Optional[bytes]:
        """The TLS hash stored after a full verification of the server with this ServerID."""
        try:
            with open(self._file(SERVER_FILE), "rb") as handle:
                record = json.loads(handle.read(4096).decode("utf-8"))
            if record.get("server_id") != server_id.hex():
                return None
            value = bytes.fromhex(record["tls_hash"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return value if len(value) == HASH_LEN else None

    def store_tls_hash(self, server_id: bytes, tls_hash: bytes) -> None:
        """Remember a fully verified server's TLS hash (enables the skip path next time)."""
        if len(tls_hash) != HASH_LEN:
            raise ValueError("a TLS hash is 48 bytes")
        self.ensure()
        record = {"server_id": server_id.hex(), "tls_hash": tls_hash.hex()}
        atomic_write(self._file(SERVER_FILE), json.dumps(record).encode("ascii"))

    def forget_tls_hash(self) -> None:
        """Drop the pinned TLS hash (next connection does the full handshake)."""
        try:
            os.unlink(self._file(SERVER_FILE))
        except FileNotFoundError:
            pass

    # -- stored core ----------------------------------------------------------------------------

    def load_core(self) -> Optional[tuple[bytes, bytes]]:
        """The stored core blob and its SHA-384, or ``None`` if there is none."""
        try:
            with open(self._file(CORE_FILE), "rb") as handle:
                blob = handle.read(MAX_CORE_FILE + 1)
        except OSError:
            return None
        if not blob or len(blob) > MAX_CORE_FILE:
            return None
        return blob, hashlib.sha384(blob).digest()

    def store_core(self, blob: bytes) -> None:
        """Keep a verified core blob for the next start."""
        self.ensure()
        atomic_write(self._file(CORE_FILE), blob)

    def delete_core(self) -> None:
        """Forget the stored core (the server asked, or it failed to load)."""
        try:
            os.unlink(self._file(CORE_FILE))
        except FileNotFoundError:
            pass
