"""Tests for meshd.passwords: MeshCentral-compatible PBKDF2 password hashes."""

from __future__ import annotations

import base64
import hashlib

from twisted.trial import unittest

from meshd.passwords import (
    RecentChecks,
    hash_password,
    new_salt,
    verify_legacy_password,
    verify_password,
)

# Produced by MeshCentral 1.1.55's pass.js: hash('Correct horse €', SALT).
MESHCENTRAL_SALT = (
    "bWVzaGQtdGVzdC1zYWx0LTAxMjM0NTY3ODltZXNoZC10ZXN0LXNhbHQtMDEyMzQ1Njc4OW1lc2hkLXRlc3Qtc2F"
    "sdC0wMTIzNDU2Nzg5bWVzaGQtdGVzdC1zYWx0LTAxMjM0NTY3ODltZXNoZC10ZXN0LXNhbHQtMDEyMzQ1Njc4OQ=="
)
MESHCENTRAL_HASH = (
    "gUnwhB4JUVM2MPYtGI08It/OroxmYmfYdGl/VyBi49Go4Sf7iKwYtd+zpbjuZdAe112g3zhsqrBho34MPFU4knmm"
    "4f484pHo4KdiYqcIRQlfiC1ZDbkCr0lwX4MCZZjlz7MFgc5sXGUNMUq/PIWfz9xN6WMpDS/dNvGGC2Ielyg="
)


class HashPasswordTests(unittest.TestCase):
    """hash_password/verify_password follow spec §9."""

    def test_independent_vector(self) -> None:
        """The hash is PBKDF2-SHA384 over the salt string's bytes, 12000 rounds, 128 bytes."""
        salt = base64.b64encode(bytes(range(128))).decode()
        expected = base64.b64encode(
            hashlib.pbkdf2_hmac("sha384", "s3cr3t-pässword".encode(), salt.encode(), 12000, 128)
        ).decode()
        self.assertEqual(hash_password("s3cr3t-pässword", salt), (salt, expected))

    def test_meshcentral_vector(self) -> None:
        """A salt and hash made by MeshCentral verify, and hashing reproduces them."""
        self.assertTrue(verify_password("Correct horse €", MESHCENTRAL_SALT, MESHCENTRAL_HASH))
        self.assertEqual(hash_password("Correct horse €", MESHCENTRAL_SALT)[1], MESHCENTRAL_HASH)

    def test_new_salt_shape(self) -> None:
        """New salts are base64 of 128 random bytes and differ each time."""
        salt, digest = hash_password("pw")
        self.assertEqual(len(salt), 172)
        self.assertEqual(len(base64.b64decode(salt, validate=True)), 128)
        self.assertEqual(len(base64.b64decode(digest, validate=True)), 128)
        self.assertNotEqual(new_salt(), new_salt())

    def test_round_trip(self) -> None:
        """A password verifies against its own salt and hash."""
        salt, digest = hash_password("hunter2")
        self.assertTrue(verify_password("hunter2", salt, digest))

    def test_wrong_password(self) -> None:
        """A different password, salt or hash does not verify."""
        salt, digest = hash_password("hunter2")
        self.assertFalse(verify_password("hunter3", salt, digest))
        self.assertFalse(verify_password("hunter2", new_salt(), digest))
        self.assertFalse(verify_password("hunter2", salt, digest[:-4] + "AAA="))
        self.assertFalse(verify_password("", salt, digest))

    def test_malformed_stored_values(self) -> None:
        """Missing or non-ASCII stored values give False, not an exception."""
        salt, digest = hash_password("pw")
        self.assertFalse(verify_password("pw", salt, ""))
        self.assertFalse(verify_password("pw", salt, "ünïcode"))
        self.assertFalse(verify_password("pw", None, digest))  # type: ignore[arg-type]
        self.assertFalse(verify_password("pw", salt, None))  # type: ignore[arg-type]

    def test_lone_surrogate_like_nodejs(self) -> None:
        """A lone surrogate is hashed as U+FFFD, as Node.js encodes it."""
        self.assertEqual(hash_password("p\ud800w", "salt"), hash_password("p\ufffdw", "salt"))


class LegacyPasswordTests(unittest.TestCase):
    """Imported IIS-era passwords (passtype 0 and 1) verify."""

    def test_passtype_1(self) -> None:
        """passtype 1 is base64 SHA-1 of the decoded salt and the UTF-16LE password."""
        # From MeshCentral 1.1.55's pass.js: iishash(1, 'Pässword', 'c2FsdHNhbHQ=').
        self.assertTrue(verify_legacy_password("Pässword", "c2FsdHNhbHQ=",
                                               "+Col6O5ZR31HoBKi5cgmdoy7wbM=", 1))
        self.assertFalse(verify_legacy_password("Password", "c2FsdHNhbHQ=",
                                                "+Col6O5ZR31HoBKi5cgmdoy7wbM=", 1))

    def test_passtype_0(self) -> None:
        """passtype 0 is the clear-text password."""
        self.assertTrue(verify_legacy_password("plain", "", "plain", 0))
        self.assertFalse(verify_legacy_password("plain", "", "other", 0))

    def test_unknown_passtype(self) -> None:
        """Any other passtype never verifies."""
        self.assertFalse(verify_legacy_password("plain", "", "plain", 7))


class RecentChecksTests(unittest.TestCase):
    """Successful checks remembered as keyed hashes, for a while, per account."""

    def test_remembers_only_the_same_password_salt_and_hash(self) -> None:
        """A remembered success matches the same password, salt and hash only."""
        checks = RecentChecks(300)
        checks.remember("user//a", "right password", "salt", "hash", 1000.0)
        self.assertTrue(checks.matches("user//a", "right password", "salt", "hash", 1001.0))
        self.assertFalse(checks.matches("user//a", "wrong password", "salt", "hash", 1001.0))
        self.assertFalse(checks.matches("user//a", "right password", "salt2", "hash2", 1001.0),
                         "a changed password (new salt and hash) must not match")
        self.assertFalse(checks.matches("user//b", "right password", "salt", "hash", 1001.0))

    def test_expires(self) -> None:
        """An entry is gone after ``seconds``."""
        checks = RecentChecks(60)
        checks.remember("user//a", "pw", "salt", "hash", 1000.0)
        self.assertTrue(checks.matches("user//a", "pw", "salt", "hash", 1059.0))
        self.assertFalse(checks.matches("user//a", "pw", "salt", "hash", 1060.0))
        self.assertFalse(checks.matches("user//a", "pw", "salt", "hash", 1001.0),
                         "an expired entry is dropped, not revived")

    def test_zero_keeps_nothing(self) -> None:
        checks = RecentChecks(0)
        checks.remember("user//a", "pw", "salt", "hash", 1000.0)
        self.assertFalse(checks.matches("user//a", "pw", "salt", "hash", 1000.0))

    def test_bounded_least_recently_used_first(self) -> None:
        """At most ``limit`` accounts; the least recently used is dropped first."""
        checks = RecentChecks(300, limit=2)
        checks.remember("user//a", "pw", "s", "h", 1.0)
        checks.remember("user//b", "pw", "s", "h", 1.0)
        self.assertTrue(checks.matches("user//a", "pw", "s", "h", 2.0))
        checks.remember("user//c", "pw", "s", "h", 3.0)
        self.assertTrue(checks.matches("user//a", "pw", "s", "h", 4.0))
        self.assertFalse(checks.matches("user//b", "pw", "s", "h", 4.0))
        self.assertTrue(checks.matches("user//c", "pw", "s", "h", 4.0))

    def test_password_not_kept_in_clear(self) -> None:
        """What is kept is a keyed hash: neither the password nor an unkeyed hash of it."""
        checks = RecentChecks(300, key=b"k" * 32)
        checks.remember("user//a", "s3cret-password", "salt", "hash", 1.0)
        kept = repr(checks.__dict__).encode()
        self.assertNotIn(b"s3cret-password", kept)
        other = RecentChecks(300, key=b"x" * 32)
        other.remember("user//a", "s3cret-password", "salt", "hash", 1.0)
        self.assertNotEqual(checks._entries["user//a"][0], other._entries["user//a"][0])
