"""Tests for meshd.web.login on an in-memory store (no sockets)."""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meshd.accounts import Accounts
from meshd.events import LocalEventBus
from meshd.ratelimit import FailureLimiter
from meshd.store.memory import MemoryStore
from meshd.web import build_root
from meshd.web.login import WebAuth
from meshd.web.session import Sessions


def run_now(f: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


class LoginPageTests(TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.accounts = Accounts(self.store, now=self.clock.seconds, run_blocking=run_now)
        self.bus = LocalEventBus()
        auth = WebAuth(store=self.store, accounts=self.accounts,
                       sessions=Sessions(self.store, now=self.clock.seconds, idle_seconds=600),
                       limiter=FailureLimiter(2, 600, 600), now=self.clock.seconds,
                       title="T", new_accounts=False, ready=lambda: defer.succeed(None),
                       bus=self.bus)
        self.treq = StubTreq(build_root(clock=self.clock, started_at=0, title="T",
                                        listeners=lambda: [], auth=auth))

    async def post(self, path: str, **fields: str) -> Any:
        return await self.treq.post(f"https://h.example.com{path}", data=fields,
                                    allow_redirects=False)

    async def test_store_down_is_503_then_recovers(self) -> None:
        """With the database down login answers 503; when it is back login works."""
        await self.accounts.create("alice", "alice password")
        self.store.unavailable = True
        response = await self.post("/login", username="alice", password="alice password")
        self.assertEqual(response.code, 503)
        self.assertIn("database is unavailable", await response.text())
        self.store.unavailable = False
        response = await self.post("/login", username="alice", password="alice password")
        self.assertEqual(response.code, 303)

    async def test_user_limit_independent_of_address(self) -> None:
        """Failures against one account block that account even from a new address."""
        await self.accounts.create("alice", "alice password")
        for _ in range(2):
            self.assertEqual((await self.post("/login", username="alice",
                                              password="nope nope")).code, 401)
        response = await self.post("/login", username="alice", password="alice password")
        self.assertEqual(response.code, 429)
        self.clock.advance(601)
        response = await self.post("/login", username="alice", password="alice password")
        self.assertEqual(response.code, 303)

    async def events(self, action: str) -> list[dict[str, Any]]:
        found = await self.store.get_events(["*"], "", action=action)
        return list(reversed(found))

    async def test_login_events(self) -> None:
        """Logins are recorded as MeshCentral records them: 107 with the address,
        browser and OS; authfail 110 (wrong password or unknown account), 109 (locked
        account), 108 (wrong second factor); the failures since the previous login are
        kept in the new web session, to be told once."""
        chrome = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/120.0.0.0 Safari/537.36")
        await self.accounts.create("alice", "alice password")
        response = await self.treq.post("https://h.example.com/login", data={
            "username": "alice", "password": "alice password"}, allow_redirects=False,
            headers={"User-Agent": chrome})
        self.assertEqual(response.code, 303)
        [login] = await self.events("login")
        ip = login["ip"]
        self.assertEqual((login["msgid"], login["msgArgs"], login["userAgent"]),
                         (107, [ip, "Chrome/120.0.0.0", "Linux"], chrome))
        self.assertEqual(login["msg"], f"Account login from {ip}, Chrome/120.0.0.0, Linux")
        self.assertNotIn("twoFactorType", login)

        self.clock.advance(10)
        await self.post("/login", username="alice", password="wrong password")
        await self.post("/login", username="nobody", password="wrong password")
        self.clock.advance(601)
        locked = await self.accounts.create("locked", "locked password")
        record = await self.store.get(locked["_id"])
        record["siteadmin"] = 0x20
        await self.store.set(record)
        await self.post("/login", username="locked", password="locked password")
        fails = await self.events("authfail")
        self.assertEqual([(e["userid"], e["msgid"]) for e in fails], [
            ("user//alice", 110), ("user//nobody", 110), ("user//locked", 109)])
        self.assertEqual(fails[0]["msgArgs"], [ip, "Unknown", "Unknown"])
        for event in fails:
            self.assertNotIn("wrong password", repr(event))

        self.clock.advance(601)
        response = await self.post("/login", username="alice", password="alice password")
        self.assertEqual(response.code, 303)
        user = await self.store.get("user//alice")
        self.assertEqual(user["pastlogin"], 1_700_000_000)
        session = await Sessions(self.store, now=self.clock.seconds, idle_seconds=600
                                 ).lookup(response.cookies()["xid"])
        self.assertEqual((session["userid"], session["failedlogins"]), ("user//alice", 1))

        self.clock.advance(601)
        user["otpkeys"] = {"keys": [{"p": 12345678, "u": True}]}
        await self.store.set(user)
        await self.post("/login", username="alice", password="alice password",
                        token="87654321")
        self.assertEqual((await self.events("authfail"))[-1]["msgid"], 108)
        self.clock.advance(601)
        response = await self.post("/login", username="alice", password="alice password",
                                   token="12345678")
        self.assertEqual(response.code, 303)
        self.assertEqual((await self.events("login"))[-1]["twoFactorType"], "backup")

    async def test_logout_signals_its_channels(self) -> None:
        """Logging out tells the control channels of that web session to close."""
        from meshd.control.hub import INTERNAL
        await self.accounts.create("alice", "alice password")
        response = await self.post("/login", username="alice", password="alice password")
        cookie = response.cookies()["xid"]
        record = await Sessions(self.store, now=self.clock.seconds, idle_seconds=600
                                ).lookup(cookie)
        heard: list[dict[str, Any]] = []
        self.bus.subscribe(["user//alice"], heard.append)
        await self.treq.get("https://h.example.com/logout", cookies={"xid": cookie},
                            allow_redirects=False)
        self.assertIn({INTERNAL: "close", "userid": "user//alice",
                       "websession": record["_id"]}, heard)

    async def test_garbage_form(self) -> None:
        """Missing or non-UTF-8 fields are a failed login, not an error."""
        await self.accounts.create("alice", "alice password")
        response = await self.treq.post("https://h.example.com/login", data=b"username=%ff%fe",
                                        headers={"Content-Type":
                                                 "application/x-www-form-urlencoded"},
                                        allow_redirects=False)
        self.assertEqual(response.code, 401)

    async def test_oversized_form(self) -> None:
        """A form body over the limit is refused with 413."""
        response = await self.post("/login", username="a" * 20000, password="x")
        self.assertEqual(response.code, 413)

    async def test_html_escaped(self) -> None:
        """The user name is escaped when the form is shown again."""
        await self.accounts.create("alice", "alice password")
        response = await self.post("/login", username="<script>", password="x")
        text = await response.text()
        self.assertNotIn("<script>", text)
        self.assertIn("&lt;script&gt;", text)
