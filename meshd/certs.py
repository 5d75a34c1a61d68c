"""The server's certificates, kept in the data folder with MeshCentral's file names.

Four certificate/key pairs live in the data folder (``meshcentral-data`` for MeshCentral):

``root-cert-public.crt`` / ``root-cert-private.key``
    A self-signed root CA, ``CN=MeshCentralRoot-xxxxxx``. It issues the three others. Intel AMT
    trusts it for CIRA (the AMT manager installs it when it provisions a device), so losing it
    means re-provisioning AMT devices. Its key may be absent as long as no certificate has to
    be issued.
``webserver-cert-public.crt`` / ``webserver-cert-private.key``
    The HTTPS certificate. An administrator may replace it (e.g. with a commercial certificate);
    intermediate certificates are taken from the same file, after the leaf, and from
    ``webserver-cert-chain1.crt``, ``webserver-cert-chain2.crt``, ... as MeshCentral does.
    Agents remember its SHA-384 hash, so changing it only costs them one full re-verification.
``mpsserver-cert-public.crt`` / ``mpsserver-cert-private.key``
    The Intel AMT CIRA (MPS) TLS certificate. Always RSA-2048: older AMT firmware cannot use
    larger keys.
``agentserver-cert-public.crt`` / ``agentserver-cert-private.key``
    The agent-authentication certificate, ``CN=MeshCentralAgentServer-xxxxxx``. The SHA-384 of
    its public key is the ``ServerID`` written into every agent's ``.msh`` file: **if it is lost,
    every installed agent refuses the server** and must be reinstalled.

What to back up: the whole data folder, and above all ``agentserver-cert-*`` and
``root-cert-*``. The web and MPS certificates can be reissued from the root at any time.

On first start the missing pairs are created (RSA-3072, RSA-2048 with ``fast``; MPS always
RSA-2048), signed with SHA-384 and valid 2018-01-01 to 2049-12-31 like MeshCentral's. Existing
files are never rewritten, so pointing meshd at a MeshCentral data folder uses its certificates
as they are (same agent certificate, same ServerID). Private keys are written as unencrypted
PEM ``RSA PRIVATE KEY`` (PKCS#1, what MeshCentral's node-forge writes and reads), mode 0600,
through a temporary file in the same folder that is fsynced then renamed over the target.

Anything inconsistent (half a pair, an unparseable PEM, a key that does not match its
certificate, a non-RSA key) raises :class:`CertificateError` naming the file: a certificate is
never silently regenerated, because regenerating the agent certificate would cut off every agent.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import Logger

from meshd.files import atomic_write

__all__ = [
    "CertKey",
    "CertificateError",
    "ServerCertificates",
    "load_certificate_file",
    "load_or_create",
]

_log = Logger()

ROOT = "root"
WEB = "web"
MPS = "mps"
AGENT = "agent"
KINDS: tuple[str, ...] = (ROOT, WEB, MPS, AGENT)

# (certificate file, private key file) for each kind, MeshCentral's names.
FILE_NAMES: dict[str, tuple[str, str]] = {
    ROOT: ("root-cert-public.crt", "root-cert-private.key"),
    WEB: ("webserver-cert-public.crt", "webserver-cert-private.key"),
    MPS: ("mpsserver-cert-public.crt", "mpsserver-cert-private.key"),
    AGENT: ("agentserver-cert-public.crt", "agentserver-cert-private.key"),
}
# MeshCentral loads webserver-cert-chain1.crt, webserver-cert-chain2.crt, ... until one is missing.
WEB_CHAIN_FILE = "webserver-cert-chain{index}.crt"

STRONG_KEY_BITS = 3072
FAST_KEY_BITS = 2048
MPS_KEY_BITS = 2048  # Intel AMT cannot use larger keys for CIRA.

# MeshCentral's validity window (new Date(2018, 0, 1) .. new Date(2049, 11, 31)).
NOT_BEFORE = datetime(2018, 1, 1, tzinfo=timezone.utc)
NOT_AFTER = datetime(2049, 12, 31, tzinfo=timezone.utc)

ROOT_NAME_PREFIX = "MeshCentralRoot"
AGENT_NAME_PREFIX = "MeshCentralAgentServer"

_KEY_FILE_MODE = 0o600
_CERT_FILE_MODE = 0o644
_DATA_FOLDER_MODE = 0o700


class CertificateError(Exception):
    """A certificate or key file is missing, unreadable or inconsistent; the message names it."""


@dataclass(frozen=True)
class CertKey:
    """A certificate, its private key and the extra certificates sent after it in TLS."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey | None  # None only for root (absent key) or load_certificate_file
    chain: tuple[x509.Certificate, ...] = ()  # extra certs sent after the leaf (web only)

    def cert_pem(self) -> bytes:
        """The leaf certificate alone, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        """The leaf certificate followed by the chain, PEM (what a TLS server sends)."""
        return self.cert_pem() + b"".join(
            extra.public_bytes(serialization.Encoding.PEM) for extra in self.chain
        )

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#1 PEM ("RSA PRIVATE KEY"), as MeshCentral writes."""
        if self.key is None:
            raise CertificateError(f"no private key for certificate {_common_name(self.cert)!r}")
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    def sha384(self) -> str:
        """Lower-case hex SHA-384 of the certificate DER (MeshCentral's "TLS cert hash")."""
        return hashlib.sha384(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def public_key_sha384(self) -> str:
        """Upper-case hex SHA-384 of the subjectPublicKey bits (RSA: PKCS#1 DER): the ServerID."""
        return hashlib.sha384(_subject_public_key_bits(self.cert)).hexdigest().upper()


@dataclass(frozen=True)
class ServerCertificates:
    """The four server certificates and which of them this start created."""

    root: CertKey
    web: CertKey
    mps: CertKey
    agent: CertKey
    created: tuple[str, ...]  # e.g. ("root", "web", "mps", "agent") on first run, () on reuse


@dataclass(frozen=True)
class _Loaded:
    """One pair read from the data folder."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey | None
    chain: tuple[x509.Certificate, ...]


def load_or_create(
    datapath: str,
    cert_name: str,
    *,
    mps_name: str | None = None,
    fast: bool = False,
    allow_new_agent_cert: bool = True,
    now: datetime | None = None,
) -> ServerCertificates:
    """Load the server certificates from ``datapath``, creating only the missing ones.

    ``cert_name`` is the server's DNS name or IP (MeshCentral's ``cert`` setting), used for a new
    web certificate; ``mps_name`` (default ``cert_name``) for a new MPS certificate. ``fast``
    makes new keys RSA-2048 (``--fastcert``). ``allow_new_agent_cert=False`` (the database
    already knows agents) turns a missing agent certificate into an error instead of a new
    ServerID. ``now`` (default: the current time) is used to warn about expired certificates
    and, only after 2048, to push the end date of new certificates past 2049.
    """
    if not cert_name:
        raise CertificateError("the server certificate name (cert) must not be empty")
    if mps_name is None:
        mps_name = cert_name
    if now is None:
        now = datetime.now(timezone.utc)
    _ensure_folder(datapath)

    loaded: dict[str, _Loaded | None] = {kind: _load_pair(datapath, kind) for kind in KINDS}
    missing = [kind for kind in KINDS if loaded[kind] is None]

    # Decide everything before writing anything, so an error leaves the folder as it was.
    if AGENT in missing and not allow_new_agent_cert:
        raise CertificateError(
            f"{_path(datapath, AGENT, 0)} and {_path(datapath, AGENT, 1)} are missing but the "
            "database already knows agents: a new agent certificate would change the ServerID "
            "and every agent would refuse this server; restore both files from a backup"
        )
    if ROOT in missing:
        orphans = [kind for kind in (MPS, AGENT) if loaded[kind] is not None]
        if orphans:
            raise CertificateError(
                f"{_path(datapath, ROOT, 0)} is missing but "
                + ", ".join(_path(datapath, kind, 0) for kind in orphans)
                + " issued by it exist; restore the root certificate and key from a backup"
            )
    else:
        root_loaded = loaded[ROOT]
        assert root_loaded is not None
        if missing and root_loaded.key is None:
            raise CertificateError(
                f"{_path(datapath, ROOT, 1)} is missing, so the missing "
                + ", ".join(_path(datapath, kind, 0) for kind in missing)
                + " cannot be issued; restore the root key from a backup"
            )

    if WEB in missing:
        _cn(cert_name)  # a name too long for a CN fails here, before the root is written
    if MPS in missing:
        _cn(mps_name)

    leaf_bits = FAST_KEY_BITS if fast else STRONG_KEY_BITS
    created: list[str] = []
    if ROOT in missing:
        loaded[ROOT] = _write_pair(datapath, ROOT, _issue_root(leaf_bits, now))
        created.append(ROOT)
    root = loaded[ROOT]
    assert root is not None
    for kind in (WEB, MPS, AGENT):
        if kind not in missing:
            continue
        assert root.key is not None  # checked above
        if kind == WEB:
            pair = _issue_leaf(root.cert, root.key, cert_name, leaf_bits, now, server=True)
        elif kind == MPS:
            pair = _issue_leaf(root.cert, root.key, mps_name, MPS_KEY_BITS, now, server=True)
        else:
            pair = _issue_leaf(root.cert, root.key, AGENT_NAME_PREFIX, leaf_bits, now,
                               server=False, add_fingerprint=True)
        loaded[kind] = _write_pair(datapath, kind, pair)
        created.append(kind)

    result = {kind: _as_certkey(loaded[kind]) for kind in KINDS}
    for kind in created:
        _log.info("created the {kind} certificate {path} ({subject}, RSA-{bits})", kind=kind,
                  path=_path(datapath, kind, 0), subject=result[kind].cert.subject.rfc4514_string(),
                  bits=_key_bits(result[kind].cert))
    _check_names_and_dates(datapath, result, cert_name, mps_name, now, set(created))
    return ServerCertificates(
        root=result[ROOT], web=result[WEB], mps=result[MPS], agent=result[AGENT],
        created=tuple(created),
    )


def load_certificate_file(path: str) -> CertKey:
    """Read a PEM certificate followed by its chain, without a key (for ``--tlsoffload``)."""
    certs = _parse_certificates(path, _read(path))
    return CertKey(cert=certs[0], key=None, chain=tuple(certs[1:]))


# -- reading ---------------------------------------------------------------------------------


def _path(datapath: str, kind: str, index: int) -> str:
    return os.path.join(datapath, FILE_NAMES[kind][index])


def _ensure_folder(datapath: str) -> None:
    if os.path.isdir(datapath):
        return
    try:
        os.makedirs(datapath, mode=_DATA_FOLDER_MODE)
        os.chmod(datapath, _DATA_FOLDER_MODE)  # makedirs' mode is filtered by the umask
    except FileExistsError:
        if not os.path.isdir(datapath):
            raise CertificateError(f"data folder {datapath} exists and is not a folder") from None
    except OSError as e:
        raise CertificateError(f"cannot create data folder {datapath}: {e.strerror}") from e
    _log.info("created data folder {path}", path=datapath)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(f"cannot read {path}: {e.strerror}") from e


def _fix_pem(data: bytes) -> bytes:
    """Drop anything before the first "-----" (BOMs...) and turn old Mac CR line ends into LF."""
    start = data.find(b"-----")
    if start > 0:
        data = data[start:]
    if b"\n" not in data:
        data = data.replace(b"\r", b"\n")
    return data


def _parse_certificates(path: str, data: bytes) -> list[x509.Certificate]:
    data = _fix_pem(data)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(f"{path} is not a PEM certificate file (no BEGIN CERTIFICATE)")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateError(f"{path} holds a corrupt certificate: {e}") from None
    if not certs:
        raise CertificateError(f"{path} holds no certificate")
    return certs


def _parse_key(path: str, data: bytes) -> object:
    data = _fix_pem(data)
    if b"ENCRYPTED" in data:
        raise CertificateError(
            f"{path} is an encrypted private key; meshd needs it unencrypted "
            "(e.g. openssl rsa -in old.key -out new.key)"
        )
    if b"PRIVATE KEY-----" not in data:
        raise CertificateError(f"{path} is not a PEM private key file (no BEGIN ... PRIVATE KEY)")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CertificateError(f"{path} holds a corrupt or unsupported private key: {e}") from None


def _tighten_key_mode(path: str) -> None:
    """A private key readable by group or others is made 0600, with a warning."""
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        raise CertificateError(f"cannot read {path}: {e.strerror}") from e
    if not mode & 0o077:
        return
    try:
        os.chmod(path, _KEY_FILE_MODE)
    except OSError as e:
        _log.warn("private key {path} has mode {mode} and could not be made 0600: {error}",
                  path=path, mode=oct(mode), error=e.strerror)
        return
    _log.warn("private key {path} had mode {mode}, readable by others; changed it to 0600",
              path=path, mode=oct(mode))


def _load_pair(datapath: str, kind: str) -> _Loaded | None:
    """Read one pair; None when both files are absent."""
    cert_path, key_path = _path(datapath, kind, 0), _path(datapath, kind, 1)
    has_cert, has_key = os.path.exists(cert_path), os.path.exists(key_path)
    if not has_cert and not has_key:
        return None
    if not has_cert:
        raise CertificateError(
            f"{cert_path} is missing but its key {key_path} exists; restore it from a backup "
            "(or remove both files to have a new pair issued)"
        )
    if not has_key and kind != ROOT:
        raise CertificateError(
            f"{key_path} is missing but its certificate {cert_path} exists; restore it from a "
            "backup (or remove both files to have a new pair issued)"
        )

    certs = _parse_certificates(cert_path, _read(cert_path))
    cert = certs[0]
    chain: tuple[x509.Certificate, ...] = ()
    if kind == WEB:
        # Only the web certificate is sent with intermediates; extras elsewhere are ignored.
        chain = _dedupe([*certs[1:], *_read_web_chain_files(datapath)])

    key: rsa.RSAPrivateKey | None = None
    if has_key:
        _tighten_key_mode(key_path)
        private = _parse_key(key_path, _read(key_path))
        if not isinstance(private, rsa.RSAPrivateKey):
            if kind == AGENT:
                raise CertificateError(
                    f"{key_path} is not an RSA key; MeshCentral agents only accept an RSA "
                    "agent certificate"
                )
            raise CertificateError(f"{key_path} is not an RSA key; meshd only supports RSA keys")
        try:
            cert_public = cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            raise CertificateError(f"{cert_path} has an unsupported public key: {e}") from None
        if _spki(cert_public) != _spki(private.public_key()):
            raise CertificateError(
                f"{key_path} does not match the certificate {cert_path} (different public key)"
            )
        key = private
    return _Loaded(cert=cert, key=key, chain=chain)


def _read_web_chain_files(datapath: str) -> tuple[x509.Certificate, ...]:
    chain: list[x509.Certificate] = []
    index = 1
    while True:
        path = os.path.join(datapath, WEB_CHAIN_FILE.format(index=index))
        if not os.path.exists(path):
            return tuple(chain)
        chain.extend(_parse_certificates(path, _read(path)))
        index += 1


def _dedupe(certs: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    seen: set[bytes] = set()
    unique: list[x509.Certificate] = []
    for cert in certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            unique.append(cert)
    return tuple(unique)


def _as_certkey(loaded: _Loaded | None) -> CertKey:
    assert loaded is not None
    return CertKey(cert=loaded.cert, key=loaded.key, chain=loaded.chain)


# -- issuing ---------------------------------------------------------------------------------


def _spki(public_key: object) -> bytes:
    if isinstance(public_key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, dsa.DSAPublicKey,
                               ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return public_key.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    raise CertificateError(f"unsupported public key type {type(public_key).__name__}")


def _subject_public_key_bits(cert: x509.Certificate) -> bytes:
    """The content of the certificate's subjectPublicKey BIT STRING (X509_pubkey_digest input)."""
    public_key = cert.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        return public_key.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.PKCS1)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return public_key.public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.UncompressedPoint)
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise CertificateError(f"unsupported public key type {type(public_key).__name__}")


def _name_suffix(public_key: rsa.RSAPublicKey) -> str:
    # MeshCentral appends node-forge's getPublicKeyFingerprint(key, {encoding: 'hex'})[0:6],
    # whose default digest is SHA-1 over the PKCS#1 RSAPublicKey DER. It is only a label.
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()[:6]


def _serial_number() -> int:
    # MeshCentral uses 32 random bits; 63 bits keep the DER INTEGER positive and within 8 bytes,
    # which old Intel AMT firmware handles.
    return secrets.randbits(63) or 1


def _validity(now: datetime) -> tuple[datetime, datetime]:
    not_after = NOT_AFTER
    if now + timedelta(days=365) > not_after:  # only if meshd is still running near 2049
        not_after = now + timedelta(days=30 * 365)
    return NOT_BEFORE, not_after


def _new_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _cn(name: str) -> x509.Name:
    try:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    except ValueError as e:
        raise CertificateError(f"cannot use {name!r} as a certificate name: {e}") from None


def _issue_root(bits: int, now: datetime) -> CertKey:
    key = _new_key(bits)
    name = _cn(f"{ROOT_NAME_PREFIX}-{_name_suffix(key.public_key())}")
    not_before, not_after = _validity(now)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA384())
    )
    return CertKey(cert=cert, key=key)


def _alt_names(name: str) -> list[x509.GeneralName]:
    """MeshCentral's SANs: the name (IP and DNS for an IP), its http URI, then localhost ones."""
    names: list[x509.GeneralName] = []
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None:
        names.append(x509.IPAddress(ip))
    names.append(x509.DNSName(name))
    host = f"[{name}]" if ip is not None and ip.version == 6 else name
    names.append(x509.UniformResourceIdentifier(f"http://{host}/"))
    names.append(x509.DNSName("localhost"))
    names.append(x509.UniformResourceIdentifier("http://localhost/"))
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    unique: list[x509.GeneralName] = []
    for general_name in names:
        if general_name not in unique:
            unique.append(general_name)
    return unique


def _issue_leaf(
    root_cert: x509.Certificate,
    root_key: rsa.RSAPrivateKey,
    name: str,
    bits: int,
    now: datetime,
    *,
    server: bool,
    add_fingerprint: bool = False,
) -> CertKey:
    key = _new_key(bits)
    if add_fingerprint:
        name = f"{name}-{_name_suffix(key.public_key())}"
    not_before, not_after = _validity(now)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_cn(name))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # As MeshCentral: dataEncipherment only on the (non-TLS) agent certificate.
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=True, data_encipherment=not server,
                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                       critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        ).add_extension(x509.SubjectAlternativeName(_alt_names(name)), critical=False)
    # MeshCentral gives the agent certificate an empty extKeyUsage SEQUENCE, which RFC 5280
    # forbids (cryptography raises ValueError on `cert.extensions` for such a certificate, so
    # never read the extensions of a loaded agent certificate); we leave the extension out.
    return CertKey(cert=builder.sign(root_key, hashes.SHA384()), key=key)


# -- writing ---------------------------------------------------------------------------------


def _write_pair(datapath: str, kind: str, pair: CertKey) -> _Loaded:
    # Key first: an interrupted first start leaves at worst a key without its certificate,
    # never a certificate whose key was lost.
    _atomic_write(_path(datapath, kind, 1), pair.key_pem(), _KEY_FILE_MODE)
    _atomic_write(_path(datapath, kind, 0), pair.cert_pem(), _CERT_FILE_MODE)
    return _Loaded(cert=pair.cert, key=pair.key, chain=())


def _atomic_write(path: str, data: bytes, mode: int) -> None:
    """Write one file of the pair durably (see :mod:`meshd.files`)."""
    try:
        atomic_write(path, data, mode)
    except OSError as e:
        raise CertificateError(f"cannot write {path}: {e.strerror or e}") from e


# -- checks that only warn -------------------------------------------------------------------


def _common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = values[0].value if values else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _certificate_names(cert: x509.Certificate) -> list[str]:
    """The CN and the DNS/IP subject alternative names, lower-case, without duplicates."""
    names = [_common_name(cert).lower()]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        # ValueError: an extension cryptography cannot parse (only used for a warning).
        return names
    names.extend(value.lower() for value in san.get_values_for_type(x509.DNSName))
    names.extend(str(value) for value in san.get_values_for_type(x509.IPAddress))
    return list(dict.fromkeys(names))


def _name_matches(names: list[str], wanted: str) -> bool:
    wanted = wanted.lower()
    for name in names:
        if name == wanted or (name.startswith("*.") and wanted.endswith(name[1:])):
            return True
    return False


def _key_bits(cert: x509.Certificate) -> int | None:
    public_key = cert.public_key()
    return public_key.key_size if isinstance(public_key, rsa.RSAPublicKey) else None


def _check_names_and_dates(
    datapath: str,
    result: dict[str, CertKey],
    cert_name: str,
    mps_name: str,
    now: datetime,
    created: set[str],
) -> None:
    web, mps, root = result[WEB], result[MPS], result[ROOT]
    if WEB not in created and not _name_matches(_certificate_names(web.cert), cert_name):
        _log.warn(
            "web certificate {path} is for {names}, not for {cert_name}; using it anyway "
            "(remove webserver-cert-* to have one issued for {cert_name})",
            path=_path(datapath, WEB, 0), names=", ".join(_certificate_names(web.cert)),
            cert_name=cert_name,
        )
    if MPS not in created and _common_name(mps.cert).lower() != mps_name.lower():
        _log.warn(
            "MPS certificate {path} is for {name}, not for {mps_name}; Intel AMT may refuse it "
            "(remove mpsserver-cert-* to have one issued for {mps_name})",
            path=_path(datapath, MPS, 0), name=_common_name(mps.cert), mps_name=mps_name,
        )
    if MPS not in created:
        try:
            mps.cert.verify_directly_issued_by(root.cert)
        except (ValueError, TypeError, InvalidSignature):
            _log.warn("MPS certificate {path} was not issued by the root certificate {root}; "
                      "Intel AMT devices that trust that root will refuse it",
                      path=_path(datapath, MPS, 0), root=_path(datapath, ROOT, 0))
    for kind in KINDS:
        cert = result[kind].cert
        if now > cert.not_valid_after_utc:
            _log.warn("{kind} certificate {path} expired on {date}", kind=kind,
                      path=_path(datapath, kind, 0), date=cert.not_valid_after_utc.isoformat())
        elif now < cert.not_valid_before_utc:
            _log.warn("{kind} certificate {path} is not valid before {date}", kind=kind,
                      path=_path(datapath, kind, 0), date=cert.not_valid_before_utc.isoformat())

