"""The MPS TLS port.

Intel AMT firmware connects here over TLS (1.0 to 1.2, see :mod:`meshd.tls`) and speaks
APF (see ``specs/mps-apf.md``).  The APF state machine is its own issue; until it lands
this listener completes the TLS handshake, answers the plain ``GET /`` that MeshCentral's
MPS port also answers, and closes any other connection with a log line, holding nothing.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

_PAGE = (b"<!DOCTYPE html><html><head><title>meshd MPS</title></head>"
         b"<body>Intel&reg; AMT CIRA server</body></html>")
_MAX_REQUEST = 4096


class MpsPlaceholderProtocol(Protocol, TimeoutMixin):
    """Answers ``GET``/``HEAD`` with a short page; anything else is closed."""

    _log = Logger()
    idle_timeout = 30

    def connectionMade(self) -> None:
        self._buffer = b""
        self.setTimeout(self.idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._buffer += data
        if not (self._buffer.startswith(b"GET ") or self._buffer.startswith(b"HEAD ")
                or b"GET ".startswith(self._buffer) or b"HEAD ".startswith(self._buffer)):
            peer = self.transport.getPeer()
            self._log.info("MPS connection from {peer} closed: APF is not served yet",
                           peer=f"{peer.host}:{peer.port}")
            self.transport.loseConnection()
            return
        if b"\r\n\r\n" in self._buffer:
            body = b"" if self._buffer.startswith(b"HEAD ") else _PAGE
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n" % len(_PAGE) + body)
            self.transport.loseConnection()
        elif len(self._buffer) > _MAX_REQUEST:
            self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.setTimeout(None)


class MpsFactory(Factory):
    protocol = MpsPlaceholderProtocol
    noisy = False
