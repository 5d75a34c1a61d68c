"""A simulated Intel AMT CIRA device, for tests and ``bench/mps_devices.py``.

It speaks the device side of APF over a real Twisted TLS client connection, the way
AMT firmware does (spec ``mps-apf.md`` section 3)::

    PROTOCOLVERSION 1.0 <uuid>, SERVICE_REQUEST auth     -> SERVICE_ACCEPT
    USERAUTH_REQUEST user/password                        -> USERAUTH_SUCCESS | FAILURE
    SERVICE_REQUEST pfwd, tcpip-forward for each port     -> SERVICE_ACCEPT, REQUEST_SUCCESS
    KEEPALIVE_OPTIONS_REQUEST                             <- answered at once
    CHANNEL_OPEN from the server                          <- confirmed if a service listens
                                                             on that port, else refused

:class:`AmtWsman` is a service for port 16992 that answers like Intel AMT's WSMAN: digest
authentication first, then ``RequestPowerStateChange`` (see its docstring).

``ready`` fires when every forward has been answered, or fails with :class:`LoginRefused`
or :class:`ClosedEarly`.  ``closed`` fires with the server's DISCONNECT reason (or None).
Channels keep real window accounting on both sides; ``auto_adjust=False`` makes the
device a slow consumer that only reopens the window on ``DeviceChannel.consume``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
import uuid
from typing import Any, Callable, Iterator, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from meshd.mps import apf

__all__ = ["AmtWsman", "CiraDevice", "ClosedEarly", "DeviceChannel", "HttpResponder",
           "LoginRefused", "connect_device"]


class LoginRefused(Exception):
    """The server answered USERAUTH_FAILURE."""


class ClosedEarly(Exception):
    """The connection ended before the device was ready."""


class DeviceChannel:
    """The device's end of a server-opened channel."""

    def __init__(self, device: "CiraDevice", local_id: int, remote_id: int, port: int,
                 send_credit: int, window: int) -> None:
        self.device = device
        self.local_id = local_id
        self.remote_id = remote_id
        self.port = port
        self.send_credit = send_credit
        self.recv_window = window
        self.received = bytearray()
        self.unconsumed = 0
        self.pending = bytearray()
        self.closed = False
        self.close_sent = False
        self.service: Any = None
        self.on_data: Optional[Callable[[bytes], None]] = None
        self.when_closed: defer.Deferred[None] = defer.Deferred()

    def write(self, data: bytes) -> None:
        """Send as far as the server's window allows; keep the rest for WINDOW_ADJUST."""
        self.pending += data
        self._flush()

    def _flush(self) -> None:
        while self.pending and self.send_credit and not self.closed:
            size = min(len(self.pending), self.send_credit, 16384)
            self.device.send(apf.ChannelData(self.remote_id, bytes(self.pending[:size])))
            del self.pending[:size]
            self.send_credit -= size

    def consume(self, nbytes: Optional[int] = None) -> None:
        """Hand ``nbytes`` (default: everything received) back to the server as window."""
        if nbytes is None:
            nbytes = self.unconsumed
        self.unconsumed -= nbytes
        self.recv_window += nbytes
        if nbytes and not self.closed:
            self.device.send(apf.ChannelWindowAdjust(self.remote_id, nbytes))

    def close(self) -> None:
        if not self.closed and not self.close_sent:
            self.close_sent = True
            self.device.send(apf.ChannelClose(self.remote_id))

    def _data(self, data: bytes) -> None:
        if len(data) > self.recv_window:
            self.device.violations.append(f"channel {self.local_id}: window exceeded")
        self.recv_window -= len(data)
        self.received += data
        self.unconsumed += len(data)
        if self.device.auto_adjust:
            self.consume()
        if self.service is not None:
            self.service.data_received(self, data)
        if self.on_data is not None:
            self.on_data(data)

    def _closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.close_sent:
            self.close_sent = True
            self.device.send(apf.ChannelClose(self.remote_id))
        self.when_closed.callback(None)


def http_requests(holder: Any) -> Iterator[tuple[bytes, bytes]]:
    """The complete requests (head, ``Content-Length`` body) at the start of
    ``holder.buffer``, each taken out of it as it is yielded."""
    while b"\r\n\r\n" in holder.buffer:
        head, rest = holder.buffer.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if len(rest) < length:
            return
        body, holder.buffer = rest[:length], rest[length:]
        yield head, body


class HttpResponder:
    """A WSMAN-like HTTP server on a channel: answers each complete request (headers plus
    ``Content-Length`` body) with a small SOAP-ish XML body naming the request."""

    def __init__(self) -> None:
        self.buffer = b""
        self.requests: list[bytes] = []

    def data_received(self, channel: DeviceChannel, data: bytes) -> None:
        self.buffer += data
        for head, body in http_requests(self):
            self.requests.append(head + b"\r\n\r\n" + body)
            request_line = head.split(b"\r\n", 1)[0]
            reply = (b"<?xml version=\"1.0\"?><Envelope><Body><Answer request=\""
                     + request_line + b"\" bytes=\"%d\"/></Body></Envelope>" % len(body))
            channel.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(reply) + reply)


AMT_SERVER = b"Intel(R) Active Management Technology 11.8.55.3510"
_CIM = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
_POWER_SERVICE = _CIM + "CIM_PowerManagementService"
_AUTH_PARAM = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,\s]*)')


class AmtWsman:
    """A simulated Intel AMT WSMAN service (port 16992) that requires HTTP digest
    authentication and answers ``CIM_PowerManagementService.RequestPowerStateChange``.

    Like AMT firmware: the realm is ``Digest:`` + 32 hex digits, each 401 issues a fresh
    nonce (remembered, so any issued nonce is accepted later), ``qop="auth"``, and
    answers are chunked.  An authenticated request must use one of the issued nonces,
    an increasing ``nc`` for it, ``uri`` ``/wsman`` and the right MD5 response for
    ``user``/``password``; the envelope must name the power management service, the
    method, an integer PowerState and the managed system.  ``power_states`` lists
    (state, user) of accepted calls; ``problems`` what was wrong with refused ones;
    ``unauthorized`` counts 401s.  ``raw_answer`` replaces every answer with those bytes;
    ``hang`` never answers.  Pass :meth:`service` as the device's service factory.
    """

    def __init__(self, user: str = "admin", password: str = "P@ssw0rd!", *,
                 return_value: int = 0, raw_answer: Optional[bytes] = None,
                 hang: bool = False) -> None:
        self.user = user
        self.password = password
        self.return_value = return_value
        self.raw_answer = raw_answer
        self.hang = hang
        self.realm = "Digest:" + os.urandom(16).hex().upper()
        self.nonces: dict[str, int] = {}  # nonce -> highest nc seen
        self.power_states: list[tuple[int, str]] = []
        self.problems: list[str] = []
        self.requests: list[bytes] = []
        self.unauthorized = 0

    def service(self) -> "_AmtWsmanChannel":
        return _AmtWsmanChannel(self)

    # -- answering one request --

    def answer(self, head: bytes, body: bytes) -> Optional[bytes]:
        self.requests.append(head + b"\r\n\r\n" + body)
        if self.hang:
            return None
        if self.raw_answer is not None:
            return self.raw_answer
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if lines[0] != "POST /wsman HTTP/1.1":
            return self._fault(400, f"bad request line {lines[0]!r}")
        authorization = headers.get("authorization")
        if authorization is None:
            return self._challenge()
        user = self._check_digest(authorization)
        if user is None:
            return self._challenge()
        state = self._check_envelope(body)
        if state is None:
            return self._fault(400, "bad envelope")
        self.power_states.append((state, user))
        return self._chunked(200, b"OK", self._output(self.return_value))

    def _challenge(self) -> bytes:
        self.unauthorized += 1
        nonce = base64.b64encode(os.urandom(18)).decode()
        self.nonces[nonce] = 0
        page = b"<html><head><title>Intel&reg; Active Management Technology</title></head>" \
               b"<body>Unauthorized</body></html>"
        return (b"HTTP/1.1 401 Unauthorized\r\n"
                b'WWW-Authenticate: Digest realm="' + self.realm.encode() + b'", nonce="'
                + nonce.encode() + b'",stale="false",qop="auth"\r\n'
                b"Content-Type: text/html\r\nServer: " + AMT_SERVER + b"\r\n"
                b"Content-Length: %d\r\n\r\n" % len(page) + page)

    def _check_digest(self, authorization: str) -> Optional[str]:
        scheme, _, rest = authorization.partition(" ")
        if scheme != "Digest":
            self.problems.append(f"scheme {scheme!r}")
            return None
        params = {key: (value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                        if value.startswith('"') else value)
                  for key, value in _AUTH_PARAM.findall(rest)}
        nonce, nc = params.get("nonce", ""), params.get("nc", "")
        if params.get("realm") != self.realm or nonce not in self.nonces:
            self.problems.append("unknown realm or nonce")
            return None
        if params.get("uri") != "/wsman" or params.get("qop") != "auth" \
                or not re.fullmatch(r"[0-9a-f]{8}", nc) or not params.get("cnonce"):
            self.problems.append(f"bad digest parameters {sorted(params)}")
            return None
        if int(nc, 16) <= self.nonces[nonce]:
            self.problems.append("nonce count replayed")
            return None
        self.nonces[nonce] = int(nc, 16)

        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        ha1 = md5(f"{self.user}:{self.realm}:{self.password}")
        expected = md5(f"{ha1}:{nonce}:{nc}:{params['cnonce']}:auth:{md5('POST:/wsman')}")
        if params.get("username") != self.user or params.get("response") != expected:
            self.problems.append("wrong user name or password")
            return None
        return self.user

    def _check_envelope(self, body: bytes) -> Optional[int]:
        import xml.etree.ElementTree as ElementTree

        def local(element: Any) -> str:
            return str(element.tag).rsplit("}", 1)[-1]

        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            self.problems.append("envelope is not XML")
            return None
        header = {local(e): (e.text or "") for part in root if local(part) == "Header"
                  for e in part}
        if header.get("Action") != _POWER_SERVICE + "/RequestPowerStateChange" \
                or header.get("ResourceURI") != _POWER_SERVICE or header.get("To") != "/wsman":
            self.problems.append(f"wrong header {header}")
            return None
        inputs = [e for part in root if local(part) == "Body" for e in part
                  if local(e) == "RequestPowerStateChange_INPUT"
                  and e.tag.startswith("{" + _POWER_SERVICE + "}")]
        if len(inputs) != 1:
            self.problems.append("no RequestPowerStateChange_INPUT")
            return None
        arguments = {local(e): e for e in inputs[0]}
        state_text = (arguments["PowerState"].text or "") if "PowerState" in arguments else ""
        element = arguments.get("ManagedElement")
        resource = selectors = None
        if element is not None:
            resource = next((e.text for e in element.iter() if local(e) == "ResourceURI"), None)
            selectors = {e.get("Name"): e.text for e in element.iter()
                         if local(e) == "Selector"}
        if not state_text.isdigit() or resource != _CIM + "CIM_ComputerSystem" or selectors != {
                "CreationClassName": "CIM_ComputerSystem", "Name": "ManagedSystem"}:
            self.problems.append(f"bad arguments {state_text!r} {resource!r} {selectors!r}")
            return None
        return int(state_text)

    def _output(self, value: int) -> bytes:
        return ('<?xml version="1.0" encoding="UTF-8"?><a:Envelope '
                'xmlns:a="http://www.w3.org/2003/05/soap-envelope" '
                'xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
                'xmlns:c="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
                f'xmlns:g="{_POWER_SERVICE}"><a:Header>'
                '<b:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</b:To>'
                '<b:RelatesTo>1</b:RelatesTo><b:Action a:mustUnderstand="true">'
                f'{_POWER_SERVICE}/RequestPowerStateChangeResponse</b:Action>'
                '<b:MessageID>uuid:00000000-8086-8086-8086-000000000001</b:MessageID>'
                f'<c:ResourceURI>{_POWER_SERVICE}</c:ResourceURI></a:Header><a:Body>'
                f'<g:RequestPowerStateChange_OUTPUT><g:ReturnValue>{value}</g:ReturnValue>'
                '</g:RequestPowerStateChange_OUTPUT></a:Body></a:Envelope>').encode()

    def _fault(self, status: int, reason: str) -> bytes:
        self.problems.append(reason)
        body = ('<?xml version="1.0" encoding="UTF-8"?><a:Envelope '
                'xmlns:a="http://www.w3.org/2003/05/soap-envelope"><a:Body><a:Fault>'
                '<a:Code><a:Value>a:Sender</a:Value></a:Code><a:Reason>'
                f'<a:Text xml:lang="en-US">{reason}</a:Text></a:Reason></a:Fault>'
                '</a:Body></a:Envelope>').encode()
        return self._chunked(status, b"Bad Request", body)

    @staticmethod
    def _chunked(status: int, reason: bytes, body: bytes) -> bytes:
        half = len(body) // 2
        chunks = b"".join(b"%x\r\n" % len(part) + part + b"\r\n"
                          for part in (body[:half], body[half:]) if part)
        return (b"HTTP/1.1 %d " % status + reason + b"\r\nServer: " + AMT_SERVER
                + b"\r\nX-Frame-Options: DENY\r\n"
                b"Content-Type: application/soap+xml; charset=UTF-8\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")


class _AmtWsmanChannel:
    """One channel's HTTP requests for :class:`AmtWsman` (several per channel allowed)."""

    def __init__(self, amt: AmtWsman) -> None:
        self.amt = amt
        self.buffer = b""

    def data_received(self, channel: DeviceChannel, data: bytes) -> None:
        self.buffer += data
        for head, body in http_requests(self):
            answer = self.amt.answer(head, body)
            if answer is not None:
                channel.write(answer)


@implementer(IHandshakeListener)
class CiraDevice(Protocol):
    """One simulated AMT device; see the module docstring."""

    def __init__(self, user: str, password: bytes, system_id: Optional[uuid.UUID] = None, *,
                 ports: tuple[int, ...] = (16992, 16993),
                 services: Optional[dict[int, Callable[[], Any]]] = None,
                 window: int = 32768, auto_adjust: bool = True,
                 login: bool = True, clock: Callable[[], float] = time.perf_counter) -> None:
        self.user = user
        self.password = password
        self.system_id = system_id or uuid.uuid4()
        self.ports = ports
        self.services = services if services is not None else {}
        self.window = window
        self.auto_adjust = auto_adjust
        self.login = login
        self.clock = clock
        self.parser = apf.ApfParser(apf.Direction.TO_DEVICE)
        self.received: list[apf.Message] = []
        self.violations: list[str] = []
        self.channels: dict[int, DeviceChannel] = {}
        self.channel_opened: list[DeviceChannel] = []
        self.on_channel: Optional[Callable[[DeviceChannel], None]] = None
        self.ready: defer.Deferred[CiraDevice] = defer.Deferred()
        self.closed: defer.Deferred[Optional[int]] = defer.Deferred()
        self.disconnect_reason: Optional[int] = None
        self.times: dict[str, float] = {"start": clock()}
        self.connected = False
        self.made: defer.Deferred[CiraDevice] = defer.Deferred()
        self.secure: defer.Deferred[CiraDevice] = defer.Deferred()
        self._early: list[bytes] = []
        self._forwards_waiting = 0
        self._keepalives: dict[int, list[defer.Deferred[int]]] = {}
        self._next_channel = 1000

    # -- Twisted --

    def connectionMade(self) -> None:
        self.connected = True
        self.times["tcp"] = self.clock()
        if self.login:
            self.send(apf.ProtocolVersion(1, 0, 0, self.system_id))
            self.send(apf.ServiceRequest(apf.AUTH_SERVICE))
        early, self._early = self._early, []
        self.transport.writeSequence(early)
        self.made.callback(self)

    def handshakeCompleted(self) -> None:
        self.times["tls"] = self.clock()
        self.secure.callback(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self.parser.feed(data)
        except apf.ApfProtocolError as error:
            self.violations.append(f"server sent bad APF: {error}")
            messages = error.parsed
            self.transport.loseConnection()
        for message in messages:
            self.received.append(message)
            self._handle(message)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self.times["closed"] = self.clock()
        for channel in list(self.channels.values()):
            channel.closed = True
            if not channel.when_closed.called:
                channel.when_closed.callback(None)
        if not self.ready.called:
            self.ready.errback(ClosedEarly(f"closed before ready (DISCONNECT "
                                           f"{self.disconnect_reason})"))
        for waiters in self._keepalives.values():
            for waiter in waiters:
                waiter.errback(ClosedEarly("closed before the keep-alive reply"))
        self._keepalives.clear()
        self.closed.callback(self.disconnect_reason)

    # -- API --

    def send(self, message: apf.Message) -> None:
        """Write one APF message."""
        if isinstance(message, apf.TcpipForward):
            self.parser.expect_request_reply(True)
        elif isinstance(message, apf.CancelTcpipForward):
            self.parser.expect_request_reply(False)
        if self.connected:
            self.transport.write(message.encode())
        elif "tcp" not in self.times:
            self._early.append(message.encode())

    def keepalive(self, cookie: int) -> "defer.Deferred[int]":
        """KEEPALIVE_REQUEST; fires with the cookie the server echoes."""
        d: defer.Deferred[int] = defer.Deferred()
        self._keepalives.setdefault(cookie, []).append(d)
        self.send(apf.KeepAliveRequest(cookie))
        return d

    def close(self) -> "defer.Deferred[Optional[int]]":
        """Drop the connection; fires when it is gone."""
        if self.connected:
            self.transport.loseConnection()
        return self.closed

    def of_type(self, kind: type) -> list[Any]:
        """Received messages of one class."""
        return [m for m in self.received if isinstance(m, kind)]

    # -- the device's side of the protocol --

    def _handle(self, message: apf.Message) -> None:
        if isinstance(message, apf.ServiceAccept):
            if message.service == apf.AUTH_SERVICE and self.login:
                self.send(apf.UserAuthRequest(self.user, apf.PFWD_SERVICE, "password",
                                              self.password))
            elif message.service == apf.PFWD_SERVICE:
                self._forwards_waiting = len(self.ports)
                for port in self.ports:
                    self.send(apf.TcpipForward("", port))
                if not self.ports:
                    self._ready()
        elif isinstance(message, apf.UserAuthSuccess):
            self.times["auth"] = self.clock()
            self.send(apf.ServiceRequest(apf.PFWD_SERVICE))
        elif isinstance(message, apf.UserAuthFailure):
            if not self.ready.called:
                self.ready.errback(LoginRefused("USERAUTH_FAILURE"))
        elif isinstance(message, (apf.RequestSuccess, apf.RequestFailure)):
            if self._forwards_waiting:
                self._forwards_waiting -= 1
                if not self._forwards_waiting:
                    self._ready()
        elif isinstance(message, apf.KeepAliveOptionsRequest):
            self.send(apf.KeepAliveOptionsReply(message.interval, message.timeout))
        elif isinstance(message, apf.KeepAliveReply):
            waiters = self._keepalives.pop(message.cookie, [])
            for waiter in waiters:
                waiter.callback(message.cookie)
        elif isinstance(message, apf.Disconnect):
            self.disconnect_reason = message.reason
        elif isinstance(message, apf.ChannelOpen):
            self._channel_open(message)
        elif isinstance(message, apf.ChannelData):
            channel = self.channels.get(message.recipient_channel)
            if channel is None:
                self.violations.append(f"data for unknown channel {message.recipient_channel}")
            else:
                channel._data(message.data)
        elif isinstance(message, apf.ChannelWindowAdjust):
            channel = self.channels.get(message.recipient_channel)
            if channel is not None:
                channel.send_credit += message.bytes_to_add
                channel._flush()
        elif isinstance(message, apf.ChannelClose):
            channel = self.channels.pop(message.recipient_channel, None)
            if channel is not None:
                channel._closed()

    def _ready(self) -> None:
        self.times["ready"] = self.clock()
        if not self.ready.called:
            self.ready.callback(self)

    def _channel_open(self, message: apf.ChannelOpen) -> None:
        factory = self.services.get(message.connected_port)
        if factory is None or message.channel_type != "forwarded-tcpip":
            self.send(apf.ChannelOpenFailure(message.sender_channel,
                                             apf.OpenFailureReason.CONNECT_FAILED))
            return
        local_id = self._next_channel
        self._next_channel += 1
        channel = DeviceChannel(self, local_id, message.sender_channel,
                                message.connected_port, message.initial_window, self.window)
        channel.service = factory()
        self.channels[local_id] = channel
        self.channel_opened.append(channel)
        self.send(apf.ChannelOpenConfirmation(message.sender_channel, local_id, self.window))
        if self.on_channel is not None:
            self.on_channel(channel)


class _DeviceFactory(ClientFactory):
    noisy = False

    def __init__(self, device: CiraDevice) -> None:
        self.device = device

    def buildProtocol(self, addr: Any) -> CiraDevice:
        return self.device

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        for waiting in (self.device.made, self.device.secure):
            if not waiting.called:
                waiting.errback(reason)
        if not self.device.ready.called:
            self.device.ready.errback(reason)
        if not self.device.closed.called:
            self.device.closed.callback(None)


def connect_device(reactor: Any, host: str, port: int, device: CiraDevice,
                   context_factory: Any) -> CiraDevice:
    """Start ``device``'s TLS connection to ``host:port``; returns the device."""
    reactor.connectSSL(host, port, _DeviceFactory(device), context_factory)
    return device


# --- TLS material for tests and the benchmark ---------------------------------------------

_PKI: dict[str, Any] = {}


def mps_pki() -> dict[str, Any]:
    """A throwaway root and an RSA-2048 MPS certificate for 127.0.0.1 (made once)."""
    if not _PKI:
        from tests.certutil import make_ca, make_leaf

        ca_cert, ca_key = make_ca("meshd MPS test root")
        cert, key = make_leaf(ca_cert, ca_key, "127.0.0.1", sans=("127.0.0.1", "localhost"))
        _PKI.update(ca=ca_cert, cert=cert, key=key)
    return _PKI


def server_context() -> Any:
    """The real MPS TLS settings with the test certificate."""
    from meshd.tls import mps_context_factory

    pki = mps_pki()
    return mps_context_factory(pki["cert"], pki["key"])


def client_context(verify: bool = True) -> Any:
    """Client TLS options that trust the test root (or, ``verify=False``, anything)."""
    from cryptography.hazmat.primitives import serialization
    from twisted.internet import ssl

    if not verify:
        return ssl.CertificateOptions()
    pem = mps_pki()["ca"].public_bytes(serialization.Encoding.PEM)
    return ssl.optionsForClientTLS("127.0.0.1", trustRoot=ssl.Certificate.loadPEM(pem))
