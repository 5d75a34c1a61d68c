"""Outgoing e-mail over SMTP (the ``smtp`` section of the configuration).

meshd is the SMTP client; the configured server relays.  One message is one connection:

    meshd                                   mail server
      ── TCP connect (TLS at once when ``tls`` is true: "implicit TLS", port 465) ──>
      <── 220 greeting
      ── EHLO ──>                 <── 250 capabilities
      ── STARTTLS ──> (when offered and the connection is not TLS yet), then EHLO again
      ── AUTH ──> (when ``user`` and ``pass`` are set: then the server must offer it)
      ── MAIL FROM / RCPT TO / DATA / QUIT ──>

Limits and checks: every wait for the server (connecting, each answer) is bounded by
``timeout`` seconds; the server's certificate is checked against the system's trust store
(unless ``tlsCertCheck`` is false); header values (To, Subject, the sender) must not contain
CR or LF, so a user-supplied value can never add headers; addresses are plain ASCII
``local@domain``.  Every failure is a :class:`MailError` whose reason is one readable line
(the password never appears in it nor in the log).

Messages are ``text/plain; charset=utf-8`` in quoted-printable, so they pass any relay
(no 8BITMIME needed), with From, To, Subject (RFC 2047 when not ASCII), Date and Message-ID.
"""

from __future__ import annotations

import ipaddress
import secrets
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import format_datetime, parseaddr
from io import BytesIO
from typing import Any, Optional

from twisted.internet import ssl
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from meshd.config import Smtp

__all__ = ["MailError", "Mailer", "mailer_from_config"]

#: Seconds allowed for connecting and for each answer of the server.
DEFAULT_TIMEOUT = 30.0

# The message as Twisted's client wants it: "\n" line ends (it sends CRLF and dot-stuffs).
_POLICY = default_policy.clone(linesep="\n", max_line_length=78)


class MailError(Exception):
    """A message could not be sent; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_header(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise MailError(f"the {name} must not contain line breaks")


def _check_address(name: str, value: str) -> None:
    """A plain ``local@domain`` address in ASCII, nothing else (no display name, no list)."""
    _check_header(name, value)
    if not value.isascii():
        raise MailError(f"the {name} address must be ASCII: {value!r}")
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(
            c.isspace() or c in '<>(),;:"[]\\' for c in value) or value.count("@") != 1:
        raise MailError(f"the {name} address is not an e-mail address: {value!r}")


def _text(value: Any) -> str:
    """An SMTP client error's server text, as one line."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).split())


class _Factory(smtp.ESMTPSenderFactory):
    """Twisted's ESMTP sender factory with the idle timer on the injected clock."""

    def __init__(self, *args: Any, clock: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.callLater = self._clock.callLater  # TimeoutMixin's timer
        return protocol


class Mailer:
    """Sends plain-text messages through one SMTP server.

    ``reactor`` makes the connections (IReactorTCP); ``clock`` (default: the reactor) times
    the server's answers; ``trust_root`` (default: the system's trust store) is what the
    server's certificate must chain to; ``helo_name`` is the name meshd gives in EHLO.
    """

    _log = Logger()

    def __init__(self, *, host: str, port: int, sender: str, reactor: Any,
                 user: Optional[str] = None, password: Optional[str] = None,
                 tls: bool = False, cert_check: bool = True, clock: Any = None,
                 timeout: float = DEFAULT_TIMEOUT, trust_root: Any = None,
                 helo_name: Optional[str] = None) -> None:
        self.host = host or "localhost"
        self.port = port
        self.sender = sender
        self.user = user
        self._password = password
        self.tls = tls
        self.cert_check = cert_check
        self.timeout = timeout
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._trust_root = trust_root
        self._helo_name = helo_name

    def __repr__(self) -> str:  # never the password
        return (f"<Mailer {self.host}:{self.port} tls={self.tls} "
                f"auth={'yes' if self._authenticates else 'no'}>")

    @property
    def _authenticates(self) -> bool:
        return bool(self.user) and self._password is not None

    def _tls_options(self) -> IOpenSSLClientConnectionCreator:
        if not self.cert_check:
            return ssl.CertificateOptions(verify=False)  # type: ignore[return-value]
        if self._trust_root is not None:
            return ssl.optionsForClientTLS(self.host, trustRoot=self._trust_root)
        return ssl.optionsForClientTLS(self.host)  # platformTrust(): the system's store

    def _envelope_sender(self) -> str:
        if not self.sender:
            raise MailError("no sender address is configured (smtp.from)")
        _check_header("sender", self.sender)
        address = parseaddr(self.sender)[1]
        _check_address("sender", address)
        return address

    def compose(self, to: str, subject: str, text: str) -> bytes:
        """The whole message, headers and body, with ``\\n`` line ends.

        Raises :class:`MailError` for a line break in a header value or a bad address.
        """
        sender = self._envelope_sender()
        _check_address("recipient", to)
        _check_header("subject", subject)
        message = EmailMessage(policy=_POLICY)
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        when = datetime.fromtimestamp(self._clock.seconds(), timezone.utc)
        message["Date"] = format_datetime(when)
        domain = Address(addr_spec=sender).domain
        message["Message-ID"] = f"<{secrets.token_hex(16)}@{domain}>"
        message.set_content(text.replace("\r\n", "\n"), charset="utf-8",
                            cte="quoted-printable")
        return message.as_bytes(policy=_POLICY)

    def send(self, to: str, subject: str, text: str) -> "Deferred[None]":
        """Send one message; fails with :class:`MailError` (cancelling disconnects)."""
        try:
            data = self.compose(to, subject, text)
            sender = self._envelope_sender()
        except MailError as e:
            return fail(e)
        done: "Deferred[Any]" = Deferred()
        options = self._tls_options()
        factory = _Factory(
            self.user.encode("utf-8") if self._authenticates and self.user else None,
            self._password.encode("utf-8") if self._authenticates and self._password else None,
            sender, [to], BytesIO(data), done, retries=0, timeout=self.timeout,
            contextFactory=options, heloFallback=not self._authenticates,
            requireAuthentication=self._authenticates, requireTransportSecurity=False,
            hostname=self.host, clock=self._clock)
        if self._helo_name:
            factory.domain = _helo(self._helo_name)
        wrapped: Any = TLSMemoryBIOFactory(options, True, factory) if self.tls else factory
        connector = self._reactor.connectTCP(self.host, self.port, wrapped,
                                             timeout=self.timeout)

        def cancel(result: "Deferred[None]") -> None:
            factory.sendFinished = True
            connector.disconnect()

        outcome: "Deferred[None]" = Deferred(cancel)

        def sent(_: object) -> None:
            self._log.info("mail to {to} sent through {host}:{port}", to=to, host=self.host,
                           port=self.port)
            if not outcome.called:
                outcome.callback(None)

        def failed(failure: Failure) -> None:
            error = self._describe(failure, to)
            self._log.warn("mail to {to} through {host}:{port} failed: {reason}", to=to,
                           host=self.host, port=self.port, reason=error.reason)
            if not outcome.called:
                outcome.errback(error)

        done.addCallbacks(sent, failed)
        return outcome

    def _describe(self, failure: Failure, to: str) -> MailError:
        """A failure of Twisted's client as one readable line."""
        where = f"{self.host}:{self.port}"
        error = failure.value
        if isinstance(error, smtp.SMTPTimeoutError):
            return MailError(f"the mail server {where} did not answer within "
                             f"{self.timeout:g} seconds")
        if isinstance(error, smtp.SMTPDeliveryError):
            addresses: Any = error.addresses or []
            refused = [(address, code, response) for address, code, response
                       in addresses if code not in smtp.SUCCESS]
            if refused:
                _address, code, response = refused[0]
                return MailError(f"the mail server {where} refused the recipient {to}: "
                                 f"{code} {_text(response)}")
            return MailError(f"the mail server {where} refused the message: "
                             f"{error.code} {_text(error.resp)}")
        if isinstance(error, smtp.AUTHDeclinedError):
            return MailError(f"the mail server {where} refused the login of {self.user}: "
                             f"{error.code} {_text(error.resp)}")
        if isinstance(error, (smtp.AUTHRequiredError, smtp.EHLORequiredError)):
            return MailError(f"the mail server {where} offers no login method meshd knows "
                             f"(smtp.user is set)")
        if isinstance(error, smtp.TLSError):
            return MailError(f"TLS with the mail server {where} failed")
        if isinstance(error, smtp.SMTPConnectError):
            cause = error.__cause__
            if cause is not None and _is_tls_error(cause):
                return MailError(f"TLS with the mail server {where} failed: "
                                 f"{_tls_reason(cause)}")
            reason = _text(cause) if cause is not None else _text(error.resp)
            return MailError(f"cannot reach the mail server {where}: {reason}")
        if isinstance(error, smtp.SMTPClientError):
            return MailError(f"the mail server {where} answered {error.code} "
                             f"{_text(error.resp)}")
        self._log.failure("mail to {to} failed", failure, to=to)
        return MailError(f"sending through {where} failed: {type(error).__name__}")


def _helo(name: str) -> bytes:
    """The EHLO argument: a host name, or an address literal (``[192.0.2.1]``)."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name.encode("idna")
    literal = f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"
    return literal.encode("ascii")


def _is_tls_error(error: BaseException) -> bool:
    from OpenSSL.SSL import Error as OpenSSLError

    return isinstance(error, OpenSSLError)


def _tls_reason(error: BaseException) -> str:
    """OpenSSL's reason strings (such as ``certificate verify failed``)."""
    details = error.args[0] if error.args else None
    if isinstance(details, list):
        reasons = [str(item[-1]) for item in details if isinstance(item, tuple) and item]
        if reasons:
            return "; ".join(reasons)
    return _text(error) or type(error).__name__


def mailer_from_config(smtp_config: Optional[Smtp], *, reactor: Any, clock: Any = None,
                       helo_name: Optional[str] = None) -> Optional[Mailer]:
    """The mailer of the ``smtp`` section; None when there is none (no e-mail)."""
    if smtp_config is None:
        return None
    return Mailer(host=smtp_config.host, port=smtp_config.port, sender=smtp_config.from_,
                  user=smtp_config.user, password=smtp_config.password,
                  tls=smtp_config.tls, cert_check=smtp_config.tls_cert_check,
                  reactor=reactor, clock=clock, helo_name=helo_name)
