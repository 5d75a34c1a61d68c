"""The ACME files in the data folder, all written atomically (temp file, fsync, rename).

``acme-account.key``
    The ACME account key (RSA-2048, PKCS#8 PEM), mode 0600. The account at the CA *is* this
    key: keep it to keep the account (its rate-limit history and contact address); losing it
    only means a new account is registered.
``acme-state.json``
    The directory URL, the account URL, and the SHA-384 / names / expiry of the certificate
    meshd last installed from the CA. Informational except for that hash: a web certificate
    whose hash is not the recorded one was not issued through ACME and gets replaced.
``webserver-cert-public.crt`` / ``webserver-cert-private.key``
    The web certificate as :mod:`meshd.certs` reads it: the leaf followed by the CA's chain,
    and its key (PKCS#1 PEM, 0600). A restart therefore serves the ACME certificate.
``webserver-cert-public.crt.bak`` / ``webserver-cert-private.key.bak``
    The pair in use before meshd first replaced it (normally the self-signed one it made;
    or one installed by hand): saved whenever a certificate *not* from ACME is replaced,
    never when an ACME certificate is renewed (the CA can always issue another). To go back:
    stop meshd, remove ``letsencrypt`` from the configuration, rename the two ``.bak`` files
    over the originals. ``webserver-cert-chainN.crt`` files (extra intermediates that
    :mod:`meshd.certs` would append to *any* web certificate) are renamed to ``.bak`` too,
    since the ACME chain is in the certificate file itself.

Swapping two files cannot be one atomic step. The new pair is first written in full as
``*.new`` files, then the key and the certificate are renamed over the old ones. A crash
between the two renames would leave a key that does not match its certificate, which
:mod:`meshd.certs` refuses at start; :func:`complete_interrupted_swap` (run before the
certificates are loaded) finishes such a swap.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.logger import Logger

from meshd.certs import CertKey
from meshd.files import atomic_write, fsync_folder

__all__ = [
    "ACCOUNT_KEY_FILE",
    "STATE_FILE",
    "AcmeState",
    "complete_interrupted_swap",
    "install_web_certificate",
    "load_or_create_account_key",
    "read_state",
    "write_state",
]

ACCOUNT_KEY_FILE = "acme-account.key"
STATE_FILE = "acme-state.json"
WEB_CERT_FILE = "webserver-cert-public.crt"
WEB_KEY_FILE = "webserver-cert-private.key"
WEB_CHAIN_PREFIX = "webserver-cert-chain"
BACKUP_SUFFIX = ".bak"
NEW_SUFFIX = ".new"

ACCOUNT_KEY_BITS = 2048
_KEY_MODE = 0o600
_PUBLIC_MODE = 0o644

_log = Logger(namespace="meshd.acme")


@dataclass(frozen=True)
class AcmeState:
    """What ``acme-state.json`` records."""

    directory: Optional[str] = None
    account_uri: Optional[str] = None
    certificate_sha384: Optional[str] = None
    certificate_names: tuple[str, ...] = ()
    certificate_not_after: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "account": self.account_uri,
            "certificate": {
                "sha384": self.certificate_sha384,
                "names": list(self.certificate_names),
                "notAfter": self.certificate_not_after,
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> "AcmeState":
        if not isinstance(data, dict):
            return cls()
        cert = data.get("certificate") if isinstance(data.get("certificate"), dict) else {}
        assert isinstance(cert, dict)

        def text(value: Any) -> Optional[str]:
            return value if isinstance(value, str) else None

        names = cert.get("names")
        return cls(
            directory=text(data.get("directory")),
            account_uri=text(data.get("account")),
            certificate_sha384=text(cert.get("sha384")),
            certificate_names=tuple(n for n in names if isinstance(n, str))
            if isinstance(names, list) else (),
            certificate_not_after=text(cert.get("notAfter")),
        )


# -- account ---------------------------------------------------------------------------------


def load_or_create_account_key(datapath: str) -> tuple[rsa.RSAPrivateKey, Optional[str]]:
    """The account key from ``acme-account.key``, created (0600) if absent; and a note to log
    (runs on the ACME thread, so it leaves the logging to its caller)."""
    path = os.path.join(datapath, ACCOUNT_KEY_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        key = rsa.generate_private_key(public_exponent=65537, key_size=ACCOUNT_KEY_BITS)
        atomic_write(path, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), _KEY_MODE)
        return key, f"created the account key {path}"
    note = None
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, _KEY_MODE)
        note = f"the account key {path} was readable by others; made it 0600"
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a usable private key ({e}); remove it to have a new "
                         f"ACME account registered") from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA key; remove it to have a new ACME account "
                         f"registered")
    return loaded, note


def read_state(datapath: str) -> AcmeState:
    """``acme-state.json``; an empty state if it is missing or unreadable."""
    path = os.path.join(datapath, STATE_FILE)
    try:
        with open(path, "rb") as f:
            return AcmeState.from_json(json.loads(f.read().decode("utf-8")))
    except FileNotFoundError:
        return AcmeState()
    except (OSError, ValueError) as e:
        _log.warn("ACME: ignoring unreadable {path}: {error}", path=path, error=str(e))
        return AcmeState()


def write_state(datapath: str, state: AcmeState) -> None:
    atomic_write(os.path.join(datapath, STATE_FILE),
                 (json.dumps(state.to_json(), indent=2) + "\n").encode("utf-8"), _PUBLIC_MODE)


# -- the web certificate ---------------------------------------------------------------------


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _chain_files(datapath: str) -> list[str]:
    found: list[str] = []
    index = 1
    while True:
        path = os.path.join(datapath, f"{WEB_CHAIN_PREFIX}{index}.crt")
        if not os.path.exists(path):
            return found
        found.append(path)
        index += 1


def _copy(source: str, target: str, mode: int) -> None:
    with open(source, "rb") as f:
        atomic_write(target, f.read(), mode)


def install_web_certificate(datapath: str, new: CertKey, *, backup: bool) -> list[str]:
    """Make ``new`` (leaf + chain, key) the data folder's web certificate; return paths saved.

    ``backup``: save the current pair as ``*.bak`` first (the current certificate was not
    issued through ACME). Chain files are always moved aside (see the module docstring).
    """
    if new.key is None:
        raise ValueError("the new web certificate has no private key")
    cert_path = os.path.join(datapath, WEB_CERT_FILE)
    key_path = os.path.join(datapath, WEB_KEY_FILE)
    # 1. The whole new pair on disk, under temporary names.
    atomic_write(key_path + NEW_SUFFIX, _key_pem(new.key), _KEY_MODE)
    atomic_write(cert_path + NEW_SUFFIX, new.chain_pem(), _PUBLIC_MODE)
    saved: list[str] = []
    # 2. The old pair, if it is worth keeping.
    if backup and os.path.exists(cert_path) and os.path.exists(key_path):
        _copy(key_path, key_path + BACKUP_SUFFIX, _KEY_MODE)
        _copy(cert_path, cert_path + BACKUP_SUFFIX, _PUBLIC_MODE)
        saved += [cert_path + BACKUP_SUFFIX, key_path + BACKUP_SUFFIX]
    for chain in _chain_files(datapath):
        os.replace(chain, chain + BACKUP_SUFFIX)
        saved.append(chain + BACKUP_SUFFIX)
    # 3. The swap: key then certificate (see complete_interrupted_swap).
    os.replace(key_path + NEW_SUFFIX, key_path)
    os.replace(cert_path + NEW_SUFFIX, cert_path)
    fsync_folder(datapath)
    return saved


def _matches(cert_pem: bytes, key_pem: bytes) -> bool:
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, IndexError):
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    public = key.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        return False
    return bool(cert.public_key().public_bytes(der, spki) == public.public_bytes(der, spki))


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def complete_interrupted_swap(datapath: str) -> Optional[str]:
    """Finish (or undo) a web certificate swap cut short by a crash; say what was done.

    Call before the certificates are loaded. Returns ``None`` when there was nothing to do.
    """
    cert_path = os.path.join(datapath, WEB_CERT_FILE)
    key_path = os.path.join(datapath, WEB_KEY_FILE)
    new_cert = _read(cert_path + NEW_SUFFIX)
    new_key = _read(key_path + NEW_SUFFIX)
    if new_cert is None and new_key is None:
        return None
    if new_cert is not None and new_key is not None and _matches(new_cert, new_key):
        # Stopped before the key was renamed: the new pair is complete, use it.
        os.replace(key_path + NEW_SUFFIX, key_path)
        os.replace(cert_path + NEW_SUFFIX, cert_path)
        what = "installed the new web certificate whose installation was interrupted"
    elif new_cert is not None and new_key is None and _matches(new_cert, _read(key_path) or b""):
        # Stopped between the two renames: the key is already the new one.
        os.replace(cert_path + NEW_SUFFIX, cert_path)
        what = "finished installing the new web certificate (its key was already in place)"
    else:
        # Stopped while writing the new files: the old pair is intact.
        for leftover in (cert_path + NEW_SUFFIX, key_path + NEW_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        what = "removed an incomplete new web certificate; the previous one stays in use"
    fsync_folder(datapath)
    _log.warn("{what} in {datapath}", what=what, datapath=datapath)
    return what
