"""Tests for meshd.certs: the server certificates in the data folder."""

from __future__ import annotations

import atexit
import hashlib
import ipaddress
import os
import shutil
import stat
import tempfile
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from meshd import certs
from meshd.certs import CertificateError, load_certificate_file, load_or_create

FILES = {
    "root": ("root-cert-public.crt", "root-cert-private.key"),
    "web": ("webserver-cert-public.crt", "webserver-cert-private.key"),
    "mps": ("mpsserver-cert-public.crt", "mpsserver-cert-private.key"),
    "agent": ("agentserver-cert-public.crt", "agentserver-cert-private.key"),
}
ALL_FILES = sorted(name for pair in FILES.values() for name in pair)
NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)

# -- shared, lazily built fixtures (RSA generation is the slow part) ------------------------

_cache: dict[str, Any] = {}


def _scratch_dir() -> str:
    path = tempfile.mkdtemp(prefix="meshd-test-certs-")
    atexit.register(shutil.rmtree, path, True)
    return path


def strong_set() -> certs.ServerCertificates:
    """The default (RSA-3072) set, generated once for the whole module."""
    if "strong" not in _cache:
        _cache["strong"] = load_or_create(os.path.join(_scratch_dir(), "data"), "example.com",
                                          now=NOW)
    result: certs.ServerCertificates = _cache["strong"]
    return result


def first_run() -> tuple[str, certs.ServerCertificates, list[str]]:
    """A first start in a missing folder (fast=True, "example.com"), made once: the folder,
    the result and the log messages. Tests must not modify this folder; they copy it."""
    if "first" not in _cache:
        path = os.path.join(_scratch_dir(), "nested", "data")
        events: list[dict[str, Any]] = []
        saved = certs._log
        certs._log = Logger(namespace="meshd.certs", observer=cast(ILogObserver, events.append))
        try:
            result = load_or_create(path, "example.com", fast=True, now=NOW)
        finally:
            certs._log = saved
        _cache["first"] = (path, result, [formatEvent(event) for event in events])
    first: tuple[str, certs.ServerCertificates, list[str]] = _cache["first"]
    return first


def fast_template() -> str:
    """The data folder of first_run(), which tests copy."""
    return first_run()[0]


def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """An RSA-2048 key, generated once per name for the whole module."""
    keys: dict[str, rsa.RSAPrivateKey] = _cache.setdefault("keys", {})
    if name not in keys:
        keys[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return keys[name]


def make_cert(
    cn: str,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
    *,
    ca: bool = False,
    extra: list[x509.ExtensionType] | None = None,
) -> x509.Certificate:
    """A certificate built directly with cryptography (not with meshd.certs)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, signing_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2018, 1, 1))
        .not_valid_after(datetime(2049, 12, 31))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=False)
    )
    for extension in extra or []:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signing_key, hashes.SHA384())


def pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as traditional PEM, like node-forge writes it."""
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def crlf(data: bytes) -> bytes:
    """node-forge writes PEM with CRLF line ends."""
    return data.replace(b"\n", b"\r\n")


def pkcs1_sha384(cert: x509.Certificate) -> str:
    """The ServerID, computed independently of meshd.certs."""
    public_key = cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.sha384(der).hexdigest().upper()


def snapshot(path: str) -> dict[str, tuple[bytes, int, int]]:
    """Bytes, mtime (ns) and mode of every file in a folder."""
    result = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        with open(full, "rb") as f:
            data = f.read()
        st = os.stat(full)
        result[name] = (data, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return result


def key_bits(cert: x509.Certificate) -> int:
    """The RSA key size of a certificate."""
    public_key = cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    return public_key.key_size


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check the signature with the issuer's public key (raises InvalidSignature)."""
    public_key = issuer.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert cert.signature_hash_algorithm is not None
    public_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                      cert.signature_hash_algorithm)


class _Base(SynchronousTestCase):
    """Common helpers: a per-test data folder and captured log events."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        self.patch(certs, "_log", Logger(namespace="meshd.certs", observer=observer))

    def copied_folder(self) -> str:
        """A copy of the fast template folder (modes and mtimes preserved)."""
        path = os.path.join(self.mktemp(), "data")
        shutil.copytree(fast_template(), path)
        return path

    def messages(self) -> list[str]:
        """The formatted log messages captured so far."""
        return [formatEvent(event) for event in self.events]

    def assertCertificateError(self, fragment: str, *args: Any, **kwargs: Any) -> str:
        """load_or_create(*args, **kwargs) raises CertificateError mentioning ``fragment``."""
        error = self.assertRaises(CertificateError, load_or_create, *args, **kwargs)
        message = str(error)
        self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message


class KeySizeTests(_Base):
    """Key sizes for the default and the fast sets."""

    def test_default_key_sizes(self) -> None:
        """By default root, web and agent are RSA-3072 and the MPS certificate RSA-2048."""
        result = strong_set()
        self.assertEqual(key_bits(result.root.cert), 3072)
        self.assertEqual(key_bits(result.web.cert), 3072)
        self.assertEqual(key_bits(result.agent.cert), 3072)
        self.assertEqual(key_bits(result.mps.cert), 2048)
        for pair in (result.root, result.web, result.mps, result.agent):
            assert pair.key is not None
            self.assertEqual(pair.key.key_size, key_bits(pair.cert))

    def test_default_set_signed_sha384(self) -> None:
        """Every certificate of the default set is signed with SHA-384."""
        result = strong_set()
        for pair in (result.root, result.web, result.mps, result.agent):
            self.assertIsInstance(pair.cert.signature_hash_algorithm, hashes.SHA384)

    def test_fast_key_sizes(self) -> None:
        """With fast=True every key is RSA-2048."""
        result = first_run()[1]
        for pair in (result.root, result.web, result.mps, result.agent):
            self.assertEqual(key_bits(pair.cert), 2048)


class CreationTests(_Base):
    """A first start in an empty folder."""

    def setUp(self) -> None:
        super().setUp()
        self.path, self.result, self.first_messages = first_run()

    def test_created_reports_all(self) -> None:
        """All four pairs are reported created, in a stable order, and logged."""
        self.assertEqual(self.result.created, ("root", "web", "mps", "agent"))
        self.assertEqual(sum("created the" in m for m in self.first_messages), 4)

    def test_files_written_with_meshcentral_names(self) -> None:
        """Exactly MeshCentral's eight file names are written, and no temporary file is left."""
        self.assertEqual(sorted(os.listdir(self.path)), ALL_FILES)

    def test_folder_created_0700(self) -> None:
        """A missing data folder is created with mode 0700."""
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o700)

    def test_file_modes(self) -> None:
        """Private keys are 0600 and certificates 0644."""
        for cert_name, key_name in FILES.values():
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.path, key_name)).st_mode),
                             0o600)
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.path, cert_name)).st_mode),
                             0o644)

    def test_files_hold_returned_objects(self) -> None:
        """The files hold exactly the returned certificates, keys as PKCS#1 "RSA PRIVATE KEY"."""
        for kind, (cert_name, key_name) in FILES.items():
            pair = getattr(self.result, kind)
            with open(os.path.join(self.path, cert_name), "rb") as f:
                self.assertEqual(f.read(), pair.cert_pem())
            with open(os.path.join(self.path, key_name), "rb") as f:
                data = f.read()
            self.assertEqual(data, pair.key_pem())
            self.assertTrue(data.startswith(b"-----BEGIN RSA PRIVATE KEY-----\n"))

    def test_root_certificate(self) -> None:
        """The root is a self-signed CA named MeshCentralRoot-xxxxxx with keyCertSign/cRLSign."""
        root = self.result.root.cert
        self.assertEqual(root.subject, root.issuer)
        verify_signed_by(root, root)
        constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.value.ca)
        self.assertTrue(constraints.critical)
        usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.key_cert_sign)
        self.assertTrue(usage.crl_sign)
        self.assertEqual(root.not_valid_before_utc, datetime(2018, 1, 1, tzinfo=timezone.utc))
        self.assertEqual(root.not_valid_after_utc, datetime(2049, 12, 31, tzinfo=timezone.utc))

    def test_generated_names_follow_meshcentral(self) -> None:
        """Root and agent CNs end with node-forge's default fingerprint (SHA-1 of PKCS#1), 6 hex."""
        for pair, prefix in ((self.result.root, "MeshCentralRoot-"),
                             (self.result.agent, "MeshCentralAgentServer-")):
            public_key = pair.cert.public_key()
            assert isinstance(public_key, rsa.RSAPublicKey)
            der = public_key.public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.PKCS1)
            cn = pair.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            self.assertEqual(cn, prefix + hashlib.sha1(der).hexdigest()[:6])

    def test_leaves_issued_by_root(self) -> None:
        """Web, MPS and agent certificates are issued and signed (SHA-384) by the root."""
        root = self.result.root.cert
        for pair in (self.result.web, self.result.mps, self.result.agent):
            self.assertEqual(pair.cert.issuer, root.subject)
            verify_signed_by(pair.cert, root)
            pair.cert.verify_directly_issued_by(root)
            self.assertIsInstance(pair.cert.signature_hash_algorithm, hashes.SHA384)
            self.assertFalse(
                pair.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)

    def test_web_san_for_dns_name(self) -> None:
        """A DNS name gives DNS SANs for the name and localhost, and IP 127.0.0.1 only."""
        san = self.result.web.cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["example.com", "localhost"])
        self.assertEqual(san.get_values_for_type(x509.IPAddress),
                         [ipaddress.ip_address("127.0.0.1")])
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        self.assertIn("http://example.com/", uris)
        cn = self.result.web.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.assertEqual(cn, "example.com")

    def test_eku(self) -> None:
        """Web and MPS certificates carry serverAuth; the agent certificate has no EKU."""
        for pair in (self.result.web, self.result.mps):
            eku = pair.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            self.assertIn(ExtendedKeyUsageOID.SERVER_AUTH, list(eku))
        self.assertRaises(x509.ExtensionNotFound,
                          self.result.agent.cert.extensions.get_extension_for_class,
                          x509.ExtendedKeyUsage)

    def test_mps_defaults_to_cert_name(self) -> None:
        """Without mps_name the MPS certificate is for cert_name, with localhost SANs."""
        cert = self.result.mps.cert
        self.assertEqual(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
                         "example.com")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["example.com", "localhost"])
        self.assertEqual(san.get_values_for_type(x509.IPAddress),
                         [ipaddress.ip_address("127.0.0.1")])

    def test_hashes(self) -> None:
        """sha384() hashes the DER (lower hex); public_key_sha384() is the upper-hex ServerID."""
        agent = self.result.agent
        der = agent.cert.public_bytes(serialization.Encoding.DER)
        self.assertEqual(agent.sha384(), hashlib.sha384(der).hexdigest())
        self.assertEqual(agent.public_key_sha384(), pkcs1_sha384(agent.cert))

    def test_reuse_unchanged(self) -> None:
        """A restart reuses every file: no byte, mtime or mode changes and nothing created."""
        path = self.copied_folder()  # copytree keeps bytes, mtimes and modes
        before = snapshot(path)
        self.assertEqual(before, snapshot(self.path))
        again = load_or_create(path, "example.com", fast=True, now=NOW)
        self.assertEqual(again.created, ())
        self.assertEqual(snapshot(path), before)
        for kind in FILES:
            self.assertEqual(getattr(again, kind).cert, getattr(self.result, kind).cert)
        self.assertEqual(again.agent.public_key_sha384(), self.result.agent.public_key_sha384())
        self.assertEqual(self.messages(), [])  # no warning, no "created" line


class NameTests(_Base):
    """SANs and names chosen from the arguments."""

    def test_web_san_for_ip(self) -> None:
        """An IP name gives both an IP and a DNS entry for it, plus the localhost ones."""
        path = os.path.join(self.mktemp(), "data")
        result = load_or_create(path, "192.0.2.7", fast=True)
        san = result.web.cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.IPAddress),
                         [ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("127.0.0.1")])
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["192.0.2.7", "localhost"])

    def test_explicit_mps_name(self) -> None:
        """mps_name sets the MPS certificate's CN and SAN; the web certificate keeps cert_name."""
        path = os.path.join(self.mktemp(), "data")
        result = load_or_create(path, "example.com", mps_name="amt.example.net", fast=True)
        self.assertEqual(
            result.mps.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            "amt.example.net")
        san = result.mps.cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        self.assertIn("amt.example.net", san.get_values_for_type(x509.DNSName))
        self.assertEqual(key_bits(result.mps.cert), 2048)

    def test_changed_name_warns_but_keeps(self) -> None:
        """A restart under another name keeps the web/MPS certificates and logs warnings."""
        path = self.copied_folder()
        before = snapshot(path)
        result = load_or_create(path, "other.example.org")
        self.assertEqual(result.created, ())
        self.assertEqual(snapshot(path), before)
        messages = self.messages()
        self.assertTrue(any("webserver-cert-public.crt" in m and "other.example.org" in m
                            for m in messages), messages)
        self.assertTrue(any("mpsserver-cert-public.crt" in m and "other.example.org" in m
                            for m in messages), messages)

    def test_empty_name_rejected(self) -> None:
        """An empty cert_name is an error."""
        self.assertCertificateError("must not be empty", os.path.join(self.mktemp(), "d"), "")

    def test_overlong_name_rejected_before_writing(self) -> None:
        """A name too long for a CN is an error raised before any file is written."""
        path = os.path.join(self.mktemp(), "d")
        self.assertCertificateError("a" * 70, path, "a" * 70 + ".example.com", fast=True)
        self.assertEqual(os.listdir(path), [])

    def test_expired_certificate_warns(self) -> None:
        """A certificate past its end date is used but logged as expired."""
        result = load_or_create(self.copied_folder(), "example.com",
                                now=datetime(2050, 6, 1, tzinfo=timezone.utc))
        self.assertEqual(result.created, ())
        self.assertEqual(sum("expired" in m for m in self.messages()), 4)


class MeshCentralFolderTests(_Base):
    """A data folder written by MeshCentral (built here with cryptography directly)."""

    def setUp(self) -> None:
        super().setUp()
        self.path = self.mktemp()
        os.mkdir(self.path)
        root_key = rsa_key("mc-root")
        self.root = make_cert("MeshCentralRoot-abcdef", root_key, ca=True,
                              extra=[x509.KeyUsage(False, False, False, False, False, True,
                                                   False, False, False)])
        issuer = (self.root, root_key)
        server_eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
        # MeshCentral's agent certificate has an empty extKeyUsage SEQUENCE.
        empty_eku = x509.UnrecognizedExtension(ExtensionOID.EXTENDED_KEY_USAGE, b"\x30\x00")
        keys = {kind: rsa_key("mc-" + kind) for kind in ("web", "mps", "agent")}
        self.certs = {
            "root": self.root,
            "web": make_cert("mc.example.com", keys["web"], issuer, extra=[server_eku]),
            "mps": make_cert("mc.example.com", keys["mps"], issuer, extra=[server_eku]),
            "agent": make_cert("MeshCentralAgentServer-123456", keys["agent"], issuer,
                               extra=[empty_eku]),
        }
        keys["root"] = root_key
        for kind, (cert_name, key_name) in FILES.items():
            self.write(cert_name, crlf(pem(self.certs[kind])), 0o644)
            self.write(key_name, crlf(key_pem(keys[kind])), 0o600)
        # MeshCentral also keeps a code signing pair, which meshd does not use.
        self.write("codesign-cert-public.crt", crlf(pem(self.certs["agent"])), 0o644)
        self.write("codesign-cert-private.key", crlf(key_pem(keys["agent"])), 0o600)

    def write(self, name: str, data: bytes, mode: int) -> None:
        """Write a file into the MeshCentral folder."""
        full = os.path.join(self.path, name)
        with open(full, "wb") as f:
            f.write(data)
        os.chmod(full, mode)

    def test_used_as_is(self) -> None:
        """All four certificates are used unchanged and nothing is created or rewritten."""
        before = snapshot(self.path)
        result = load_or_create(self.path, "mc.example.com", allow_new_agent_cert=False)
        self.assertEqual(result.created, ())
        self.assertEqual(snapshot(self.path), before)
        for kind, cert in self.certs.items():
            self.assertEqual(getattr(result, kind).cert, cert)
        self.assertEqual(self.messages(), [])

    def test_same_server_id(self) -> None:
        """The agent certificate's ServerID is the one MeshCentral agents already know."""
        result = load_or_create(self.path, "mc.example.com")
        self.assertEqual(result.agent.public_key_sha384(), pkcs1_sha384(self.certs["agent"]))
        self.assertEqual(len(result.agent.public_key_sha384()), 96)

    def test_missing_leaf_issued_by_existing_root(self) -> None:
        """Only a missing MPS pair is created, issued by MeshCentral's existing root."""
        for name in FILES["mps"]:
            os.unlink(os.path.join(self.path, name))
        result = load_or_create(self.path, "mc.example.com", fast=True)
        self.assertEqual(result.created, ("mps",))
        self.assertEqual(result.mps.cert.issuer, self.root.subject)
        verify_signed_by(result.mps.cert, self.root)
        self.assertEqual(result.agent.cert, self.certs["agent"])

    def test_root_key_absent_is_fine(self) -> None:
        """Without the root key but with every leaf, the certificates load and root.key is None."""
        os.unlink(os.path.join(self.path, FILES["root"][1]))
        result = load_or_create(self.path, "mc.example.com")
        self.assertIsNone(result.root.key)
        self.assertEqual(result.root.cert, self.root)
        self.assertEqual(result.created, ())

    def test_root_key_absent_but_needed(self) -> None:
        """Without the root key a missing leaf cannot be issued: the error names the root key."""
        os.unlink(os.path.join(self.path, FILES["root"][1]))
        for name in FILES["web"]:
            os.unlink(os.path.join(self.path, name))
        before = snapshot(self.path)
        self.assertCertificateError("root-cert-private.key", self.path, "mc.example.com",
                                    fast=True)
        self.assertEqual(snapshot(self.path), before)

    def test_root_missing_with_leaves(self) -> None:
        """A lost root while the agent and MPS certificates remain is an error, not a new root."""
        for name in FILES["root"]:
            os.unlink(os.path.join(self.path, name))
        before = snapshot(self.path)
        self.assertCertificateError("root-cert-public.crt", self.path, "mc.example.com",
                                    fast=True)
        self.assertEqual(snapshot(self.path), before)

    def test_world_readable_key_tightened(self) -> None:
        """A private key readable by others is made 0600 with a warning naming it."""
        key_path = os.path.join(self.path, FILES["agent"][1])
        os.chmod(key_path, 0o644)
        load_or_create(self.path, "mc.example.com")
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        self.assertTrue(any(key_path in m and "0600" in m for m in self.messages()),
                        self.messages())
        self.assertEqual(self.events[0]["log_level"].name, "warn")


class AdminWebCertificateTests(_Base):
    """A web certificate replaced by an administrator (e.g. bought from a CA)."""

    def setUp(self) -> None:
        super().setUp()
        self.path = self.copied_folder()
        ca_key, intermediate_key = rsa_key("admin-ca"), rsa_key("admin-intermediate")
        self.leaf_key = rsa_key("admin-leaf")
        self.ca = make_cert("Commercial Root", ca_key, ca=True)
        self.intermediate = make_cert("Commercial Intermediate", intermediate_key,
                                      (self.ca, ca_key), ca=True)
        self.leaf = make_cert("www.example.net", self.leaf_key,
                              (self.intermediate, intermediate_key),
                              extra=[x509.SubjectAlternativeName([x509.DNSName("*.example.net")])])
        self.cert_path = os.path.join(self.path, FILES["web"][0])
        with open(os.path.join(self.path, FILES["web"][1]), "wb") as f:
            f.write(key_pem(self.leaf_key))

    def test_chain_in_same_file(self) -> None:
        """Certificates after the leaf in webserver-cert-public.crt become the chain."""
        with open(self.cert_path, "wb") as f:
            f.write(pem(self.leaf) + pem(self.intermediate))
        before = snapshot(self.path)
        result = load_or_create(self.path, "www.example.net")
        self.assertEqual(result.web.cert, self.leaf)
        self.assertEqual(result.web.chain, (self.intermediate,))
        self.assertEqual(result.web.chain_pem(), pem(self.leaf) + pem(self.intermediate))
        self.assertEqual(result.created, ())
        self.assertEqual(snapshot(self.path), before)
        self.assertFalse(any("webserver" in m for m in self.messages()), self.messages())

    def test_chain_files(self) -> None:
        """webserver-cert-chain1.crt, -chain2.crt ... are appended to the chain, in order."""
        with open(self.cert_path, "wb") as f:
            f.write(pem(self.leaf))
        for index, cert in ((1, self.intermediate), (2, self.ca)):
            with open(os.path.join(self.path, f"webserver-cert-chain{index}.crt"), "wb") as f:
                f.write(pem(cert))
        result = load_or_create(self.path, "a.example.net")
        self.assertEqual(result.web.chain, (self.intermediate, self.ca))

    def test_name_mismatch_warns(self) -> None:
        """A replaced certificate for another name is used anyway, with a warning."""
        with open(self.cert_path, "wb") as f:
            f.write(pem(self.leaf))
        result = load_or_create(self.path, "example.com")
        self.assertEqual(result.web.cert, self.leaf)
        self.assertTrue(any("webserver-cert-public.crt" in m and "example.com" in m
                            for m in self.messages()), self.messages())

    def test_only_web_in_new_folder(self) -> None:
        """An admin certificate put in an empty folder is kept; the others are created."""
        path = os.path.join(self.mktemp(), "data")
        os.makedirs(path)
        shutil.copy(os.path.join(self.path, FILES["web"][1]), path)
        with open(os.path.join(path, FILES["web"][0]), "wb") as f:
            f.write(pem(self.leaf) + pem(self.intermediate))
        result = load_or_create(path, "www.example.net", fast=True)
        self.assertEqual(result.created, ("root", "mps", "agent"))
        self.assertEqual(result.web.cert, self.leaf)
        self.assertEqual(result.web.chain, (self.intermediate,))


class ErrorTests(_Base):
    """Inconsistent folders raise CertificateError naming the file, and write nothing."""

    def setUp(self) -> None:
        super().setUp()
        self.path = self.copied_folder()

    def file(self, kind: str, index: int) -> str:
        """The full path of a certificate (0) or key (1) file."""
        return os.path.join(self.path, FILES[kind][index])

    def overwrite(self, path: str, data: bytes) -> None:
        """Replace a file's content."""
        with open(path, "wb") as f:
            f.write(data)

    def assertFailsUnchanged(self, fragment: str, **kwargs: Any) -> str:
        """Loading raises an error mentioning ``fragment`` and the folder is left as it was."""
        before = snapshot(self.path)
        message = self.assertCertificateError(fragment, self.path, "example.com", fast=True,
                                              **kwargs)
        self.assertEqual(snapshot(self.path), before)
        return message

    def test_corrupt_key(self) -> None:
        """A garbage key file is reported by name."""
        self.overwrite(self.file("web", 1), b"-----BEGIN RSA PRIVATE KEY-----\nnot base64!\n"
                       b"-----END RSA PRIVATE KEY-----\n")
        self.assertFailsUnchanged(self.file("web", 1))

    def test_key_not_pem(self) -> None:
        """A key file without any PEM block is reported by name."""
        self.overwrite(self.file("agent", 1), b"\x00\x01binary")
        self.assertFailsUnchanged(self.file("agent", 1))

    def test_corrupt_certificate(self) -> None:
        """A truncated certificate file is reported by name."""
        with open(self.file("mps", 0), "rb") as f:
            data = f.read()
        self.overwrite(self.file("mps", 0), data[:200] + data[260:])
        self.assertFailsUnchanged(self.file("mps", 0))

    def test_key_certificate_mismatch(self) -> None:
        """A key that belongs to another certificate is reported by name."""
        self.overwrite(self.file("mps", 1), key_pem(rsa_key("stranger")))
        message = self.assertFailsUnchanged(self.file("mps", 1))
        self.assertIn("does not match", message)

    def test_missing_key_with_certificate(self) -> None:
        """A certificate whose key file is missing is an error, not a reason to regenerate."""
        os.unlink(self.file("agent", 1))
        self.assertFailsUnchanged(self.file("agent", 1))

    def test_missing_certificate_with_key(self) -> None:
        """A key whose certificate file is missing is an error."""
        os.unlink(self.file("web", 0))
        self.assertFailsUnchanged(self.file("web", 0))

    def test_encrypted_key(self) -> None:
        """An encrypted private key is reported as such."""
        key = rsa_key("stranger")
        self.overwrite(self.file("web", 1), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
        message = self.assertFailsUnchanged(self.file("web", 1))
        self.assertIn("encrypted", message)

    def test_non_rsa_agent_key(self) -> None:
        """An EC agent certificate is refused: agents need RSA."""
        key = ec.generate_private_key(ec.SECP384R1())
        self.overwrite(self.file("agent", 0), pem(make_cert("MeshCentralAgentServer-x", key)))
        self.overwrite(self.file("agent", 1), key_pem(key))
        message = self.assertFailsUnchanged(self.file("agent", 1))
        self.assertIn("RSA", message)

    def test_new_agent_cert_not_allowed(self) -> None:
        """With allow_new_agent_cert=False, missing agent files are an error naming them."""
        for index in (0, 1):
            os.unlink(self.file("agent", index))
        message = self.assertFailsUnchanged(self.file("agent", 0), allow_new_agent_cert=False)
        self.assertIn("restore", message)

    def test_new_agent_cert_allowed(self) -> None:
        """By default missing agent files get a new agent certificate from the existing root."""
        for index in (0, 1):
            os.unlink(self.file("agent", index))
        result = load_or_create(self.path, "example.com", fast=True)
        self.assertEqual(result.created, ("agent",))
        verify_signed_by(result.agent.cert, result.root.cert)

    def test_failed_write_leaves_nothing(self) -> None:
        """A failing rename raises CertificateError and leaves no temporary or partial file."""
        for index in (0, 1):
            os.unlink(self.file("mps", index))

        def failing_replace(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(os, "replace", failing_replace)
        error = self.assertRaises(CertificateError, load_or_create, self.path, "example.com",
                                  fast=True)
        self.assertIn("mpsserver-cert-private.key", str(error))
        self.assertEqual(sorted(os.listdir(self.path)),
                         sorted(set(ALL_FILES) - set(FILES["mps"])))


class LoadCertificateFileTests(_Base):
    """load_certificate_file, for TLS offload."""

    def test_certificate_and_chain(self) -> None:
        """The first certificate is the leaf, the rest the chain; there is no key."""
        ca_key, leaf_key = rsa_key("admin-ca"), rsa_key("admin-leaf")
        ca = make_cert("CA", ca_key, ca=True)
        leaf = make_cert("www.example.net", leaf_key, (ca, ca_key))
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(crlf(pem(leaf) + pem(ca)))
        loaded = load_certificate_file(path)
        self.assertEqual(loaded.cert, leaf)
        self.assertEqual(loaded.chain, (ca,))
        self.assertIsNone(loaded.key)
        self.assertRaises(CertificateError, loaded.key_pem)
        self.assertEqual(loaded.sha384(),
                         hashlib.sha384(leaf.public_bytes(serialization.Encoding.DER)).hexdigest())

    def test_missing_or_corrupt(self) -> None:
        """A missing or non-PEM file raises CertificateError naming it."""
        path = self.mktemp()
        self.assertIn(path, str(self.assertRaises(CertificateError, load_certificate_file, path)))
        with open(path, "wb") as f:
            f.write(b"hello")
        self.assertIn(path, str(self.assertRaises(CertificateError, load_certificate_file, path)))


class ValidityTests(_Base):
    """Validity dates of new certificates."""

    def test_validity_window(self) -> None:
        """New certificates are valid 2018-01-01 to 2049-12-31 like MeshCentral's."""
        result = load_or_create(os.path.join(self.mktemp(), "d"), "example.com", fast=True,
                                now=NOW)
        for pair in (result.root, result.web, result.mps, result.agent):
            self.assertEqual(pair.cert.not_valid_before_utc,
                             datetime(2018, 1, 1, tzinfo=timezone.utc))
            self.assertEqual(pair.cert.not_valid_after_utc,
                             datetime(2049, 12, 31, tzinfo=timezone.utc))

    def test_late_creation_extends_validity(self) -> None:
        """Certificates created close to 2049 stay valid long after their creation."""
        late = datetime(2049, 6, 1, tzinfo=timezone.utc)
        result = load_or_create(os.path.join(self.mktemp(), "d"), "example.com", fast=True,
                                now=late)
        self.assertGreater(result.web.cert.not_valid_after_utc, late + timedelta(days=3650))
