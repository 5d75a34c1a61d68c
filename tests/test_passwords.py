"""Tests for meshd.passwords: MeshCentral-compatible PBKDF2 password hashes."""

from __future__ import annotations

import base64
import hashlib

from twisted.trial import unittest

from meshd.passwords import (
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
