"""Identities and hashes used on ``/agent.ashx`` (spec: agent-protocol.md §2).

All hashes are SHA-384 (48 bytes) unless stated otherwise.

* **TLS cert hash** ``Hweb`` = H(DER of the server's TLS leaf certificate). The agent sends it in
  command 1 and signs over it. :func:`tls_cert_hash`.
* **TLS key hash** (legacy) = H(contents of the subjectPublicKey BIT STRING of the TLS cert);
  accepted as an alternative ``Hweb``. :func:`public_key_hash`, :func:`accepted_tls_hashes`.
* **ServerID** = H(subjectPublicKey BIT STRING of the server's *agent* certificate) — for RSA the
  DER of the PKCS#1 ``RSAPublicKey`` — as 96 upper-case hex digits (the ``.msh`` form).
  :func:`server_id`. Old ``.mshx`` files carry a 32-byte SHA-256 form: :func:`server_id_sha256`.
* **Node id** = H(subjectPublicKey BIT STRING of the agent's certificate from command 2), in
  MeshCentral's base64 (standard alphabet with ``+``→``@``, ``/``→``$``, no padding: 64 chars);
  database key ``node/<domain>/<id>``. :func:`node_id_from_cert`.
* **MeshID** (device group) = 48 random bytes. ``.msh`` form ``0x`` + 96 upper hex
  (:func:`mesh_id_to_msh`); MeshCentral string form = same base64 as node ids (``mesh//<id>``).
  Legacy 32-byte ids travel in command 3 padded with 16 zero bytes; MeshCentral then names the
  group by the lower-case hex of the 32 bytes (:func:`mesh_id_from_agent_info`).

The BIT STRING is read from the certificate's own DER (like OpenSSL's ``X509_pubkey_digest``),
so the hashes are exact for any key type; for RSA they equal the hash of
``public_bytes(DER, PKCS1)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import string
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meshd.agent._der import BIT_STRING, CONTEXT_0, SEQUENCE, DerError, children, expect, read_tlv

__all__ = [
    "HASH_LEN",
    "CertLike",
    "tls_cert_hash",
    "public_key_bits",
    "public_key_hash",
    "accepted_tls_hashes",
    "server_id",
    "server_id_bytes",
    "server_id_sha256",
    "parse_server_id",
    "encode_id",
    "decode_id",
    "node_id_from_cert",
    "node_key",
    "mesh_key",
    "mesh_id_to_msh",
    "mesh_id_from_msh",
    "mesh_id_to_str",
    "mesh_id_from_str",
    "mesh_id_from_agent_info",
    "pad_mesh_id",
]

HASH_LEN = 48
"""Length of every SHA-384 value on the wire."""

LEGACY_MESH_ID_LEN = 32
"""Length of a pre-SHA-384 mesh id (``.msh`` ``MeshID=0x`` + 64 hex)."""

CertLike = Union[x509.Certificate, bytes]
"""A certificate, either parsed or as DER bytes."""

_ID_ENCODE = bytes.maketrans(b"+/", b"@$")
_ID_DECODE = bytes.maketrans(b"@$", b"+/")
_ID_ALPHABET = frozenset(string.ascii_letters + string.digits + "@$")
_HEX = frozenset(string.hexdigits)
_LOWER_HEX = frozenset("0123456789abcdef")


def _der(cert: CertLike) -> bytes:
    if isinstance(cert, x509.Certificate):
        return cert.public_bytes(Encoding.DER)
    return bytes(cert)


def tls_cert_hash(cert: CertLike) -> bytes:
    """``Hweb``: SHA-384 of the certificate's DER (48 bytes)."""
    return hashlib.sha384(_der(cert)).digest()


def public_key_bits(cert: CertLike) -> bytes:
    """The contents of the certificate's subjectPublicKey BIT STRING (PKCS#1 DER for RSA).

    Raises ``ValueError`` if the DER is not a certificate.
    """
    der = _der(cert)
    try:
        outer = expect(read_tlv(der, 0, len(der)), SEQUENCE, "Certificate")
        tbs = expect(read_tlv(der, outer.body, outer.end), SEQUENCE, "TBSCertificate")
        fields = children(der, tbs)
        # TBSCertificate: [0] version?, serial, signature, issuer, validity, subject, spki, ...
        index = 6 if fields and fields[0].tag == CONTEXT_0 else 5
        if len(fields) <= index:
            raise DerError("TBSCertificate too short")
        spki = expect(fields[index], SEQUENCE, "SubjectPublicKeyInfo")
        parts = children(der, spki)
        if len(parts) != 2:
            raise DerError("SubjectPublicKeyInfo must have two parts")
        bits = expect(parts[1], BIT_STRING, "subjectPublicKey")
    except DerError as error:
        raise ValueError(f"not a DER certificate: {error}") from None
    if bits.end - bits.body < 1 or der[bits.body] != 0:
        raise ValueError("subjectPublicKey has unused bits")
    return der[bits.body + 1 : bits.end]


def public_key_hash(cert: CertLike) -> bytes:
    """SHA-384 of :func:`public_key_bits` — the TLS key hash, and the raw ServerID / node id."""
    return hashlib.sha384(public_key_bits(cert)).digest()


def accepted_tls_hashes(cert: CertLike) -> frozenset[bytes]:
    """The ``Hweb`` values an agent may present for this TLS certificate: full and key hash."""
    return frozenset({tls_cert_hash(cert), public_key_hash(cert)})


def server_id_bytes(cert: CertLike) -> bytes:
    """The raw 48-byte ServerID of the server's agent certificate (what command 5 carries)."""
    return public_key_hash(cert)


def server_id(cert: CertLike) -> str:
    """The ``.msh`` ``ServerID=`` value: 96 upper-case hex digits, no ``0x``."""
    return server_id_bytes(cert).hex().upper()


def server_id_sha256(cert: CertLike) -> bytes:
    """The legacy 32-byte ServerID (SHA-256 of the same key bits) of old ``.mshx`` files."""
    return hashlib.sha256(public_key_bits(cert)).digest()


def parse_server_id(text: str) -> bytes:
    """Parse a ServerID from hex (96 digits, or 64 legacy); ``0x`` and case are tolerated."""
    value = text.strip()
    if value[:2].lower() == "0x":
        value = value[2:]
    if len(value) not in (2 * HASH_LEN, 64) or not set(value) <= _HEX:
        raise ValueError("a ServerID is 96 (or legacy 64) hex digits")
    return bytes.fromhex(value)


def encode_id(raw: bytes) -> str:
    """MeshCentral's id form: base64 with ``@``/``$`` for ``+``/``/`` and no ``=`` padding."""
    return base64.b64encode(raw).translate(_ID_ENCODE).rstrip(b"=").decode("ascii")


def decode_id(text: str) -> bytes:
    """Inverse of :func:`encode_id`; raises ``ValueError`` on anything else."""
    if not text or not set(text) <= _ID_ALPHABET or len(text) % 4 == 1:
        raise ValueError("not a MeshCentral id")
    data = text.encode("ascii").translate(_ID_DECODE)
    try:
        raw = base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not a MeshCentral id") from None
    if encode_id(raw) != text:  # non-canonical trailing bits
        raise ValueError("not a canonical MeshCentral id")
    return raw


def node_id_from_cert(cert: CertLike) -> str:
    """The node id string (64 chars) of an agent certificate."""
    return encode_id(public_key_hash(cert))


def node_key(node_id: str, domain: str = "") -> str:
    """Database key of a node: ``node/<domain>/<id>`` (``node//<id>`` for the default domain)."""
    return f"node/{domain}/{node_id}"


def mesh_key(mesh_id: str, domain: str = "") -> str:
    """Database key of a device group: ``mesh/<domain>/<id>``."""
    return f"mesh/{domain}/{mesh_id}"


def _check_mesh_raw(raw: bytes) -> None:
    if len(raw) not in (HASH_LEN, LEGACY_MESH_ID_LEN):
        raise ValueError("a mesh id is 48 (or legacy 32) bytes")


def mesh_id_to_msh(raw: bytes) -> str:
    """``.msh`` form of a mesh id: ``0x`` + upper-case hex (as MeshCentral writes it)."""
    _check_mesh_raw(raw)
    return "0x" + raw.hex().upper()


def mesh_id_from_msh(value: str) -> bytes:
    """Parse ``.msh`` ``MeshID=``: ``0x`` + 96 hex (48 bytes) or 64 hex (legacy 32 bytes)."""
    text = value.strip()
    if text[:2].lower() != "0x":
        raise ValueError("MeshID must start with 0x")
    digits = text[2:]
    if len(digits) not in (2 * HASH_LEN, 2 * LEGACY_MESH_ID_LEN) or not set(digits) <= _HEX:
        raise ValueError("MeshID must be 0x + 96 (or legacy 64) hex digits")
    return bytes.fromhex(digits)


def mesh_id_to_str(raw: bytes) -> str:
    """MeshCentral string form: base64 id for 48 bytes, lower-case hex for legacy 32 bytes."""
    _check_mesh_raw(raw)
    if len(raw) == LEGACY_MESH_ID_LEN:
        return raw.hex()
    return encode_id(raw)


def mesh_id_from_str(text: str) -> bytes:
    """Inverse of :func:`mesh_id_to_str`; accepts a ``mesh/<domain>/`` prefix.

    64 lower-case hex digits are read as a legacy 32-byte id. (A base64 id of 48 random bytes
    consisting only of lower-case hex characters has probability 4**-64: not a practical clash.)
    """
    if text.startswith("mesh/"):
        parts = text.split("/", 2)
        if len(parts) != 3:
            raise ValueError("bad mesh key")
        text = parts[2]
    if len(text) == 2 * LEGACY_MESH_ID_LEN and set(text) <= _LOWER_HEX:
        return bytes.fromhex(text)
    raw = decode_id(text)
    if len(raw) != HASH_LEN:
        raise ValueError("a mesh id is 48 bytes")
    return raw


def mesh_id_from_agent_info(field: bytes) -> str:
    """The group id string for the 48-byte MeshID field of command 3.

    If the last 16 bytes are zero the agent holds a legacy 32-byte id, which MeshCentral names
    by its hex form; otherwise the base64 form of all 48 bytes.
    """
    if len(field) != HASH_LEN:
        raise ValueError("the command 3 MeshID field is 48 bytes")
    if field[LEGACY_MESH_ID_LEN:] == bytes(HASH_LEN - LEGACY_MESH_ID_LEN):
        return field[:LEGACY_MESH_ID_LEN].hex()
    return encode_id(field)


def pad_mesh_id(raw: bytes) -> bytes:
    """The 48-byte command 3 field for a mesh id (a legacy 32-byte id padded with zeros)."""
    _check_mesh_raw(raw)
    return raw.ljust(HASH_LEN, b"\0")
