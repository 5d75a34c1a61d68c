"""Tests for meshd.acme: policy, challenge responder, storage, certinfo, the service schedule
(task.Clock, a fake CA), and the real thing against Pebble on loopback."""

from __future__ import annotations

import datetime
import json
import os
import stat
import time
from typing import Any, Callable, Optional, Sequence, cast

import requests
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, capturedLogs, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshd import certs
from meshd.acme import policy, storage
from meshd.acme.challenge import ChallengeResource, with_acme_challenges
from meshd.acme.info import certinfo_lines
from meshd.acme.issuer import AcmeIssuer, ICertificateIssuer
from meshd.acme.service import AcmeService
from meshd.certs import CertKey
from meshd.config import ConfigError, LetsEncrypt, parse_config
from meshd.tls import web_context_factory
from meshd.web.redirect import RedirectResource
from tests.certutil import make_ca
from tests.pebble import Pebble, require_pebble

global_reactor: Any = _reactor  # the reactor trial runs (real sockets, real threads)

DAY = 86400.0
T0 = 1_900_000_000.0  # 2030-03-17: the Clock's "now" in the schedule tests
DIRECTORY = "https://ca.test/directory"

_KEYS: list[rsa.RSAPrivateKey] = []


def _key(index: int) -> rsa.RSAPrivateKey:
    """One of a few RSA-2048 keys made once per test run (key generation is the slow part)."""
    while len(_KEYS) <= index:
        _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _KEYS[index]


_CAS: dict[str, tuple[x509.Certificate, rsa.RSAPrivateKey]] = {}


def _ca(name: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    if name not in _CAS:
        _CAS[name] = make_ca(name, days=20000)
    return _CAS[name]


def _leaf(names: Sequence[str], not_before: float, not_after: float, *, key_index: int = 1,
          ca: str = "Fake ACME Intermediate") -> CertKey:
    """A leaf certificate for ``names`` with exact dates, and its issuing CA as the chain."""
    ca_cert, ca_key = _ca(ca)
    key = _key(key_index)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(not_before, datetime.timezone.utc))
        .not_valid_after(datetime.datetime.fromtimestamp(not_after, datetime.timezone.utc))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return CertKey(cert=cert, key=key, chain=(ca_cert,))


def _acme_leaf(names: Sequence[str], issued: float, days: float = 90, key_index: int = 1
               ) -> CertKey:
    return _leaf(names, issued, issued + days * DAY, key_index=key_index)


def _self_signed(names: Sequence[str] = ("mesh.example.com",)) -> CertKey:
    """Like the web certificate meshd makes: issued by the data folder's root, long-lived."""
    return _leaf(list(names), T0 - 1000 * DAY, T0 + 7000 * DAY, key_index=0,
                 ca="MeshCentralRoot-test")


def _write_web_pair(datapath: str, pair: CertKey) -> None:
    storage.atomic_write(os.path.join(datapath, storage.WEB_KEY_FILE), pair.key_pem(), 0o600)
    storage.atomic_write(os.path.join(datapath, storage.WEB_CERT_FILE), pair.chain_pem(), 0o644)


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _sync(function: Callable[..., Any], *args: Any) -> "Deferred[Any]":
    """run_blocking for the unit tests: no thread, the call happens at once."""
    return defer.maybeDeferred(function, *args)


def _messages(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events
            if event.get("log_namespace", "").startswith("meshd.acme")]


def _acme_error(code: str, detail: str) -> messages.Error:
    return messages.Error(typ="urn:ietf:params:acme:error:" + code, detail=detail)


# Problem details as Pebble (and Boulder, similarly) send them for failed http-01 validations.
REFUSED_DETAIL = ('The server could not connect to the client to verify the domain :: Get '
                  '"http://localhost:43123/.well-known/acme-challenge/abc": dial tcp '
                  '127.0.0.1:43123: connect: connection refused')
NXDOMAIN_DETAIL = ('The server could not connect to the client to verify the domain :: Get '
                   '"http://meshd.test:5002/.well-known/acme-challenge/c_z2": error occurred '
                   'while resolving URL "http://meshd.test:5002/...": "lookup meshd.test on '
                   '10.255.255.53:53: no such host"')


class PolicyTests(SynchronousTestCase):
    """meshd.acme.policy: names, renewal window, reasons, back-off, plain-words errors."""

    def test_parse_names(self) -> None:
        """Names are split on commas, trimmed, lower-cased, trailing dots and repeats dropped."""
        names = " Mesh.Example.com., www.example.com ,,mesh.example.com"
        self.assertEqual(policy.parse_names(names), ["mesh.example.com", "www.example.com"])

    def test_directory_url(self) -> None:
        """An explicit directory wins; otherwise Let's Encrypt staging, or production."""
        self.assertEqual(policy.directory_url("https://x/dir", True), "https://x/dir")
        self.assertEqual(policy.directory_url(None, False), policy.LETS_ENCRYPT_STAGING)
        self.assertEqual(policy.directory_url(None, True), policy.LETS_ENCRYPT_PRODUCTION)

    def test_renewal_window_90_days(self) -> None:
        """A 90-day certificate is due 30 days before it expires (renewDays 30)."""
        cert = _acme_leaf(["a.example.com"], T0).cert
        self.assertEqual(policy.renewal_due_at(cert, 30), T0 + 60 * DAY)

    def test_renewal_window_short_lived(self) -> None:
        """A 6-day certificate is due with a third of its life left, not at once."""
        cert = _acme_leaf(["a.example.com"], T0, days=6).cert
        self.assertEqual(policy.renewal_due_at(cert, 30), T0 + 4 * DAY)

    def reason(self, cert: Optional[x509.Certificate], names: Sequence[str] = ("a.example.com",),
               *, sha: Optional[str] = "same", directory: str = DIRECTORY, now: float = T0
               ) -> Optional[str]:
        recorded = policy.certificate_sha384(cert) if (sha == "same" and cert) else sha
        return policy.order_reason(cert, list(names), acme_sha384=recorded,
                                   acme_directory=directory, directory=DIRECTORY,
                                   renew_days=30, now=now)

    def test_order_reasons(self) -> None:
        """Each reason to order is found and worded; a good certificate gives None."""
        cert = _acme_leaf(["a.example.com", "*.b.example.com"], T0).cert
        self.assertIsNone(self.reason(cert, ["a.example.com", "x.b.example.com"]))
        self.assertEqual(self.reason(None), "there is no web certificate")
        self.assertIn("not issued through ACME", self.reason(cert, sha=None) or "")
        self.assertIn("not issued through ACME", self.reason(cert, sha="other") or "")
        self.assertIn("another ACME directory", self.reason(cert, directory="https://old") or "")
        self.assertEqual(self.reason(cert, ["a.example.com", "y.x.b.example.com"]),
                         "the web certificate does not cover y.x.b.example.com")
        self.assertIn("inside its renewal window", self.reason(cert, now=T0 + 61 * DAY) or "")
        self.assertIn("expired on", self.reason(cert, now=T0 + 91 * DAY) or "")

    def test_retry_delay_doubles_and_caps(self) -> None:
        """Back-off doubles from the initial delay and stops at the maximum."""
        delays = [policy.retry_delay(n, policy.FailureKind.CHALLENGE_UNREACHABLE, initial=300,
                                     maximum=DAY, rate_limited_minimum=3600)
                  for n in range(1, 11)]
        self.assertEqual(delays[:5], [300, 600, 1200, 2400, 4800])
        self.assertEqual(delays[-1], DAY)

    def test_retry_delay_rate_limited(self) -> None:
        """A rate limit waits at least the rate-limit minimum, even on the first failure."""
        self.assertEqual(policy.retry_delay(1, policy.FailureKind.RATE_LIMITED, initial=300,
                                            maximum=DAY, rate_limited_minimum=3600), 3600)

    def explain(self, error: BaseException) -> policy.Explanation:
        return policy.explain(error, directory=DIRECTORY, http_port=80)

    def test_explain_challenge_unreachable(self) -> None:
        """A refused http-01 fetch reads 'challenge unreachable' and names the port."""
        e = self.explain(policy.ChallengeFailed("a.example.com",
                                                _acme_error("connection", REFUSED_DETAIL)))
        self.assertEqual(e.kind, policy.FailureKind.CHALLENGE_UNREACHABLE)
        self.assertIn("challenge unreachable", e.text)
        self.assertIn("port 80", e.text)
        self.assertIn("connection refused", e.text)

    def test_explain_dns(self) -> None:
        """A name that does not resolve reads 'DNS failure', whatever error type the CA used."""
        for code in ("dns", "connection"):
            e = self.explain(policy.ChallengeFailed("meshd.test",
                                                    _acme_error(code, NXDOMAIN_DETAIL)))
            self.assertEqual(e.kind, policy.FailureKind.DNS)
            self.assertTrue(e.text.startswith("DNS failure: the CA could not look up meshd.test"))

    def test_explain_rate_limited(self) -> None:
        """A rateLimited problem reads 'rate limited' with the CA's detail."""
        e = self.explain(_acme_error("rateLimited", "too many certificates (5) already issued"))
        self.assertEqual(e.kind, policy.FailureKind.RATE_LIMITED)
        self.assertIn("rate limited", e.text)
        self.assertIn("too many certificates", e.text)

    def test_explain_ca_unreachable(self) -> None:
        """Connection errors, timeouts and bad CA certificates read 'CA unreachable'."""
        for error in (requests.exceptions.ConnectionError("Connection refused"),
                      requests.exceptions.ReadTimeout("read timed out"),
                      requests.exceptions.SSLError("certificate verify failed")):
            e = self.explain(error)
            self.assertEqual(e.kind, policy.FailureKind.CA_UNREACHABLE)
            self.assertTrue(e.text.startswith("CA unreachable"), e.text)
            self.assertIn(DIRECTORY, e.text)

    def test_explain_refused_and_unexpected(self) -> None:
        """Rejected names read 'refused', file errors name the file, the rest is 'unexpected'."""
        self.assertEqual(self.explain(_acme_error("rejectedIdentifier", "no")).kind,
                         policy.FailureKind.REFUSED)
        e = self.explain(PermissionError(13, "Permission denied", "/data/x.key"))
        self.assertEqual(e.text, "cannot write the certificate files /data/x.key: Permission "
                                 "denied; check the data folder's permissions and free space")
        e = self.explain(ZeroDivisionError("boom"))
        self.assertEqual(e.kind, policy.FailureKind.INTERNAL)
        self.assertIn("unexpected error", e.text)


class ConfigTests(SynchronousTestCase):
    """The letsencrypt section: renewDays and the checks added for ACME."""

    def test_renew_days_default(self) -> None:
        """renewDays defaults to 30 and can be set."""
        self.assertEqual(LetsEncrypt().renew_days, 30)
        config = parse_config({"letsencrypt": {"names": "a.example.com", "renewDays": 20}})
        assert config.letsencrypt is not None
        self.assertEqual(config.letsencrypt.renew_days, 20)

    def test_bad_values(self) -> None:
        """Out-of-range renewDays, wildcard or IP names and a plain-HTTP directory are errors."""
        with self.assertRaises(ConfigError) as cm:
            parse_config({"letsencrypt": {"renewDays": 0, "names": "*.example.com",
                                          "directory": "http://ca/dir"}})
        self.assertEqual(sorted(cm.exception.problems), [
            'letsencrypt.directory: expected an https:// URL of an ACME directory, '
            'got "http://ca/dir"',
            'letsencrypt.names: expected host names without wildcards (a wildcard needs a '
            'dns-01 challenge), got "*.example.com"',
            "letsencrypt.renewDays: expected 1 to 365 days, got 0",
        ])
        with self.assertRaises(ConfigError):
            parse_config({"letsencrypt": {"names": "a.example.com,10.0.0.1"}})


class ChallengeResourceTests(SynchronousTestCase):
    """ChallengeResource and with_acme_challenges answer exactly the registered tokens."""

    def render(self, resource: Resource, path: list[bytes]) -> tuple[int, bytes, DummyRequest]:
        request = DummyRequest(path)
        request.uri = b"/" + b"/".join(path)
        target = getChildForRequest(resource, request)
        body = target.render(request)
        return request.responseCode or 200, body, request

    def test_known_token(self) -> None:
        """A registered token gets its key authorization as text/plain."""
        challenges = ChallengeResource()
        challenges.add("tok-EN_1", "tok-EN_1.thumbprint")
        code, body, request = self.render(challenges, [b"tok-EN_1"])
        self.assertEqual((code, body), (200, b"tok-EN_1.thumbprint"))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"text/plain; charset=us-ascii"])

    def test_unknown_and_removed(self) -> None:
        """Unknown, removed, malformed and nested tokens are 404."""
        challenges = ChallengeResource()
        challenges.add("abc", "abc.x")
        challenges.remove("abc")
        for path in ([b"abc"], [b"nothing"], [b"a.b"], [b"abc", b"more"], [b""], [b"x" * 200]):
            self.assertEqual(self.render(challenges, path)[0], 404, path)
        self.assertRaises(ValueError, challenges.add, "../etc", "x")

    def test_wrapped_site_root(self) -> None:
        """Wrapped around the redirect, challenge paths are answered and the rest redirected."""
        challenges = ChallengeResource()
        challenges.add("tok", "tok.key")
        root = with_acme_challenges(RedirectResource(443, "mesh.example.com"), challenges)
        code, body, _ = self.render(root, [b".well-known", b"acme-challenge", b"tok"])
        self.assertEqual((code, body), (200, b"tok.key"))
        self.assertEqual(self.render(root, [b".well-known", b"acme-challenge", b"nope"])[0], 404)
        code, _, request = self.render(root, [b".well-known", b"other"])
        self.assertEqual(code, 301)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"location"),
                         [b"https://mesh.example.com/.well-known/other"])
        self.assertEqual(self.render(root, [b"login"])[0], 301)


class StorageTests(SynchronousTestCase):
    """Account key, state file, atomic install with backups, and crash recovery."""

    def setUp(self) -> None:
        self.datapath = self.mktemp()
        os.makedirs(self.datapath)

    def path(self, name: str) -> str:
        return os.path.join(self.datapath, name)

    def test_account_key_created_0600_and_reused(self) -> None:
        """The account key is created 0600 once, then read back; a loose mode is tightened."""
        key, note = storage.load_or_create_account_key(self.datapath)
        self.assertEqual(note, f"created the account key {self.path(storage.ACCOUNT_KEY_FILE)}")
        self.assertEqual(_mode(self.path(storage.ACCOUNT_KEY_FILE)), 0o600)
        self.assertIsNone(storage.load_or_create_account_key(self.datapath)[1])
        os.chmod(self.path(storage.ACCOUNT_KEY_FILE), 0o644)
        again, note = storage.load_or_create_account_key(self.datapath)
        self.assertEqual(again.private_numbers(), key.private_numbers())
        self.assertIn("was readable by others; made it 0600", note or "")
        self.assertEqual(_mode(self.path(storage.ACCOUNT_KEY_FILE)), 0o600)

    def test_state_round_trip(self) -> None:
        """acme-state.json round-trips; a corrupt one reads as empty."""
        state = storage.AcmeState(DIRECTORY, "https://ca.test/acct/1", "ab" * 48,
                                  ("a.example.com",), "2030-01-01T00:00:00+00:00")
        storage.write_state(self.datapath, state)
        self.assertEqual(storage.read_state(self.datapath), state)
        with open(self.path(storage.STATE_FILE), "w") as f:
            f.write("{not json")
        self.assertEqual(storage.read_state(self.datapath), storage.AcmeState())

    def test_install_with_backup(self) -> None:
        """The new pair (key 0600) replaces the old, kept as .bak; meshd.certs loads it."""
        certs.load_or_create(self.datapath, "mesh.example.com", fast=True)
        old_cert = open(self.path(storage.WEB_CERT_FILE), "rb").read()
        old_key = open(self.path(storage.WEB_KEY_FILE), "rb").read()
        with open(self.path("webserver-cert-chain1.crt"), "wb") as f:
            f.write(_ca("Old Intermediate")[0].public_bytes(serialization.Encoding.PEM))
        new = _acme_leaf(["mesh.example.com"], time.time() - DAY)
        saved = storage.install_web_certificate(self.datapath, new, backup=True)
        self.assertEqual(sorted(os.path.basename(p) for p in saved), [
            "webserver-cert-chain1.crt.bak", "webserver-cert-private.key.bak",
            "webserver-cert-public.crt.bak"])
        self.assertEqual(open(self.path("webserver-cert-public.crt.bak"), "rb").read(), old_cert)
        self.assertEqual(open(self.path("webserver-cert-private.key.bak"), "rb").read(), old_key)
        self.assertEqual(_mode(self.path("webserver-cert-private.key.bak")), 0o600)
        self.assertEqual(_mode(self.path(storage.WEB_KEY_FILE)), 0o600)
        self.assertFalse(os.path.exists(self.path("webserver-cert-chain1.crt")))
        self.assertEqual([n for n in os.listdir(self.datapath) if n.endswith((".new", ".tmp"))],
                         [])
        loaded = certs.load_or_create(self.datapath, "mesh.example.com", fast=True)
        self.assertEqual(loaded.web.sha384(), new.sha384())
        self.assertEqual(loaded.web.chain, new.chain)
        self.assertEqual(loaded.created, ())

    def test_install_without_backup(self) -> None:
        """Renewing an ACME certificate leaves an earlier backup alone."""
        _write_web_pair(self.datapath, _self_signed())
        storage.install_web_certificate(self.datapath, _acme_leaf(["a.example.com"], T0),
                                        backup=True)
        backup = open(self.path("webserver-cert-public.crt.bak"), "rb").read()
        storage.install_web_certificate(self.datapath, _acme_leaf(["a.example.com"], T0,
                                                                  key_index=2), backup=False)
        self.assertEqual(open(self.path("webserver-cert-public.crt.bak"), "rb").read(), backup)

    def write_new(self, pair: CertKey, *, key: bool, cert: bool) -> None:
        if key:
            storage.atomic_write(self.path(storage.WEB_KEY_FILE + ".new"), pair.key_pem(), 0o600)
        if cert:
            storage.atomic_write(self.path(storage.WEB_CERT_FILE + ".new"), pair.chain_pem(),
                                 0o644)

    def test_recover_nothing_to_do(self) -> None:
        """Without leftovers, complete_interrupted_swap does nothing."""
        _write_web_pair(self.datapath, _self_signed())
        self.assertIsNone(storage.complete_interrupted_swap(self.datapath))

    def test_recover_both_new_files(self) -> None:
        """A crash after both .new files were written installs the new pair."""
        old, new = _self_signed(), _acme_leaf(["a.example.com"], T0)
        _write_web_pair(self.datapath, old)
        self.write_new(new, key=True, cert=True)
        self.assertIn("installed", storage.complete_interrupted_swap(self.datapath) or "")
        self.assertEqual(certs.load_certificate_file(self.path(storage.WEB_CERT_FILE)).sha384(),
                         new.sha384())

    def test_recover_between_renames(self) -> None:
        """A crash between the key and certificate renames finishes the swap."""
        old, new = _self_signed(), _acme_leaf(["a.example.com"], T0)
        _write_web_pair(self.datapath, old)
        self.write_new(new, key=False, cert=True)
        storage.atomic_write(self.path(storage.WEB_KEY_FILE), new.key_pem(), 0o600)
        self.assertIn("finished", storage.complete_interrupted_swap(self.datapath) or "")
        self.assertEqual(certs.load_certificate_file(self.path(storage.WEB_CERT_FILE)).sha384(),
                         new.sha384())

    def test_recover_incomplete_new_files(self) -> None:
        """A crash while writing the .new files keeps the old pair and removes the leftovers."""
        old, new = _self_signed(), _acme_leaf(["a.example.com"], T0)
        _write_web_pair(self.datapath, old)
        self.write_new(new, key=True, cert=False)
        self.assertIn("removed", storage.complete_interrupted_swap(self.datapath) or "")
        self.assertFalse(os.path.exists(self.path(storage.WEB_KEY_FILE + ".new")))
        self.assertEqual(certs.load_certificate_file(self.path(storage.WEB_CERT_FILE)).sha384(),
                         old.sha384())


class CertinfoTests(SynchronousTestCase):
    """certinfo_lines describes the four certificates and the ACME state."""

    def test_describes_certificates(self) -> None:
        """Each certificate is listed with names, issuer, SHA-384, expiry; the agent's ServerID."""
        datapath = self.mktemp()
        made = certs.load_or_create(datapath, "mesh.example.com", fast=True)
        text = "\n".join(certinfo_lines(datapath))
        for label in ("web certificate:", "MPS certificate:", "agent certificate:",
                      "root certificate:"):
            self.assertIn(label, text)
        self.assertIn(f"SHA-384:  {made.web.sha384()}", text)
        self.assertIn(f"SHA-384:  {made.agent.sha384()}", text)
        self.assertIn(f"ServerID: {made.agent.public_key_sha384()}", text)
        self.assertIn("names:    mesh.example.com, localhost, 127.0.0.1", text)
        self.assertIn("2049-12-31", text)
        self.assertIn("(mode 0600)", text)
        self.assertIn(f"issuer:   {made.root.cert.subject.rfc4514_string()} (self-signed)", text)
        self.assertNotIn("ACME:", text)

    def test_acme_state_and_missing(self) -> None:
        """The ACME state is shown when present; missing certificates are reported."""
        datapath = self.mktemp()
        os.makedirs(datapath)
        new = _acme_leaf(["a.example.com"], T0)
        _write_web_pair(datapath, new)
        storage.write_state(datapath, storage.AcmeState(
            DIRECTORY, "https://ca.test/acct/1", new.sha384(), ("a.example.com",), "2030"))
        lines = certinfo_lines(datapath, now=datetime.datetime.fromtimestamp(
            T0 + DAY, datetime.timezone.utc))
        text = "\n".join(lines)
        self.assertIn("valid:    2030-03-17", text)
        self.assertIn("(89 days left)", text)
        self.assertIn("chain:    1 certificate(s) sent after it: CN=Fake ACME Intermediate",
                      text)
        self.assertIn("MPS certificate: missing", text)
        self.assertIn(f"directory: {DIRECTORY}", text)
        self.assertIn(f"certificate: SHA-384 {new.sha384()} for a.example.com", text)
        self.assertIn("(in use)", text)


@implementer(ICertificateIssuer)
class FakeIssuer:
    """A CA whose answers the test gives by hand."""

    def __init__(self) -> None:
        self.directory = DIRECTORY
        self.account_uri: Optional[str] = "https://ca.test/acct/1"
        self.calls: list[tuple[list[str], int]] = []
        self.pending: list[Deferred[CertKey]] = []
        self.cancelled = 0
        self.closed = False

    def issue(self, names: Sequence[str], key_bits: int) -> "Deferred[CertKey]":
        self.calls.append((list(names), key_bits))
        d: Deferred[CertKey] = Deferred(self._cancel)
        self.pending.append(d)
        return d

    def close(self) -> None:
        self.closed = True

    def _cancel(self, _: "Deferred[CertKey]") -> None:
        self.cancelled += 1

    def succeed(self, pair: CertKey) -> None:
        self.pending.pop(0).callback(pair)

    def fail(self, error: Exception) -> None:
        self.pending.pop(0).errback(Failure(error))


class ScheduleTests(SynchronousTestCase):
    """AcmeService's schedule on task.Clock with a fake CA: start, daily, renewal, back-off."""

    def setUp(self) -> None:
        self.datapath = self.mktemp()
        os.makedirs(self.datapath)
        self.clock = Clock()
        self.clock.advance(T0)
        self.issuer = FakeIssuer()
        self.announced: list[CertKey] = []
        self.original = _self_signed()
        _write_web_pair(self.datapath, self.original)
        assert self.original.key is not None
        self.web = web_context_factory(self.original.cert, self.original.key,
                                       self.original.chain)
        self.challenges = ChallengeResource()
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def service(self, names: str = "mesh.example.com", **kwargs: Any) -> AcmeService:
        service = AcmeService(LetsEncrypt(email="admin@example.com", names=names,
                                          directory=DIRECTORY, rsa_key_size=2048, **kwargs),
                              self.datapath, self.web, self.challenges, self.clock,
                              self.announced.append, issuer=self.issuer, run_blocking=_sync,
                              http_port=80)
        service.startService()
        self.addCleanup(self._stop, service)
        return service

    def _stop(self, service: AcmeService) -> None:
        if service.running:
            service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def delay(self, service: AcmeService) -> float:
        assert service.next_check_at is not None
        return service.next_check_at - self.clock.seconds()

    def test_fake_issuer_provides_interface(self) -> None:
        """The fake and the real issuer both provide ICertificateIssuer."""
        verifyObject(ICertificateIssuer, self.issuer)
        verifyObject(ICertificateIssuer, AcmeIssuer(DIRECTORY, "", self.datapath,
                                                    self.challenges, _sync, self.clock))

    def test_orders_at_start_replacing_self_signed(self) -> None:
        """At start the self-signed certificate is replaced: written, swapped, announced."""
        service = self.service()
        self.assertEqual(self.issuer.calls, [])  # the first check waits for the reactor
        self.clock.advance(0)
        self.assertEqual(self.issuer.calls, [(["mesh.example.com"], 2048)])
        new = _acme_leaf(["mesh.example.com"], T0)
        self.issuer.succeed(new)
        self.assertEqual(self.web.certificate, new.cert)
        self.assertEqual([c.sha384() for c in self.announced], [new.sha384()])
        on_disk = certs.load_certificate_file(os.path.join(self.datapath,
                                                           storage.WEB_CERT_FILE))
        self.assertEqual((on_disk.sha384(), on_disk.chain), (new.sha384(), new.chain))
        state = storage.read_state(self.datapath)
        self.assertEqual((state.certificate_sha384, state.directory, state.account_uri),
                         (new.sha384(), DIRECTORY, "https://ca.test/acct/1"))
        backup = certs.load_certificate_file(os.path.join(self.datapath,
                                                          "webserver-cert-public.crt.bak"))
        self.assertEqual(backup.sha384(), self.original.sha384())
        self.assertEqual(self.delay(service), DAY)
        text = "\n".join(_messages(self.events))
        self.assertIn("ordering a web certificate for mesh.example.com from "
                      "https://ca.test/directory: the web certificate in use was not issued "
                      "through ACME", text)
        self.assertIn(f"new web certificate for mesh.example.com installed: SHA-384 "
                      f"{new.sha384()}", text)

    def start_with_acme_certificate(self, issued: float, **kwargs: Any) -> AcmeService:
        service = self.service(**kwargs)
        self.clock.advance(0)
        self.issuer.succeed(_acme_leaf(["mesh.example.com"], issued))
        self.announced.clear()
        return service

    def test_daily_checks_then_renewal(self) -> None:
        """A valid certificate is checked daily and renewed 30 days before it expires."""
        service = self.start_with_acme_certificate(T0)
        for day in range(1, 60):
            self.clock.advance(DAY)
            self.assertEqual(len(self.issuer.calls), 1, f"ordered on day {day}")
            self.assertEqual(self.delay(service), DAY)
        self.clock.advance(DAY)  # day 60: 30 days left
        self.assertEqual(len(self.issuer.calls), 2)
        renewed = _acme_leaf(["mesh.example.com"], self.clock.seconds(), key_index=2)
        self.issuer.succeed(renewed)
        self.assertEqual(self.web.certificate, renewed.cert)
        self.assertEqual([c.sha384() for c in self.announced], [renewed.sha384()])
        backup = certs.load_certificate_file(os.path.join(self.datapath,
                                                          "webserver-cert-public.crt.bak"))
        self.assertEqual(backup.sha384(), self.original.sha384(), "renewal kept the backup")
        self.assertIn("inside its renewal window", "\n".join(_messages(self.events)))

    def test_check_at_the_due_time(self) -> None:
        """When renewal is due before the next daily check, the check is set for that moment."""
        service = self.start_with_acme_certificate(T0)
        self.clock.advance(59.5 * DAY)
        self.assertEqual(len(self.issuer.calls), 1)
        self.assertEqual(self.delay(service), 0.5 * DAY)

    def test_back_off_on_failures(self) -> None:
        """Failures are logged in plain words and retried after 5, 10, 20 ... minutes, capped."""
        service = self.service()
        self.clock.advance(0)
        delays = []
        for _ in range(10):
            self.issuer.fail(policy.ChallengeFailed(
                "mesh.example.com", _acme_error("connection", REFUSED_DETAIL)))
            delays.append(self.delay(service))
            self.clock.advance(self.delay(service))
        self.assertEqual(delays, [300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 76800, DAY])
        self.assertEqual(len(self.issuer.calls), 11)
        self.assertEqual(service.failures, 10)
        warnings = [m for m in _messages(self.events) if "could not get" in m]
        self.assertEqual(warnings[0],
                         "ACME: could not get a web certificate for mesh.example.com: challenge "
                         "unreachable: the CA could not fetch http://mesh.example.com/.well-known"
                         "/acme-challenge/... from this server; check that port 80 is open to "
                         f"the internet and forwarded to meshd ({REFUSED_DETAIL}); attempt 1 "
                         "failed, next try in 5 minutes")
        self.assertEqual(self.web.certificate, self.original.cert)
        self.assertEqual(self.challenges.tokens(), [])

    def test_success_resets_back_off(self) -> None:
        """After a success the next check is a day away and the failure count is zero."""
        service = self.service()
        self.clock.advance(0)
        self.issuer.fail(_acme_error("rateLimited", "too many new orders recently"))
        self.assertEqual(self.delay(service), 3600)
        self.assertIn("rate limited", service.last_error.text if service.last_error else "")
        self.clock.advance(3600)
        self.issuer.succeed(_acme_leaf(["mesh.example.com"], self.clock.seconds()))
        self.assertEqual((service.failures, service.last_error), (0, None))
        self.assertEqual(self.delay(service), DAY)

    def test_unexpected_error_is_logged_and_retried(self) -> None:
        """An unexpected exception is logged with its traceback and retried; nothing raises."""
        service = self.service()
        self.clock.advance(0)
        self.issuer.fail(ZeroDivisionError("bug"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(service.running)
        self.assertEqual(self.delay(service), 300)
        self.assertIn("unexpected error: ZeroDivisionError('bug')",
                      "\n".join(_messages(self.events)))

    def test_callback_failure_is_contained(self) -> None:
        """A failing on_new_certificate is logged; the certificate is still in use."""
        def broken(_: CertKey) -> None:
            raise RuntimeError("callback bug")
        self.announced = []
        service = AcmeService(LetsEncrypt(names="mesh.example.com", directory=DIRECTORY),
                              self.datapath, self.web, self.challenges, self.clock, broken,
                              issuer=self.issuer, run_blocking=_sync)
        service.startService()
        self.addCleanup(self._stop, service)
        self.clock.advance(0)
        new = _acme_leaf(["mesh.example.com"], T0)
        self.issuer.succeed(new)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.web.certificate, new.cert)
        self.assertEqual(self.delay(service), DAY)

    def test_check_joins_order_in_progress(self) -> None:
        """check() during an order waits for it instead of ordering twice."""
        service = self.service()
        self.clock.advance(0)
        waited = service.check()
        self.assertFalse(waited.called)
        self.assertEqual(len(self.issuer.calls), 1)
        self.issuer.succeed(_acme_leaf(["mesh.example.com"], T0))
        self.assertTrue(waited.called)

    def test_stop_abandons_order_and_timer(self) -> None:
        """Stopping cancels the order in progress and leaves no timer behind."""
        service = self.service()
        self.clock.advance(0)
        stopped = service.stopService()
        self.assertTrue(stopped.called)
        self.assertEqual(self.issuer.cancelled, 1)
        self.assertTrue(self.issuer.pending[0].called)
        self.assertTrue(self.issuer.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_names_added_order_again(self) -> None:
        """Adding a name to letsencrypt.names orders a certificate that covers it."""
        self.start_with_acme_certificate(T0).stopService()
        self.service(names="mesh.example.com, www.example.com")
        self.clock.advance(0)
        self.assertEqual(self.issuer.calls[-1], (["mesh.example.com", "www.example.com"], 2048))
        self.assertIn("does not cover www.example.com", "\n".join(_messages(self.events)))

    def test_no_names(self) -> None:
        """Without names nothing is ordered and the reason is logged."""
        service = self.service(names="")
        self.clock.advance(0)
        self.assertEqual(self.issuer.calls, [])
        self.assertIsNone(service.next_check_at)
        self.assertIn("letsencrypt.names is empty", "\n".join(_messages(self.events)))


# -- against Pebble --------------------------------------------------------------------------


class Hello(Resource):
    """Every path: 200 "hello"."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class TrackingSite(Site):
    """A Site that can wait for all of its connections to be closed (clean reactor)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.open_connections: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        lost: Deferred[None] = Deferred()
        self.open_connections.append(lost)
        original = protocol.connectionLost

        def connectionLost(reason: Failure) -> None:
            original(reason)
            lost.callback(None)

        protocol.connectionLost = connectionLost
        return protocol

    def all_closed(self) -> "Deferred[Any]":
        return defer.gatherResults(self.open_connections)


class TLSProbe(Protocol):
    """A TLS client on a kept-alive HTTP/1.1 connection that reports the server certificate."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: Optional[Deferred[bytes]] = None
        self.closed: Deferred[None] = Deferred()

    def request(self) -> "Deferred[bytes]":
        assert self.transport is not None
        self.buffer = b""
        self.waiting = Deferred()
        self.transport.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return self.waiting

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.endswith(b"hello") and self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.callback(self.buffer)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.errback(reason)
        self.closed.callback(None)

    def peer_chain(self) -> list[x509.Certificate]:
        connection: SSL.Connection = self.transport.getHandle()  # type: ignore[union-attr]
        return [c.to_cryptography() for c in connection.get_peer_cert_chain() or []]

    def peer_sha384(self) -> str:
        return policy.certificate_sha384(self.peer_chain()[0])


class PebbleTests(TestCase):
    """The whole renewer against a real ACME server (Pebble) and a real TLS listener."""

    timeout = 60

    def setUp(self) -> None:
        binary = require_pebble(self)
        self.datapath = os.path.abspath(self.mktemp())
        self.made = certs.load_or_create(self.datapath, "localhost", fast=True)
        web = self.made.web
        assert web.key is not None
        self.web = web_context_factory(web.cert, web.key, web.chain)
        self.probes: list[TLSProbe] = []
        self.https_site = TrackingSite(Hello())
        self.http: Any = None
        self.addCleanup(self.clean_up)
        self.https = global_reactor.listenSSL(0, self.https_site, self.web,
                                              interface="127.0.0.1")
        self.challenges = ChallengeResource()
        self.http_site = TrackingSite(with_acme_challenges(
            RedirectResource(self.https.getHost().port, "localhost"), self.challenges))
        self.http = global_reactor.listenTCP(0, self.http_site, interface="127.0.0.1")
        self.http_port = self.http.getHost().port
        self.pebble = Pebble(os.path.join(os.path.dirname(self.datapath), "pebble"),
                             self.http_port, binary=binary).start()
        self.offset = 0.0
        self.announced: list[CertKey] = []
        self.announce_waiters: list[Deferred[None]] = []
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.acme = AcmeService(
            LetsEncrypt(email="admin@example.com", names="localhost", rsa_key_size=2048,
                        directory=self.pebble.directory_url),
            self.datapath, self.web, self.challenges, global_reactor, self.announce,
            http_port=self.http_port, ca_bundle=self.pebble.ca_file, poll_interval=0.1,
            now=lambda: time.time() + self.offset)

    def announce(self, new: CertKey) -> None:
        self.announced.append(new)
        waiters, self.announce_waiters = self.announce_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def clean_up(self) -> None:
        """Stop the service, the TLS clients, Pebble, then the listeners once their
        connections are gone (whatever part of setUp ran)."""
        acme: Optional[AcmeService] = getattr(self, "acme", None)
        if acme is not None and acme.running:
            await acme.stopService()
        for probe in self.probes:
            if probe.transport is not None:
                probe.transport.loseConnection()
            await probe.closed
        pebble: Optional[Pebble] = getattr(self, "pebble", None)
        if pebble is not None:
            pebble.stop()
        for site in (getattr(self, "http_site", None), self.https_site):
            if site is not None:
                await site.all_closed()
        if self.http is not None:
            await self.http.stopListening()
        await self.https.stopListening()

    async def probe(self) -> TLSProbe:
        endpoint = SSL4ClientEndpoint(global_reactor, "127.0.0.1", self.https.getHost().port,
                                      CertificateOptions(verify=False))
        probe = await connectProtocol(endpoint, TLSProbe())
        self.probes.append(probe)
        await probe.request()
        return probe

    def acme_messages(self) -> list[str]:
        return _messages(self.events)

    async def test_first_issuance_is_hot_swapped(self) -> None:
        """New TLS clients and the disk get the first certificate; open connections keep theirs."""
        old_sha = self.made.web.sha384()
        before = await self.probe()
        self.assertEqual(before.peer_sha384(), old_sha)

        self.acme.startService()
        await self.acme.check()

        self.assertEqual(len(self.announced), 1, "\n".join(self.acme_messages()))
        new = self.announced[0]
        after = await self.probe()
        self.assertEqual(after.peer_sha384(), new.sha384())
        chain = after.peer_chain()
        self.assertIn("Pebble Intermediate CA", chain[0].issuer.rfc4514_string())
        self.assertEqual(policy.certificate_names(chain[0]), ["localhost"])
        chain[0].verify_directly_issued_by(chain[1])  # the intermediate is sent too
        root = x509.load_pem_x509_certificate(self.pebble.root_pem())
        chain[-1].verify_directly_issued_by(root)
        # The connection opened before the swap is still up, still on the old certificate.
        await before.request()
        self.assertEqual(before.peer_sha384(), old_sha)

        # On disk: what a restart loads; keys 0600; the self-signed pair kept as .bak.
        restarted = certs.load_or_create(self.datapath, "localhost", fast=True)
        self.assertEqual(restarted.web.sha384(), new.sha384())
        self.assertEqual(restarted.agent.sha384(), self.made.agent.sha384())
        for name in (storage.WEB_KEY_FILE, storage.ACCOUNT_KEY_FILE,
                     "webserver-cert-private.key.bak"):
            self.assertEqual(_mode(os.path.join(self.datapath, name)), 0o600, name)
        backup = certs.load_certificate_file(os.path.join(self.datapath,
                                                          "webserver-cert-public.crt.bak"))
        self.assertEqual(backup.sha384(), old_sha)
        with open(os.path.join(self.datapath, storage.STATE_FILE)) as f:
            state = json.load(f)
        self.assertEqual(state["directory"], self.pebble.directory_url)
        self.assertIn("/my-account/", state["account"])
        self.assertEqual(self.challenges.tokens(), [])
        self.assertIsNotNone(self.acme.next_check_at)

    async def test_renewal_inside_window(self) -> None:
        """A check outside the window orders nothing; inside it a new certificate is served."""
        self.acme.startService()
        await self.acme.check()
        first = self.announced[0]
        await self.acme.check()
        self.assertEqual(len(self.announced), 1)
        self.assertTrue(any("is valid until" in m for m in self.acme_messages()))

        # Move the service's wall clock to 10 days before expiry.
        self.offset = first.cert.not_valid_after_utc.timestamp() - time.time() - 10 * DAY
        await self.acme.check()
        self.assertEqual(len(self.announced), 2, "\n".join(self.acme_messages()))
        renewed = self.announced[1]
        self.assertNotEqual(renewed.cert.serial_number, first.cert.serial_number)
        self.assertEqual((await self.probe()).peer_sha384(), renewed.sha384())
        self.assertTrue(any("inside its renewal window" in m for m in self.acme_messages()))
        backup = certs.load_certificate_file(os.path.join(self.datapath,
                                                          "webserver-cert-public.crt.bak"))
        self.assertEqual(backup.sha384(), self.made.web.sha384())

    async def test_unreachable_challenge_is_retried(self) -> None:
        """A closed HTTP port reads 'challenge unreachable' and is retried with back-off."""
        await self.http.stopListening()
        self.acme.retry_initial = 0.3
        self.acme.startService()
        while self.acme.failures < 2:
            await deferLater(global_reactor, 0.05)
        failures = [m for m in self.acme_messages() if "could not get" in m]
        self.assertEqual(len(failures), 2, failures)
        self.assertIn("challenge unreachable", failures[0])
        self.assertIn(f"port {self.http_port}", failures[0])
        self.assertIn("connection refused", failures[0])
        self.assertTrue(failures[0].endswith("attempt 1 failed, next try in 0.3 s"), failures[0])
        self.assertTrue(failures[1].endswith("attempt 2 failed, next try in 0.6 s"), failures[1])
        self.assertEqual(self.web.certificate, self.made.web.cert)

        self.http = global_reactor.listenTCP(self.http_port, self.http_site,
                                             interface="127.0.0.1")
        issued: Deferred[None] = Deferred()
        self.announce_waiters.append(issued)
        await issued
        self.assertEqual((await self.probe()).peer_sha384(), self.announced[0].sha384())
        self.assertEqual(self.acme.failures, 0)


class CaUnreachableTests(TestCase):
    """A CA that cannot be reached is reported as such, on a real thread, and retried."""

    async def test_ca_unreachable(self) -> None:
        """A closed directory port reads 'CA unreachable' and schedules a retry."""
        from tests.server import free_port

        datapath = self.mktemp()
        made = certs.load_or_create(datapath, "localhost", fast=True)
        assert made.web.key is not None
        web = web_context_factory(made.web.cert, made.web.key)
        directory = f"https://127.0.0.1:{free_port()}/dir"
        service = AcmeService(LetsEncrypt(names="localhost", directory=directory), datapath,
                              web, ChallengeResource(), global_reactor)
        with capturedLogs() as events:
            service.startService()
            try:
                await service.check()
            finally:
                await service.stopService()
        failures = [m for m in _messages(events) if "could not get" in m]
        self.assertEqual(len(failures), 1, _messages(events))
        self.assertIn(f"CA unreachable: cannot connect to {directory}", failures[0])
        self.assertTrue(failures[0].endswith("next try in 5 minutes"), failures[0])
        self.assertEqual(web.certificate, made.web.cert)
