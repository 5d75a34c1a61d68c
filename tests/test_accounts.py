"""Tests for meshd.accounts, meshd.ratelimit and meshd.web.session (pure logic, memory store)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meshd import passwords
from meshd.accounts import SITE_ADMIN, AccountError, Accounts, check_name, user_id
from meshd.ratelimit import FailureLimiter
from meshd.store.memory import MemoryStore
from meshd.web.session import MAX_AGE, Sessions


def run_now(f: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


class FakeTime:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class AccountTests(TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.time = FakeTime()
        self.accounts = Accounts(self.store, now=self.time, run_blocking=run_now)

    async def test_first_account_is_site_admin(self) -> None:
        """The first account of a domain is site administrator; later ones are not."""
        first = await self.accounts.create("Admin", "correct horse")
        second = await self.accounts.create("bob", "battery staple")
        self.assertEqual(first["_id"], "user//admin")
        self.assertEqual(first["name"], "Admin")
        self.assertEqual(first["siteadmin"], SITE_ADMIN)
        self.assertNotIn("siteadmin", second)
        self.assertNotIn("hash", first)

    async def test_record_shape(self) -> None:
        """The stored record has MeshCentral's fields and a PBKDF2 hash of the password."""
        await self.accounts.create("alice", "wonderland", email="a@example.com")
        record = await self.store.get("user//alice")
        assert record is not None
        self.assertEqual(record["type"], "user")
        self.assertEqual(record["domain"], "")
        self.assertEqual(record["creation"], 1_700_000_000)
        self.assertEqual(record["email"], "a@example.com")
        expected = base64.b64encode(hashlib.pbkdf2_hmac(
            "sha384", b"wonderland", record["salt"].encode(), 12000, 128)).decode()
        self.assertEqual(record["hash"], expected)

    async def test_duplicate_refused(self) -> None:
        """A name that exists (in any case) cannot be created again."""
        await self.accounts.create("alice", "wonderland")
        with self.assertRaises(AccountError):
            await self.accounts.create("ALICE", "wonderland2")

    async def test_authenticate(self) -> None:
        """Right password logs in (case-insensitive name); wrong password and unknown user don't."""
        await self.accounts.create("alice", "wonderland")
        self.time.t += 10
        user = await self.accounts.authenticate("Alice", "wonderland")
        assert user is not None
        self.assertEqual(user["_id"], "user//alice")
        self.assertEqual((await self.store.get("user//alice"))["login"], 1_700_000_010)
        self.assertIsNone(await self.accounts.authenticate("alice", "Wonderland"))
        self.assertIsNone(await self.accounts.authenticate("nobody", "wonderland"))
        self.assertIsNone(await self.accounts.authenticate("", ""))

    async def test_meshcentral_record_logs_in(self) -> None:
        """A user record as MeshCentral writes it logs in."""
        salt = base64.b64encode(b"s" * 128).decode()
        hashed = base64.b64encode(hashlib.pbkdf2_hmac("sha384", b"pw from mc", salt.encode(),
                                                      12000, 128)).decode()
        await self.store.set({"_id": "user//mc", "type": "user", "name": "mc", "domain": "",
                              "salt": salt, "hash": hashed, "creation": 1})
        self.assertIsNotNone(await self.accounts.authenticate("mc", "pw from mc"))

    async def test_login_times(self) -> None:
        """A login keeps its time and the previous one (pastlogin); a tool login
        (record=False) checks the password without writing anything."""
        await self.accounts.create("root", "rootpassword")
        await self.accounts.authenticate("root", "rootpassword")
        self.time.t += 100
        await self.accounts.authenticate("root", "rootpassword")
        record = await self.store.get("user//root")
        assert record is not None
        self.assertEqual((record["login"], record["pastlogin"]),
                         (1_700_000_100, 1_700_000_000))
        self.time.t += 100
        self.assertIsNotNone(await self.accounts.authenticate("root", "rootpassword",
                                                              record=False))
        self.assertEqual(await self.store.get("user//root"), record)

    async def test_locked_account(self) -> None:
        """An account with the locked site right cannot log in."""
        await self.accounts.create("root", "rootpassword")
        await self.accounts.create("locked", "lockedpassword")
        record = await self.store.get("user//locked")
        assert record is not None
        record["siteadmin"] = 0x20
        await self.store.set(record)
        self.assertIsNone(await self.accounts.authenticate("locked", "lockedpassword"))

    async def test_legacy_password_upgraded(self) -> None:
        """A clear-text (passtype 0) imported password works once and is re-hashed."""
        await self.store.set({"_id": "user//old", "type": "user", "name": "old", "domain": "",
                              "salt": "", "hash": "oldpassword", "passtype": 0})
        self.assertIsNotNone(await self.accounts.authenticate("old", "oldpassword"))
        record = await self.store.get("user//old")
        assert record is not None
        self.assertNotIn("passtype", record)
        self.assertTrue(passwords.verify_password("oldpassword", record["salt"], record["hash"]))

    async def test_reset_and_admin(self) -> None:
        """Password reset and site-admin changes apply; unknown accounts are errors."""
        await self.accounts.create("root", "rootpassword")
        await self.accounts.create("bob", "bobpassword")
        await self.accounts.reset_password("bob", "newpassword")
        self.assertIsNone(await self.accounts.authenticate("bob", "bobpassword"))
        self.assertIsNotNone(await self.accounts.authenticate("bob", "newpassword"))
        self.assertEqual((await self.accounts.set_site_admin("bob"))["siteadmin"], SITE_ADMIN)
        self.assertNotIn("siteadmin", await self.accounts.set_site_admin("bob", False))
        with self.assertRaises(AccountError):
            await self.accounts.reset_password("nobody", "whatever1")

    async def test_list_hides_secrets(self) -> None:
        """Listing accounts never shows salts or hashes."""
        await self.accounts.create("root", "rootpassword")
        [user] = await self.accounts.list()
        self.assertEqual(user["name"], "root")
        self.assertFalse({"salt", "hash"} & set(user))

    async def test_bad_input(self) -> None:
        """Short passwords, bad names and bad e-mail addresses are refused with a reason."""
        with self.assertRaises(AccountError) as cm:
            await self.accounts.create("bob", "short")
        self.assertIn("at least 8", str(cm.exception))
        with self.assertRaises(AccountError):
            await self.accounts.create("bob", "longenough", email="not-an-address")
        self.assertEqual(await self.accounts.count(), 0)


class RecentCheckTests(TestCase):
    """Accounts with remembered password checks (settings.passwordCacheSeconds)."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.time = FakeTime()
        self.hashed = 0

        def counting(f: Any, *args: Any) -> defer.Deferred[Any]:
            if f in (passwords.verify_password, passwords.hash_password):
                self.hashed += 1
            return defer.maybeDeferred(f, *args)

        self.accounts = Accounts(self.store, now=self.time, run_blocking=counting,
                                 recent_checks=passwords.RecentChecks(300))

    async def test_second_login_skips_pbkdf2(self) -> None:
        """A repeated good login is checked without PBKDF2; a wrong password still pays
        it and fails; after the time is up, PBKDF2 runs again."""
        await self.accounts.create("root", "rootpassword")
        self.hashed = 0
        self.assertIsNotNone(await self.accounts.authenticate("root", "rootpassword"))
        self.assertEqual(self.hashed, 1)
        self.assertIsNotNone(await self.accounts.authenticate("root", "rootpassword"))
        self.assertEqual(self.hashed, 1)
        self.assertIsNone(await self.accounts.authenticate("root", "wrongpassword"))
        self.assertEqual(self.hashed, 2)
        self.time.t += 301
        self.assertIsNotNone(await self.accounts.authenticate("root", "rootpassword"))
        self.assertEqual(self.hashed, 3)

    async def test_password_change_and_lock_apply_at_once(self) -> None:
        """A remembered check does not outlive a password change or a lock."""
        await self.accounts.create("root", "rootpassword")
        await self.accounts.create("bob", "bobpassword")
        self.assertIsNotNone(await self.accounts.authenticate("bob", "bobpassword"))
        await self.accounts.reset_password("bob", "newpassword")
        self.assertIsNone(await self.accounts.authenticate("bob", "bobpassword"))
        self.assertIsNotNone(await self.accounts.authenticate("bob", "newpassword"))
        record = await self.store.get("user//bob")
        assert record is not None
        record["siteadmin"] = 0x20
        await self.store.set(record)
        self.assertIsNone(await self.accounts.authenticate("bob", "newpassword"))


class NameTests(SynchronousTestCase):
    def test_names(self) -> None:
        """Names with spaces, quotes, commas, slashes or a leading ~ are refused."""
        for bad in ("", "a b", 'a"b', "a,b", "a/b", "~t:x", "x" * 65, "a\nb"):
            with self.assertRaises(AccountError, msg=repr(bad)):
                check_name(bad)
        for good in ("admin", "Jean-Luc", "user@example.com", "x" * 64):
            check_name(good)
        self.assertEqual(user_id("Admin", "dom"), "user/dom/admin")


class LimiterTests(SynchronousTestCase):
    def test_blocks_after_count_in_window(self) -> None:
        """After `count` failures within the window the key waits `cool_off` seconds."""
        limiter = FailureLimiter(count=3, window=600, cool_off=300)
        for t in (0, 10, 20):
            self.assertEqual(limiter.blocked_for("ip:1", t), 0)
            limiter.failure("ip:1", t)
        self.assertEqual(limiter.blocked_for("ip:1", 20), 300)
        self.assertEqual(limiter.blocked_for("ip:1", 319), 1)
        self.assertEqual(limiter.blocked_for("ip:1", 320), 0)
        self.assertEqual(limiter.blocked_for("ip:2", 20), 0)

    def test_window_slides(self) -> None:
        """Failures older than the window are forgotten."""
        limiter = FailureLimiter(count=3, window=60, cool_off=300)
        limiter.failure("k", 0)
        limiter.failure("k", 30)
        limiter.failure("k", 90)
        self.assertEqual(limiter.blocked_for("k", 90), 0)

    def test_success_resets(self) -> None:
        """A success clears the key's failures."""
        limiter = FailureLimiter(count=2, window=60, cool_off=300)
        limiter.failure("k", 0)
        limiter.success("k")
        limiter.failure("k", 1)
        self.assertEqual(limiter.blocked_for("k", 1), 0)

    def test_bounded(self) -> None:
        """The table never grows past max_keys."""
        limiter = FailureLimiter(count=5, window=60, cool_off=60, max_keys=100)
        for i in range(1000):
            limiter.failure(f"ip:{i}", i / 100)
        self.assertLessEqual(len(limiter), 100)

    def test_zero_count_disables(self) -> None:
        """count 0 disables the limit."""
        limiter = FailureLimiter(count=0, window=60, cool_off=60)
        limiter.failure("k", 0)
        self.assertEqual(limiter.blocked_for("k", 0), 0)


class SessionTests(TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.time = FakeTime()
        self.sessions = Sessions(self.store, now=self.time, idle_seconds=3600)
        self.user = {"_id": "user//alice", "domain": ""}

    async def test_round_trip(self) -> None:
        """A created session is found by its cookie; the store holds only its hash."""
        token = await self.sessions.create(self.user, "127.0.0.1")
        record = await self.sessions.lookup(token)
        assert record is not None
        self.assertEqual(record["userid"], "user//alice")
        self.assertNotIn(token, record["_id"])
        self.assertIsNone(await self.store.get("websession/" + token))

    async def test_idle_expiry(self) -> None:
        """A session unused for longer than the idle time ends; use keeps it alive."""
        token = await self.sessions.create(self.user, "127.0.0.1")
        self.time.t += 3000
        self.assertIsNotNone(await self.sessions.lookup(token))
        self.time.t += 3000
        self.assertIsNotNone(await self.sessions.lookup(token))
        self.time.t += 3601
        self.assertIsNone(await self.sessions.lookup(token))

    async def test_max_age(self) -> None:
        """Even a session in constant use ends after MAX_AGE."""
        token = await self.sessions.create(self.user, "127.0.0.1")
        for _ in range(int(MAX_AGE / 3000) + 1):
            self.time.t += 3000
            await self.sessions.lookup(token)
        self.assertIsNone(await self.sessions.lookup(token))

    async def test_destroy_and_garbage(self) -> None:
        """Logout ends the session; garbage cookies find nothing."""
        token = await self.sessions.create(self.user, "127.0.0.1")
        await self.sessions.destroy(token)
        self.assertIsNone(await self.sessions.lookup(token))
        for junk in ("", "x", "a" * 43 + "!", "../../etc", "é" * 43):
            self.assertIsNone(await self.sessions.lookup(junk))

    async def test_purge(self) -> None:
        """Expired session records are purged; live ones stay."""
        old = await self.sessions.create(self.user, "127.0.0.1")
        self.time.t += 4000
        new = await self.sessions.create(self.user, "127.0.0.1")
        self.assertEqual(await self.sessions.purge_expired(), 1)
        self.assertIsNotNone(await self.sessions.lookup(new))
        self.assertIsNone(await self.sessions.lookup(old))

    async def test_destroy_user(self) -> None:
        """All sessions of one user can be ended at once."""
        a = await self.sessions.create(self.user, "127.0.0.1")
        b = await self.sessions.create({"_id": "user//bob", "domain": ""}, "127.0.0.1")
        self.assertEqual(await self.sessions.destroy_user("user//alice"), 1)
        self.assertIsNone(await self.sessions.lookup(a))
        self.assertIsNotNone(await self.sessions.lookup(b))
