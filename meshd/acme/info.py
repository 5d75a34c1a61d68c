"""``meshd-admin certinfo``: the certificates in a data folder, for a person to read.

For each of the web, MPS, agent and root certificates: the file, subject, names (SAN),
issuer, SHA-384 of the certificate (what agents pin for the web one), validity with the
days left, the chain sent after the leaf, and the key file's size and mode. The agent
certificate also shows the ServerID (SHA-384 of its public key, written into every agent's
``.msh``). When ACME is in use, its state follows: directory, account, and whether the web
certificate in use is the one the CA issued. Nothing is written; missing or broken files
are reported, not raised.
"""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from typing import Optional

from cryptography.hazmat.primitives.asymmetric import rsa

from meshd import certs
from meshd.acme import policy, storage

__all__ = ["certinfo_lines"]

_ORDER = (("web", certs.WEB), ("MPS", certs.MPS), ("agent", certs.AGENT), ("root", certs.ROOT))


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _validity(cert_key: certs.CertKey, now: datetime) -> str:
    start, end = cert_key.cert.not_valid_before_utc, cert_key.cert.not_valid_after_utc
    left = (end - now).total_seconds() / policy.DAY
    if left < 0:
        status = f"EXPIRED {-left:.0f} days ago"
    elif now < start:
        status = "NOT YET VALID"
    else:
        status = f"{left:.0f} days left"
    return f"{_when(start)} to {_when(end)} ({status})"


def _key_line(path: str) -> str:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return f"{os.path.basename(path)} missing"
    warning = "" if not mode & 0o077 else ", READABLE BY OTHERS"
    return f"{os.path.basename(path)} (mode {mode:04o}{warning})"


def _certificate_lines(label: str, kind: str, datapath: str, now: datetime) -> list[str]:
    cert_file, key_file = certs.FILE_NAMES[kind]
    path = os.path.join(datapath, cert_file)
    if not os.path.exists(path):
        return [f"{label} certificate: missing ({path})"]
    try:
        cert_key = certs.load_certificate_file(path)
    except certs.CertificateError as e:
        return [f"{label} certificate: unreadable: {e}"]
    cert = cert_key.cert
    public_key = cert.public_key()
    key_type = f"RSA-{public_key.key_size}" if isinstance(public_key, rsa.RSAPublicKey) \
        else type(public_key).__name__
    lines = [
        f"{label} certificate: {path}",
        f"  subject:  {cert.subject.rfc4514_string()}",
        f"  names:    {', '.join(policy.certificate_names(cert)) or '(no subjectAltName)'}",
        f"  issuer:   {cert.issuer.rfc4514_string()}"
        + (" (self-signed)" if cert.issuer == cert.subject else ""),
        f"  SHA-384:  {cert_key.sha384()}",
        f"  valid:    {_validity(cert_key, now)}",
        f"  key:      {key_type}, {_key_line(os.path.join(datapath, key_file))}",
    ]
    if kind == certs.AGENT:
        lines.append(f"  ServerID: {cert_key.public_key_sha384()}")
    if kind == certs.WEB:
        chain = list(cert_key.chain)
        index = 1
        while True:  # webserver-cert-chain1.crt, ...2.crt, as meshd.certs reads them
            chain_path = os.path.join(datapath, certs.WEB_CHAIN_FILE.format(index=index))
            if not os.path.exists(chain_path):
                break
            try:
                extra = certs.load_certificate_file(chain_path)
                chain.extend((extra.cert, *extra.chain))
            except certs.CertificateError as e:
                lines.append(f"  chain:    unreadable: {e}")
            index += 1
        if chain:
            lines.append(f"  chain:    {len(chain)} certificate(s) sent after it: "
                         + "; ".join(extra.subject.rfc4514_string() for extra in chain))
    return lines


def _acme_lines(datapath: str, web_sha384: Optional[str]) -> list[str]:
    state_path = os.path.join(datapath, storage.STATE_FILE)
    if not os.path.exists(state_path):
        return []
    state = storage.read_state(datapath)
    lines = [f"ACME: {state_path}",
             f"  directory: {state.directory or '(unknown)'}",
             f"  account:   {state.account_uri or '(unknown)'}, key "
             f"{_key_line(os.path.join(datapath, storage.ACCOUNT_KEY_FILE))}"]
    if state.certificate_sha384:
        in_use = "in use" if state.certificate_sha384 == web_sha384 else \
            "NOT the web certificate in use"
        lines.append(f"  certificate: SHA-384 {state.certificate_sha384} for "
                     f"{', '.join(state.certificate_names)}, valid until "
                     f"{state.certificate_not_after} ({in_use})")
    backups = sorted(name for name in os.listdir(datapath)
                     if name.startswith("webserver-cert-") and name.endswith(
                         storage.BACKUP_SUFFIX))
    if backups:
        lines.append(f"  previous web certificate kept as: {', '.join(backups)}")
    return lines


def certinfo_lines(datapath: str, now: Optional[datetime] = None) -> list[str]:
    """Describe the certificates in ``datapath``, one line per fact (no trailing newlines)."""
    if now is None:
        now = datetime.now(timezone.utc)
    lines = [f"data folder: {os.path.abspath(datapath)}"]
    for label, kind in _ORDER:
        lines.extend(_certificate_lines(label, kind, datapath, now))
    web_sha384: Optional[str] = None
    try:
        web_sha384 = certs.load_certificate_file(
            os.path.join(datapath, certs.FILE_NAMES[certs.WEB][0])).sha384()
    except certs.CertificateError:
        pass
    lines.extend(_acme_lines(datapath, web_sha384))
    return lines
