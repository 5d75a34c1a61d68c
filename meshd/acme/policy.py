"""When to order a web certificate, how long to wait after a failure, and why it failed.

Pure functions of their arguments (certificates, times in POSIX seconds, exceptions): no
sockets, no clock, no files, so every rule is unit-tested directly.

* :func:`parse_names` -- ``letsencrypt.names`` as a clean list.
* :func:`renewal_due_at` -- the moment a certificate enters its renewal window.
* :func:`order_reason` -- ``None`` if the certificate in use is fine, else why a new one is needed.
* :func:`retry_delay` -- exponential back-off after failed attempts.
* :func:`explain` -- a failure in plain words, with its :class:`FailureKind`.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional, Sequence

import requests
from acme import errors as acme_errors
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "LETS_ENCRYPT_PRODUCTION",
    "LETS_ENCRYPT_STAGING",
    "ChallengeFailed",
    "Explanation",
    "FailureKind",
    "OrderFailed",
    "certificate_names",
    "certificate_sha384",
    "describe_delay",
    "directory_url",
    "explain",
    "order_reason",
    "parse_names",
    "renewal_due_at",
    "retry_delay",
]

LETS_ENCRYPT_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"

DAY = 86400.0


def directory_url(directory: Optional[str], production: bool) -> str:
    """The ACME directory: ``directory`` if set, else Let's Encrypt's (staging by default)."""
    if directory:
        return directory
    return LETS_ENCRYPT_PRODUCTION if production else LETS_ENCRYPT_STAGING


def parse_names(names: str) -> list[str]:
    """``"a.example.com, B.example.com,"`` -> ``["a.example.com", "b.example.com"]``."""
    result: list[str] = []
    for name in names.split(","):
        name = name.strip().rstrip(".").lower()
        if name and name not in result:
            result.append(name)
    return result


def certificate_sha384(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-384 of the certificate DER (the hash agents pin)."""
    return hashlib.sha384(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The subjectAltName DNS names and IP addresses, lower-case (the CN is ignored, as browsers
    do)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    names = [value.lower() for value in san.get_values_for_type(x509.DNSName)]
    names.extend(str(value) for value in san.get_values_for_type(x509.IPAddress))
    return names


def _covers(cert_names: Sequence[str], name: str) -> bool:
    """Does a certificate for ``cert_names`` serve ``name``? (``*.a.b`` covers ``x.a.b`` only.)"""
    for cert_name in cert_names:
        if cert_name == name:
            return True
        if cert_name.startswith("*."):
            label, _, rest = name.partition(".")
            if label and rest == cert_name[2:]:
                return True
    return False


def renewal_due_at(cert: x509.Certificate, renew_days: int) -> float:
    """When ``cert`` enters its renewal window: ``renew_days`` before it expires.

    A certificate whose whole lifetime is under twice the window (a short-lived one, such as
    a 6-day certificate) would otherwise be renewed as soon as it is issued, every day: it is
    renewed when a third of its lifetime is left instead, as the CAs recommend.
    """
    not_before = cert.not_valid_before_utc.timestamp()
    not_after = cert.not_valid_after_utc.timestamp()
    lifetime = max(not_after - not_before, 0.0)
    window = renew_days * DAY
    if window * 2 > lifetime:
        window = lifetime / 3
    return not_after - window


def _date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def order_reason(
    cert: Optional[x509.Certificate],
    names: Sequence[str],
    *,
    acme_sha384: Optional[str],
    acme_directory: Optional[str],
    directory: str,
    renew_days: int,
    now: float,
) -> Optional[str]:
    """Why a new certificate must be ordered now, in plain words; ``None`` if not.

    ``acme_sha384``/``acme_directory`` describe the certificate meshd last installed from the
    CA (``None`` if it never did). With ``letsencrypt`` configured the web certificate must be
    that one: any other (the self-signed one meshd made, one installed by hand) is replaced.
    """
    if cert is None:
        return "there is no web certificate"
    if acme_sha384 is None or certificate_sha384(cert) != acme_sha384:
        return "the web certificate in use was not issued through ACME (self-signed or " \
               "installed by hand)"
    if acme_directory != directory:
        return f"the web certificate came from another ACME directory ({acme_directory})"
    cert_names = certificate_names(cert)
    missing = [name for name in names if not _covers(cert_names, name)]
    if missing:
        return "the web certificate does not cover " + ", ".join(missing)
    not_after = cert.not_valid_after_utc.timestamp()
    if now >= not_after:
        return f"the web certificate expired on {_date(not_after)}"
    due = renewal_due_at(cert, renew_days)
    if now >= due:
        days = (not_after - now) / DAY
        return (f"the web certificate expires on {_date(not_after)}, in {days:.1f} days: "
                f"inside its renewal window")
    return None


class FailureKind(enum.Enum):
    """What went wrong, coarsely: decides the wording and the minimum wait."""

    RATE_LIMITED = "rate limited"
    DNS = "DNS failure"
    CHALLENGE_UNREACHABLE = "challenge unreachable"
    CA_UNREACHABLE = "CA unreachable"
    REFUSED = "refused by the CA"
    ACCOUNT = "account problem"
    FILES = "cannot write files"
    INTERNAL = "unexpected error"


@dataclass(frozen=True)
class Explanation:
    """A failure for the log: its kind and one sentence an administrator can act on."""

    kind: FailureKind
    text: str


class ChallengeFailed(Exception):
    """The CA could not validate the http-01 challenge for ``name``; ``error`` is its problem."""

    def __init__(self, name: str, error: object) -> None:
        super().__init__(f"challenge for {name} failed: {error}")
        self.name = name
        self.error = error


class OrderFailed(Exception):
    """The CA gave up on the order (no challenge error to show), or something else it said."""


# The connection and DNS details that Let's Encrypt (Boulder) and Pebble put in the problem
# detail of a failed http-01 validation; the error type alone is not enough (Pebble reports a
# name that does not resolve as "connection").
_DNS_HINTS = ("no such host", "nxdomain", "no valid a records", "no valid ip addresses",
              "dns problem", "servfail", "error occurred while resolving", "could not resolve")


def _problem(error: object) -> tuple[Optional[str], str]:
    """(ACME error code, detail) of an ``acme.messages.Error``, else (None, str(error))."""
    if isinstance(error, messages.Error):
        return error.code, error.detail or error.description or str(error)
    return None, str(error)


def explain(error: BaseException, *, directory: str,
            http_port: Optional[int] = None) -> Explanation:
    """Say in plain words why an order failed and what to check."""
    port = f"port {http_port}" if http_port else "the HTTP port (redirPort, normally 80)"
    if isinstance(error, ChallengeFailed):
        code, detail = _problem(error.error)
        lowered = detail.lower()
        if code == "dns" or any(hint in lowered for hint in _DNS_HINTS):
            return Explanation(FailureKind.DNS, (
                f"DNS failure: the CA could not look up {error.name}; check that the name has "
                f"a public A (or AAAA) record pointing to this server ({detail})"))
        if code == "caa":
            return Explanation(FailureKind.REFUSED, (
                f"a DNS CAA record of {error.name} does not allow this CA to issue for it "
                f"({detail})"))
        if code == "rateLimited":
            return Explanation(FailureKind.RATE_LIMITED, f"rate limited by the CA: {detail}")
        return Explanation(FailureKind.CHALLENGE_UNREACHABLE, (
            f"challenge unreachable: the CA could not fetch "
            f"http://{error.name}/.well-known/acme-challenge/... from this server; check that "
            f"{port} is open to the internet and forwarded to meshd ({detail})"))
    if isinstance(error, messages.Error):
        code, detail = _problem(error)
        if code == "rateLimited":
            return Explanation(FailureKind.RATE_LIMITED, (
                f"rate limited: the CA refuses more orders for now ({detail})"))
        if code in ("rejectedIdentifier", "unsupportedIdentifier", "caa"):
            return Explanation(FailureKind.REFUSED, (
                f"the CA will not issue a certificate for these names ({detail})"))
        if code in ("accountDoesNotExist", "unauthorized", "invalidContact",
                    "unsupportedContact", "externalAccountRequired", "userActionRequired"):
            return Explanation(FailureKind.ACCOUNT, f"the CA refused the account ({detail})")
        if code == "dns":
            return Explanation(FailureKind.DNS, f"DNS failure at the CA ({detail})")
        if code == "connection":
            return Explanation(FailureKind.CHALLENGE_UNREACHABLE, (
                f"challenge unreachable: the CA could not connect to this server on {port} "
                f"({detail})"))
        return Explanation(FailureKind.REFUSED, f"the CA refused the request ({detail})")
    if isinstance(error, requests.exceptions.SSLError):
        return Explanation(FailureKind.CA_UNREACHABLE, (
            f"CA unreachable: the HTTPS certificate of {directory} could not be verified "
            f"({_short(error)})"))
    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return Explanation(FailureKind.CA_UNREACHABLE, (
            f"CA unreachable: cannot connect to {directory}; check this server's outgoing "
            f"HTTPS and DNS ({_short(error)})"))
    if isinstance(error, (acme_errors.TimeoutError, acme_errors.PollError)):
        return Explanation(FailureKind.CA_UNREACHABLE, (
            "CA too slow: the order did not complete in time"))
    if isinstance(error, (acme_errors.ClientError, acme_errors.NonceError,
                          requests.exceptions.RequestException)):
        return Explanation(FailureKind.CA_UNREACHABLE, (
            f"the CA at {directory} gave an unusable answer ({_short(error)})"))
    if isinstance(error, acme_errors.IssuanceError):
        code, detail = _problem(error.error)
        kind = FailureKind.RATE_LIMITED if code == "rateLimited" else FailureKind.REFUSED
        return Explanation(kind, f"the CA did not issue the certificate ({detail})")
    if isinstance(error, OrderFailed):
        return Explanation(FailureKind.REFUSED, f"the CA did not issue the certificate ({error})")
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return Explanation(FailureKind.FILES, (
            f"cannot write the certificate files{where}: {error.strerror or error}; check the "
            f"data folder's permissions and free space"))
    return Explanation(FailureKind.INTERNAL, f"unexpected error: {error!r}")


def _short(error: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, without the repr noise."""
    text = str(error)
    for marker in ("Caused by ", "reason: "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip("()'\" ")[:300]


def retry_delay(
    failures: int,
    kind: FailureKind,
    *,
    initial: float,
    maximum: float,
    rate_limited_minimum: float,
) -> float:
    """Seconds to wait after ``failures`` consecutive failures (1 for the first).

    ``initial`` doubles with each failure up to ``maximum``; a rate limit waits at least
    ``rate_limited_minimum`` (the CA's window is an hour or more: asking sooner only burns
    the remaining quota).
    """
    delay = initial * (2 ** max(failures - 1, 0))
    delay = min(delay, maximum)
    if kind is FailureKind.RATE_LIMITED:
        delay = max(delay, min(rate_limited_minimum, maximum))
    return delay


def describe_delay(seconds: float) -> str:
    """``90`` -> ``"1.5 minutes"``, ``86400`` -> ``"24 hours"``: for log lines."""
    if seconds < 90:
        return f"{seconds:g} s" if seconds != int(seconds) else f"{int(seconds)} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.3g} minutes"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.3g} hours"
    return f"{seconds / DAY:.3g} days"
