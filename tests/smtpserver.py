"""A real SMTP server for tests: Twisted's own ``ESMTP`` on a loopback TCP port.

It keeps what it receives (envelope, message, whether the connection was TLS, who logged
in) so tests can check exactly what a client sent::

    server = SmtpServer(reactor)                                # plain, no STARTTLS
    server = SmtpServer(reactor, tls=ServerTls.make())          # STARTTLS offered
    server = SmtpServer(reactor, tls=..., implicit_tls=True)    # TLS from the first byte
    server = SmtpServer(reactor, logins={b"bob": b"pw"})        # AUTH required
    port = await server.start()
    ...
    message = await server.next_message()
    await server.stop()

``refuse`` names recipients answered 550; ``silent=True`` accepts connections and never
says a word (for client timeouts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any, Optional

from twisted.cred import checkers, credentials, portal
from twisted.internet import defer, protocol, ssl
from twisted.internet.interfaces import ISSLTransport
from twisted.mail import smtp
from twisted.mail.imap4 import LOGINCredentials, PLAINCredentials
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from tests.certutil import make_ca, make_leaf
from cryptography.hazmat.primitives import serialization


@dataclass
class ServerTls:
    """A test CA and a server certificate for ``localhost`` and 127.0.0.1, signed by it."""

    server_options: Any
    ca: ssl.Certificate

    @classmethod
    def make(cls) -> "ServerTls":
        ca_cert, ca_key = make_ca("meshd test mail CA")
        cert, key = make_leaf(ca_cert, ca_key, "localhost", sans=("localhost", "127.0.0.1"))
        pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption())
        server = ssl.PrivateCertificate.loadPEM(pem).options()
        return cls(server, ssl.Certificate.loadPEM(
            ca_cert.public_bytes(serialization.Encoding.PEM)))


@dataclass
class Received:
    """One delivered message: envelope, raw lines, and how it came."""

    sender: str
    recipients: list[str]
    lines: list[bytes]
    tls: bool
    login: Optional[bytes]

    @property
    def data(self) -> bytes:
        """The message as the client sent it (without the server's Received header)."""
        return b"\n".join(self.lines[1:]) + b"\n"

    def parsed(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=default_policy)  # type: ignore[return-value]


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, server: "SmtpServer", envelope: "_Envelope", recipient: str) -> None:
        self._server = server
        self._envelope = envelope
        self._recipient = recipient
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> "defer.Deferred[bytes]":
        env = self._envelope
        self._server.deliver(Received(env.sender, [self._recipient], self.lines, env.tls(),
                                      env.login))
        return defer.succeed(b"queued")

    def connectionLost(self) -> None:
        pass


@dataclass
class _Envelope:
    protocol: Any
    login: Optional[bytes] = None
    sender: str = ""

    def tls(self) -> bool:
        return bool(self.protocol.startedTLS) or ISSLTransport.providedBy(
            self.protocol.transport)


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, server: "SmtpServer", envelope: _Envelope) -> None:
        self._server = server
        self._envelope = envelope

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: from " + helo[0] + b" by meshd-tests"

    def validateFrom(self, helo: Any, origin: smtp.Address) -> smtp.Address:
        self._envelope.sender = str(origin)
        return origin

    def validateTo(self, user: smtp.User) -> Any:
        recipient = str(user.dest)
        if recipient in self._server.refuse:
            raise smtp.SMTPBadRcpt(user)
        return lambda: _Message(self._server, self._envelope, recipient)


@implementer(portal.IRealm)
class _Realm:
    def __init__(self, server: "SmtpServer", envelope: _Envelope) -> None:
        self._server = server
        self._envelope = envelope

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        if smtp.IMessageDelivery not in interfaces:
            raise NotImplementedError()
        self._envelope.login = avatar_id if avatar_id is not checkers.ANONYMOUS else None
        return smtp.IMessageDelivery, _Delivery(self._server, self._envelope), lambda: None


class _Silent(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.server.connected.append(self)  # type: ignore[attr-defined]
        waiting, self.factory.server._connected_waiters = (  # type: ignore[attr-defined]
            self.factory.server._connected_waiters, [])  # type: ignore[attr-defined]
        for d in waiting:
            d.callback(None)


class _Factory(protocol.ServerFactory):
    def __init__(self, server: "SmtpServer") -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        server = self.server
        if server.silent:
            silent = _Silent()
            silent.factory = self
            return silent
        context = server.tls.server_options if server.tls and not server.implicit_tls \
            else None
        esmtp = smtp.ESMTP({b"LOGIN": LOGINCredentials, b"PLAIN": PLAINCredentials}
                           if server.logins else {}, context)
        esmtp.host = b"mail.test"
        esmtp.factory = self
        envelope = _Envelope(esmtp)
        if server.logins:
            esmtp.portal = portal.Portal(  # type: ignore[assignment]
                _Realm(server, envelope),
                [checkers.InMemoryUsernamePasswordDatabaseDontUse(**{
                    k.decode(): v for k, v in server.logins.items()})])
        else:
            esmtp.delivery = _Delivery(server, envelope)
        server.connected.append(esmtp)
        return esmtp


@dataclass
class SmtpServer:
    """The server; ``messages`` are the delivered messages in order."""

    reactor: Any
    tls: Optional[ServerTls] = None
    implicit_tls: bool = False
    logins: dict[bytes, bytes] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)
    silent: bool = False
    messages: list[Received] = field(default_factory=list)
    connected: list[Any] = field(default_factory=list)
    _waiters: list["defer.Deferred[Received]"] = field(default_factory=list)
    _connected_waiters: list["defer.Deferred[None]"] = field(default_factory=list)
    _port: Any = None

    async def start(self) -> int:
        factory: Any = _Factory(self)
        if self.implicit_tls:
            assert self.tls is not None
            factory = TLSMemoryBIOFactory(self.tls.server_options, False, factory)
        self._port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        return int(self._port.getHost().port)

    @property
    def port(self) -> int:
        return int(self._port.getHost().port)

    async def stop(self) -> None:
        for proto in self.connected:
            if proto.transport is not None:
                proto.transport.abortConnection()
        await self._port.stopListening()

    def deliver(self, received: Received) -> None:
        self.messages.append(received)
        waiting, self._waiters = self._waiters, []
        for d in waiting:
            d.callback(received)

    def next_message(self) -> "defer.Deferred[Received]":
        """Fires with the next message delivered from now on."""
        d: "defer.Deferred[Received]" = defer.Deferred()
        self._waiters.append(d)
        return d

    def next_connection(self) -> "defer.Deferred[None]":
        """Fires when a (silent) connection is accepted."""
        d: "defer.Deferred[None]" = defer.Deferred()
        self._connected_waiters.append(d)
        return d
