"""Tests for meshd.mail: the SMTP client against a real Twisted ESMTP server on 127.0.0.1
(plain, STARTTLS, implicit TLS, AUTH), and its errors."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from meshd.config import parse_config
from meshd.mail import MailError, Mailer, mailer_from_config
from tests.smtpserver import ServerTls, SmtpServer

reactor: Any = global_reactor
NOW = 1_800_000_000  # 2027-01-15 08:00:00 UTC


_TLS: list[ServerTls] = []


def _server_tls() -> ServerTls:
    """One test CA and server certificate for the module (RSA keys take time to make)."""
    if not _TLS:
        _TLS.append(ServerTls.make())
    return _TLS[0]


def _clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


class MailerTestCase(TestCase):
    """Starts the servers a test asks for and stops them after it."""

    @property
    def tls(self) -> ServerTls:
        return _server_tls()

    async def server(self, **options: Any) -> SmtpServer:
        server = SmtpServer(reactor, **options)
        await server.start()
        self.addCleanup(server.stop)
        return server

    def mailer(self, server: SmtpServer, **options: Any) -> Mailer:
        options.setdefault("trust_root", self.tls.ca)
        options.setdefault("clock", _clock())
        options.setdefault("timeout", 10.0)
        return Mailer(host="localhost", port=server.port, sender="meshd <meshd@example.com>",
                      reactor=reactor, **options)

    async def failure(self, mailer: Mailer, to: str = "bob@example.com",
                      subject: str = "Hi", text: str = "Hello") -> MailError:
        try:
            await mailer.send(to, subject, text)
        except MailError as e:
            return e
        self.fail("sending succeeded")


class DeliveryTests(MailerTestCase):
    async def test_headers_and_body(self) -> None:
        """The server gets the envelope and exactly From, To, Subject, Date, Message-ID and
        a UTF-8 text body (quoted-printable; non-ASCII subject in RFC 2047)."""
        server = await self.server()
        text = "Hello Zoë,\n.leading dot stays\nsecond line\n"
        await self.mailer(server).send("bob@example.com", "Invitation — ünïcode", text)
        [received] = server.messages
        self.assertEqual((received.sender, received.recipients),
                         ("meshd@example.com", ["bob@example.com"]))
        self.assertFalse(received.tls)
        message = received.parsed()
        self.assertEqual(list(message.keys()),
                         ["From", "To", "Subject", "Date", "Message-ID", "Content-Type",
                          "Content-Transfer-Encoding", "MIME-Version"])
        self.assertEqual(message["From"], "meshd <meshd@example.com>")
        self.assertEqual(message["To"], "bob@example.com")
        self.assertEqual(message["Subject"], "Invitation — ünïcode")
        self.assertEqual(message["Date"], "Fri, 15 Jan 2027 08:00:00 +0000")
        self.assertRegex(message["Message-ID"], r"^<[0-9a-f]{32}@example\.com>$")
        self.assertEqual(message.get_content_type(), "text/plain")
        self.assertEqual(message.get_content_charset(), "utf-8")
        self.assertEqual(message["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(message.get_content(), text)
        self.assertTrue(received.data.isascii())
        raw_subject = [line for line in received.lines if line.startswith(b"Subject:")]
        self.assertEqual(len(raw_subject), 1)
        self.assertIn(b"=?utf-8?", raw_subject[0])

    async def test_starttls_checked(self) -> None:
        """STARTTLS is used when offered, with the certificate checked against the trust
        root."""
        server = await self.server(tls=self.tls)
        await self.mailer(server).send("bob@example.com", "Hi", "Hello")
        [received] = server.messages
        self.assertTrue(received.tls)

    async def test_starttls_untrusted_certificate(self) -> None:
        """A certificate that does not chain to the trust store (the system's by default)
        fails with a TLS reason, and nothing is delivered."""
        server = await self.server(tls=self.tls)
        error = await self.failure(self.mailer(server, trust_root=None))
        self.assertIn("TLS with the mail server localhost:", error.reason)
        self.assertIn("certificate verify failed", error.reason)
        self.assertEqual(server.messages, [])

    async def test_cert_check_off(self) -> None:
        """With tlsCertCheck false an untrusted certificate is accepted (still TLS)."""
        server = await self.server(tls=self.tls)
        await self.mailer(server, trust_root=None, cert_check=False).send(
            "bob@example.com", "Hi", "Hello")
        self.assertTrue(server.messages[0].tls)

    async def test_implicit_tls(self) -> None:
        """``tls: true`` speaks TLS from the first byte (port 465 style)."""
        server = await self.server(tls=self.tls, implicit_tls=True)
        await self.mailer(server, tls=True).send("bob@example.com", "Hi", "Hello")
        [received] = server.messages
        self.assertTrue(received.tls)

    async def test_implicit_tls_untrusted(self) -> None:
        """Implicit TLS checks the certificate too."""
        server = await self.server(tls=self.tls, implicit_tls=True)
        error = await self.failure(self.mailer(server, tls=True, trust_root=None))
        self.assertIn("certificate verify failed", error.reason)

    async def test_auth(self) -> None:
        """With user and pass the client logs in (over STARTTLS) before sending."""
        server = await self.server(tls=self.tls, logins={b"bob": b"s3cret"})
        await self.mailer(server, user="bob", password="s3cret").send(
            "carol@example.com", "Hi", "Hello")
        [received] = server.messages
        self.assertEqual((received.login, received.tls), (b"bob", True))

    async def test_auth_refused(self) -> None:
        """A wrong password is a readable error that does not contain the password."""
        server = await self.server(tls=self.tls, logins={b"bob": b"s3cret"})
        mailer = self.mailer(server, user="bob", password="wrong-pw")
        error = await self.failure(mailer)
        self.assertIn("refused the login of bob", error.reason)
        self.assertNotIn("wrong-pw", error.reason)
        self.assertNotIn("wrong-pw", repr(mailer))
        self.assertEqual(server.messages, [])

    async def test_auth_not_offered(self) -> None:
        """With user and pass set, a server that offers no login is an error (the message is
        not sent without the login)."""
        server = await self.server()
        error = await self.failure(self.mailer(server, user="bob", password="s3cret"))
        self.assertIn("offers no login method", error.reason)
        self.assertEqual(server.messages, [])


class FailureTests(MailerTestCase):
    async def test_refused_recipient(self) -> None:
        """A recipient the server refuses: MailError naming it with the server's answer."""
        server = await self.server(refuse={"nobody@example.com"})
        error = await self.failure(self.mailer(server), to="nobody@example.com")
        self.assertRegex(error.reason, r"^the mail server localhost:\d+ refused the recipient "
                                       r"nobody@example\.com: 550 ")
        self.assertEqual(server.messages, [])

    async def test_dead_server(self) -> None:
        """Nothing listening: MailError 'cannot reach the mail server'."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        mailer = Mailer(host="127.0.0.1", port=port, sender="meshd@example.com",
                        reactor=reactor, timeout=5)
        error = await self.failure(mailer)
        self.assertIn(f"cannot reach the mail server 127.0.0.1:{port}", error.reason)
        self.assertIn("refused", error.reason.lower())

    async def test_timeout(self) -> None:
        """A server that never answers: after ``timeout`` seconds on the injected clock,
        MailError says so and the connection is closed."""
        server = await self.server(silent=True)
        clock = _clock()
        connected = server.next_connection()
        mailer = self.mailer(server, clock=clock, timeout=7)
        sending = mailer.send("bob@example.com", "Hi", "Hello")
        await connected
        for _ in range(500):  # until the client side has seen the connection too
            if clock.getDelayedCalls():
                break
            await deferLater(reactor, 0.01)
        self.assertNoResult(sending)
        clock.advance(6.9)
        self.assertNoResult(sending)
        clock.advance(0.1)
        try:
            await sending
        except MailError as e:
            self.assertEqual(e.reason, f"the mail server localhost:{server.port} did not "
                                       f"answer within 7 seconds")
        else:
            self.fail("no timeout")

    async def test_line_breaks_refused(self) -> None:
        """CR or LF in the subject or the recipient is refused before any connection."""
        server = await self.server()
        mailer = self.mailer(server)
        for to, subject in [("bob@example.com", "Hi\r\nBcc: eve@example.com"),
                            ("bob@example.com", "Hi\nX: y"), ("bob@example.com", "Hi\r"),
                            ("bob@example.com\r\nBcc: eve@example.com", "Hi"),
                            ("bob@example.com\n", "Hi")]:
            error = await self.failure(mailer, to=to, subject=subject)
            self.assertIn("must not contain line breaks", error.reason)
        self.assertEqual((server.messages, server.connected), ([], []))

    async def test_bad_addresses(self) -> None:
        """Lists, display names and non-ASCII recipients are refused; so is a missing
        sender."""
        server = await self.server()
        for to in ("a@example.com, b@example.com", "Bob <bob@example.com>", "bob",
                   "zoë@example.com", "@example.com"):
            error = await self.failure(self.mailer(server), to=to)
            self.assertIn("recipient address", error.reason)
        no_sender = Mailer(host="localhost", port=server.port, sender="", reactor=reactor)
        error = await self.failure(no_sender)
        self.assertEqual(error.reason, "no sender address is configured (smtp.from)")
        self.assertEqual(server.connected, [])


class ConfigTests(TestCase):
    def test_from_config(self) -> None:
        """The smtp section gives a mailer with its settings; no section gives none."""
        self.assertIsNone(mailer_from_config(parse_config({}).smtp, reactor=reactor))
        config = parse_config({"smtp": {"host": "mail.example.com", "port": 465,
                                        "from": "x@example.com", "user": "u", "pass": "p",
                                        "tls": True, "tlsCertCheck": False}})
        mailer = mailer_from_config(config.smtp, reactor=reactor)
        assert mailer is not None
        self.assertEqual((mailer.host, mailer.port, mailer.sender, mailer.user, mailer.tls,
                          mailer.cert_check),
                         ("mail.example.com", 465, "x@example.com", "u", True, False))
        self.assertNotIn("p>", repr(mailer))
