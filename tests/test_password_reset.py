"""Tests for meshd.passwordreset and meshd.web.passwordreset: the web pages through
StubTreq on an in-memory store, the mail through a real SMTP server on a loopback port
(tests.smtpserver); one test runs the whole flow against the real server process."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Optional, cast

from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from meshd.accounts import SITERIGHT_LOCKED, Accounts
from meshd.control.hub import INTERNAL
from meshd.events import LocalEventBus
from meshd.mail import Mailer
from meshd.passwordreset import TOKEN_LIFETIME, PasswordReset
from meshd.ratelimit import FailureLimiter
from meshd.store.memory import MemoryStore
from meshd.web import build_root
from meshd.web.login import LOGIN_CONTENT_SECURITY_POLICY, WebAuth
from meshd.web.session import Sessions
from tests.server import ServerProcess, fresh_datapath
from tests.smtpserver import Received, SmtpServer
from tests.test_login import admin, login, request

BASE = "https://h.example.com"
PUBLIC_URL = "https://mesh.example.com:8443"
LINK = re.compile(r"https://mesh\.example\.com:8443/resetpassword\?t=([A-Za-z0-9_-]+)")


def run_now(f: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


class _Fixture(TestCase):
    """A login site with (or without) password reset, a real SMTP server, account alice."""

    async def make(self, with_mailer: bool = True) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.accounts = Accounts(self.store, now=self.clock.seconds, run_blocking=run_now)
        self.sessions = Sessions(self.store, now=self.clock.seconds, idle_seconds=3600)
        self.bus = LocalEventBus()
        self.limiter = FailureLimiter(3, 600, 600)
        self.smtp = SmtpServer(reactor)
        await self.smtp.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.smtp.stop()))
        self.reset: Optional[PasswordReset] = None
        if with_mailer:
            mailer = Mailer(host="127.0.0.1", port=self.smtp.port,
                            sender="meshd <meshd@example.com>", reactor=reactor, timeout=10)
            self.reset = PasswordReset(store=self.store, mailer=mailer,
                                       public_url=lambda: PUBLIC_URL, now=self.clock.seconds,
                                       title="T")
            self.addCleanup(self.reset.when_idle)
        self.auth = WebAuth(store=self.store, accounts=self.accounts, sessions=self.sessions,
                            limiter=self.limiter, now=self.clock.seconds, title="T",
                            new_accounts=False, ready=lambda: defer.succeed(None),
                            bus=self.bus, password_reset=self.reset)
        self.treq: Any = StubTreq(build_root(clock=self.clock, started_at=0, title="T",
                                        listeners=lambda: [], auth=self.auth))
        self.log_lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            self.log_lines.append(repr(event))
            self.log_lines.append(formatEvent(event) or "")

        observer = cast(Any, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        await self.accounts.create("alice", "old password 1", email="alice@example.com")

    async def get(self, path: str, cookie: Optional[str] = None) -> Any:
        return await self.treq.get(BASE + path, allow_redirects=False,
                                   cookies={"xid": cookie} if cookie else None)

    async def post(self, path: str, headers: Optional[dict[str, str]] = None,
                   **fields: str) -> Any:
        return await self.treq.post(BASE + path, data=fields, allow_redirects=False,
                                    headers=headers)

    async def ask(self, email: str = "alice@example.com") -> tuple[Any, str]:
        """Post the forgot-password form; its answer and body once the work is done."""
        response = await self.post("/forgotpassword", email=email)
        body = await response.text()
        assert self.reset is not None
        await self.reset.when_idle()
        return response, body

    async def mailed_token(self, email: str = "alice@example.com") -> tuple[str, Received]:
        arrived = self.smtp.next_message()
        response, _body = await self.ask(email)
        self.assertEqual(response.code, 200)
        message = await arrived
        match = LINK.search(message.parsed().get_content())
        assert match is not None, message.parsed().get_content()
        return match.group(1), message

    async def login(self, password: str, token: str = "") -> Any:
        fields = {"username": "alice", "password": password}
        if token:
            fields["token"] = token
        return await self.treq.post(BASE + "/login", data=fields, allow_redirects=False)

    def assert_strict_page(self, response: Any, body: str) -> None:
        self.assertEqual(response.headers.getRawHeaders("content-security-policy"),
                         [LOGIN_CONTENT_SECURITY_POLICY])
        lowered = body.lower()
        for inline in ("<script", "<style", " style="):
            self.assertNotIn(inline, lowered)
        self.assertIsNone(re.search(r"\son[a-z]+\s*=", lowered))  # no event handlers



class PasswordResetTests(_Fixture):
    """The flow with a mailer."""

    # -- the happy path ----------------------------------------------------------------

    async def test_login_page_links_to_form(self) -> None:
        """With a mailer the login page links to the form asking for the e-mail address."""
        await self.make()
        body = await (await self.get("/")).text()
        self.assertIn('<a href="/forgotpassword">Forgot your password?</a>', body)
        response = await self.get("/forgotpassword")
        self.assertEqual(response.code, 200)
        self.assertIn('name="email"', await response.text())

    async def test_mail_link_resets_once(self) -> None:
        """The mailed link (configured server URL, 256-bit token, only its SHA-256 stored
        with the user id and a 15-minute expiry) shows the form; the post sets the
        password, ends the other web sessions and control channels, records the event,
        redirects to a confirmation; the old password fails, the new one works; the link
        is refused the second time."""
        await self.make()
        other = (await self.login("old password 1")).cookies()["xid"]
        self.assertIsNotNone(await self.sessions.lookup(other))
        closed: list[dict[str, Any]] = []
        self.bus.subscribe(["user//alice"], closed.append)

        token, message = await self.mailed_token()
        mail = message.parsed()
        self.assertEqual(message.recipients, ["alice@example.com"])
        self.assertEqual(mail["Subject"], "T - Account Reset")
        self.assertEqual(len(token), 43)  # 32 random bytes
        [record] = await self.store.find_by_type("pwreset")
        self.assertEqual(record["_id"],
                         "pwreset/" + hashlib.sha256(token.encode()).hexdigest())
        self.assertEqual((record["userid"], record["expires"]),
                         ("user//alice", self.clock.seconds() + TOKEN_LIFETIME))
        self.assertNotIn(token, repr(self.store._documents))

        form = await self.get(f"/resetpassword?t={token}")
        self.assertEqual(form.code, 200)
        self.assertIn(f'name="t" value="{token}"', await form.text())

        mismatch = await self.post("/resetpassword", t=token, password1="new password 2",
                                   password2="new password 3")
        self.assertEqual(mismatch.code, 400)
        self.assertIn("The two passwords differ.", await mismatch.text())
        short = await self.post("/resetpassword", t=token, password1="short",
                                password2="short")
        self.assertEqual(short.code, 400)
        self.assertIn("A password needs at least 8 characters.", await short.text())

        done = await self.post("/resetpassword", t=token, password1="new password 2",
                               password2="new password 2")
        self.assertEqual(done.code, 303)
        self.assertEqual(done.headers.getRawHeaders("location"), ["/?passwordreset=done"])
        self.assertIn("Your password was changed",
                      await (await self.get("/?passwordreset=done")).text())

        self.assertIsNone(await self.sessions.lookup(other))
        self.assertIn({INTERNAL: "close", "userid": "user//alice"}, closed)
        [event] = await self.store.get_events(["*"], "", action="accountchange")
        self.assertEqual((event["userid"], event["msg"], event["ids"]),
                         ("user//alice", "Password reset for user alice",
                          ["user//alice", "*", "server-users"]))
        self.assertNotIn("hash", event["account"])
        self.assertEqual(await self.store.find_by_type("pwreset"), [])

        self.assertEqual((await self.login("old password 1")).code, 401)
        self.assertEqual((await self.login("new password 2")).code, 303)

        again = await self.post("/resetpassword", t=token, password1="third password",
                                password2="third password")
        self.assertEqual(again.code, 400)
        self.assertIn("not valid", await again.text())
        self.assertEqual((await self.get(f"/resetpassword?t={token}")).code, 400)
        self.assertEqual((await self.login("new password 2")).code, 303)

    async def test_close_user_of_hub_is_called(self) -> None:
        """With the control hub's ``close_user``, the reset calls it for the account."""
        await self.make()
        assert self.reset is not None
        closed: list[str] = []
        self.reset.close_user = closed.append
        token, _ = await self.mailed_token()
        await self.post("/resetpassword", t=token, password1="new password 2",
                        password2="new password 2")
        self.assertEqual(closed, ["user//alice"])

    async def test_second_factor_still_needed(self) -> None:
        """The reset leaves the account's second factor: the next login asks for it."""
        await self.make()
        user = await self.store.get("user//alice")
        assert user is not None
        user["otpkeys"] = {"keys": [{"p": 12345678, "u": True}]}
        await self.store.set(user)
        token, _ = await self.mailed_token()
        await self.post("/resetpassword", t=token, password1="new password 2",
                        password2="new password 2")
        response = await self.login("new password 2")
        self.assertEqual(response.code, 401)
        self.assertIn('name="token"', await response.text())
        self.assertIn("otpkeys", await self.store.get("user//alice"))
        self.assertEqual((await self.login("new password 2", token="12345678")).code, 303)

    # -- refusals ----------------------------------------------------------------------

    async def test_expired_token_refused(self) -> None:
        """After 15 minutes the link gives the clear "not valid" page and changes nothing."""
        await self.make()
        token, _ = await self.mailed_token()
        self.clock.advance(TOKEN_LIFETIME)
        response = await self.get(f"/resetpassword?t={token}")
        self.assertEqual(response.code, 400)
        self.assertIn("has expired", await response.text())
        response = await self.post("/resetpassword", t=token, password1="new password 2",
                                   password2="new password 2")
        self.assertEqual(response.code, 400)
        self.assertEqual((await self.login("old password 1")).code, 303)

    async def test_new_request_replaces_token(self) -> None:
        """A second request makes the first link invalid; the second one works."""
        await self.make()
        first, _ = await self.mailed_token()
        second, _ = await self.mailed_token()
        self.assertNotEqual(first, second)
        self.assertEqual(len(await self.store.find_by_type("pwreset")), 1)
        self.assertEqual((await self.get(f"/resetpassword?t={first}")).code, 400)
        self.assertEqual((await self.get(f"/resetpassword?t={second}")).code, 200)

    async def test_locked_account(self) -> None:
        """A locked account gets no mail, and a link issued before it was locked is
        refused."""
        await self.make()
        token, _ = await self.mailed_token()
        user = await self.store.get("user//alice")
        assert user is not None
        user["siteadmin"] = SITERIGHT_LOCKED
        await self.store.set(user)
        self.assertEqual((await self.get(f"/resetpassword?t={token}")).code, 400)
        response = await self.post("/resetpassword", t=token, password1="new password 2",
                                   password2="new password 2")
        self.assertEqual(response.code, 400)
        self.limiter.success("reset-ip:127.0.0.1")
        sent = len(self.smtp.messages)
        await self.ask()
        self.assertEqual(len(self.smtp.messages), sent)

    async def test_unknown_address_same_page_no_mail(self) -> None:
        """An unknown address, an address of two accounts and a malformed one get the
        very page a known address gets, and no mail is sent."""
        await self.make()
        await self.accounts.create("bob", "bob password", email="twice@example.com")
        await self.accounts.create("carol", "carol password", email="twice@example.com")
        known_response, known = await self.ask("alice@example.com")
        self.assertEqual(len(self.smtp.messages), 1)
        for email in ("nobody@example.com", "twice@example.com", "not an address"):
            self.limiter.success("reset-ip:127.0.0.1")
            response, body = await self.ask(email)
            self.assertEqual((response.code, body), (known_response.code, known))
        self.assertEqual(len(self.smtp.messages), 1)
        self.assertEqual([r["userid"] for r in await self.store.find_by_type("pwreset")],
                         ["user//alice"])

    async def test_rate_limited_per_address_and_ip(self) -> None:
        """Requests are limited per e-mail address (even from another IP) and per IP
        (even for other addresses): past the limit the answer is 429 and nothing is
        sent."""
        await self.make()
        for _ in range(3):
            await self.mailed_token()
        # Another IP: the address is still blocked.
        self.limiter.success("reset-ip:127.0.0.1")
        sent = len(self.smtp.messages)
        response, body = await self.ask()
        self.assertEqual(response.code, 429)
        self.assertIn("Too many requests", body)
        self.assertEqual(len(self.smtp.messages), sent)
        # The same IP, other addresses: blocked after three.
        self.limiter.success("reset-ip:127.0.0.1")
        for n in range(3):
            self.assertEqual((await self.ask(f"other{n}@example.com"))[0].code, 200)
        self.assertEqual((await self.ask("other9@example.com"))[0].code, 429)
        self.clock.advance(601)
        self.assertEqual((await self.ask("other9@example.com"))[0].code, 200)

    async def test_cross_site_post_refused(self) -> None:
        """A forgot-password or reset post from another site is refused, nothing sent."""
        await self.make()
        response = await self.post("/forgotpassword", headers={"Origin": "https://evil.test"},
                                   email="alice@example.com")
        self.assertEqual(response.code, 403)
        assert self.reset is not None
        await self.reset.when_idle()
        self.assertEqual(self.smtp.messages, [])
        token, _ = await self.mailed_token()
        response = await self.post("/resetpassword", headers={"Origin": "https://evil.test"},
                                   t=token, password1="new password 2",
                                   password2="new password 2")
        self.assertEqual(response.code, 403)
        self.assertEqual((await self.get(f"/resetpassword?t={token}")).code, 200)

    # -- what must never show ----------------------------------------------------------

    async def test_token_never_in_logs_or_events(self) -> None:
        """Neither the token nor its hash appears in any log event or stored event."""
        await self.make()
        token, _ = await self.mailed_token()
        await self.get(f"/resetpassword?t={token}")
        await self.post("/resetpassword", t=token, password1="new password 2",
                        password2="new password 2")
        await self.post("/resetpassword", t=token, password1="new password 2",
                        password2="new password 2")
        digest = hashlib.sha256(token.encode()).hexdigest()
        self.assertTrue(self.log_lines)
        for line in self.log_lines:
            self.assertNotIn(token, line)
            self.assertNotIn(digest, line)
            self.assertNotIn("new password 2", line)
        events = await self.store.get_events(["*"], "")
        self.assertTrue(events)
        self.assertNotIn(token, repr(events))
        self.assertNotIn(digest, repr(events))

    async def test_pages_keep_strict_csp(self) -> None:
        """Every page of the flow has the login pages' CSP and no inline script or style."""
        await self.make()
        token, _ = await self.mailed_token()
        self.limiter.success("reset-ip:127.0.0.1")
        pages = [await self.get("/forgotpassword"),
                 await self.post("/forgotpassword", email="nobody@example.com"),
                 await self.get(f"/resetpassword?t={token}"),
                 await self.post("/resetpassword", t=token, password1="a", password2="b"),
                 await self.get("/resetpassword?t=unknown"),
                 await self.get("/?passwordreset=done")]
        for response in pages:
            self.assert_strict_page(response, await response.text())


class NoMailerTests(_Fixture):
    """Without a mailer there is no link and the routes do not exist."""

    async def test_no_link_no_routes(self) -> None:
        """No "Forgot your password?" link, and both routes answer 404."""
        await self.make(with_mailer=False)
        body = await (await self.get("/")).text()
        self.assertNotIn("forgotpassword", body.lower())
        self.assertNotIn("Forgot", body)
        self.assertEqual((await self.get("/forgotpassword")).code, 404)
        self.assertEqual((await self.post("/forgotpassword", email="alice@example.com")).code,
                         404)
        self.assertEqual((await self.get("/resetpassword?t=" + "a" * 43)).code, 404)
        self.assertEqual((await self.get("/?passwordreset=done")).code, 200)
        self.assertNotIn("password was changed",
                         await (await self.get("/?passwordreset=done")).text())
        self.assertEqual(self.smtp.messages, [])


class RealServerTests(TestCase):
    """The whole flow against ``twistd meshd`` over real HTTPS, mailing to a real SMTP
    server on 127.0.0.1 (the service wiring of meshd/service.py)."""

    async def test_reset_through_real_server(self) -> None:
        """The server mails a link to its own configured address; the link resets the
        password once; the token is nowhere in the server's log (access log included)."""
        smtp = SmtpServer(reactor)
        await smtp.start()
        self.addCleanup(lambda: defer.ensureDeferred(smtp.stop()))
        datapath = fresh_datapath()
        with open(datapath + ".json", "w") as f:
            json.dump({"smtp": {"host": "127.0.0.1", "port": smtp.port,
                                "from": "meshd@example.com"}}, f)
        server = ServerProcess(datapath, ["--config", datapath + ".json"]).start()
        self.addCleanup(server.stop)
        self.assertEqual(admin(server.datapath, "createaccount", "erin", "--pass",
                               "erin password", "--email", "erin@example.com").returncode, 0)
        self.assertIn('href="/forgotpassword"', request(server, "GET", "/").body)
        arriving = smtp.next_message()
        # Blocking client: the server mails after answering, when this reactor runs again.
        asked = request(server, "POST", "/forgotpassword", {"email": "erin@example.com"})
        self.assertEqual(asked.status, 200)
        self.assertIn("If an account has this address", asked.body)
        message = await arriving
        self.assertEqual(message.recipients, ["erin@example.com"])
        match = re.search(rf"https://127\.0\.0\.1:{server.port}(/resetpassword\?t=(\S+))",
                          message.parsed().get_content())
        assert match is not None
        path, token = match.group(1), match.group(2)
        self.assertEqual(request(server, "GET", path).status, 200)
        fields = {"t": token, "password1": "erin new password",
                  "password2": "erin new password"}
        done = request(server, "POST", "/resetpassword", fields)
        self.assertEqual((done.status, done.headers["Location"]),
                         (303, "/?passwordreset=done"))
        self.assertEqual(request(server, "POST", "/resetpassword", fields).status, 400)
        self.assertEqual(login(server, "erin", "erin password").status, 401)
        self.assertEqual(login(server, "erin", "erin new password").status, 303)
        self.assertIn("/resetpassword", server.log())
        self.assertNotIn(token, server.log())
        self.assertNotIn(hashlib.sha256(token.encode()).hexdigest(), server.log())
