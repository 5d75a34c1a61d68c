"""The agent's network side: TLS without chain checks, the Autobahn adapter, reconnecting.

* :class:`InsecureTLS` — TLS client connections that accept any certificate, like the real
  agent (its verify callback returns "ok"): trust comes from the in-band handshake, which pins
  the server's agent key (ServerID) and signs over the TLS certificate hash this connection saw.
  SNI is sent for host names (not for IP literals). TLS 1.2 minimum.
* :class:`AgentClientProtocol` — a thin adapter: feeds WebSocket messages to
  :class:`~agentsrc.handshake.AgentHandshake`, then to :class:`~agentsrc.session.AgentSession`,
  and carries out their events. Binary commands go in binary frames, JSON in text frames.
* :class:`AgentService` — one connection at a time to one of the ``MeshServer`` URLs (random
  first, then rotating), with :class:`~agentsrc.backoff.Backoff` between attempts; the back-off
  resets when command 3 was sent. A refused server (wrong ServerID, TLS hash, signature…) is
  logged with the reason, the socket closed, and retried later; no core runs before S 4.

WebSocket options: no Origin, no User-Agent, no subprotocol, no compression (as the real agent);
a ping after ``controlChannelIdleTimeout`` s without traffic, and the connection dropped if no
pong comes within :data:`PONG_TIMEOUT` s; messages up to :data:`meshd.agent.wire.MAX_FRAME`.
"""

from __future__ import annotations

import ipaddress
import platform
import random
import socket
from typing import Any, Callable, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

import agentsrc
import agentsrc.core
from agentsrc.backoff import Backoff, Uniform
from agentsrc.core.sysinfo import arch_label, os_description
from agentsrc.handshake import (
    HANDSHAKE_TIMEOUT,
    AgentHandshake,
    AgentInfoSent,
    Confirmed,
    Event,
    Refused,
    Send,
    ServerVerified,
)
from agentsrc.session import AgentSession, CoreLibrary
from agentsrc.settings import ServerUrl, Settings
from agentsrc.state import NodeIdentity, StateDir
from meshd.agent.identity import pad_mesh_id
from meshd.agent.wire import MAX_FRAME, AgentCapability, AgentInfo, PlatformType

__all__ = [
    "PYTHON_CORE_CAPABILITY",
    "PONG_TIMEOUT",
    "agent_architecture",
    "build_agent_info",
    "host_info",
    "InsecureTLS",
    "AgentClientProtocol",
    "AgentClientFactory",
    "AgentService",
]

PYTHON_CORE_CAPABILITY = 0x10000
"""Command 3 capability bit: "runs a pushed *Python* core" (a meshd extension). A server pushes
the Python core blob only to agents that set it, and MeshCentral's JavaScript core only to
agents with 0x10 (JavaScript), which this agent does not claim — so MeshCentral never pushes
its JavaScript core here (it skips the core check entirely), and MeshCentral ignores the bit."""
PONG_TIMEOUT = 5.0
OPEN_HANDSHAKE_TIMEOUT = 30.0
CONNECT_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0

_ARCHITECTURES = {
    ("Linux", "x86_64"): 6,
    ("Linux", "amd64"): 6,
    ("Linux", "i386"): 5,
    ("Linux", "i686"): 5,
    ("Linux", "aarch64"): 32,
    ("Linux", "armv7l"): 25,
    ("Linux", "armv6l"): 25,
    ("Darwin", "x86_64"): 16,
    ("Darwin", "arm64"): 29,
    ("FreeBSD", "amd64"): 30,
}


def agent_architecture(system: Optional[str] = None, machine: Optional[str] = None) -> int:
    """MeshCentral's agentId for this OS/CPU (the device's "agent type"; Linux x86-64 = 6).

    Real MeshAgent numbering, so MeshCentral shows the right OS and sends ``runcommands`` of
    type 3; unknown combinations report Linux x86-64.
    """
    key = (system or platform.system(), (machine or platform.machine()).lower())
    return _ARCHITECTURES.get(key, 6)


def build_agent_info(settings: Settings, hostname: Optional[str] = None) -> AgentInfo:
    """Command 3 for this machine: MeshID, agentId, capabilities, platform type, host name."""
    name = hostname if hostname is not None else socket.gethostname()
    encoded = name.encode("utf-8")[:255]
    return AgentInfo(
        info_version=1,
        agent_id=agent_architecture(),
        agent_version=0,
        platform_type=int(PlatformType.DESKTOP),
        mesh_id=pad_mesh_id(settings.mesh_id),
        capabilities=int(AgentCapability.CONSOLE) | PYTHON_CORE_CAPABILITY,
        hostname=encoded.decode("utf-8", "ignore"),
    )


def host_info() -> str:
    """Command 31: ``"<OS name> - <arch>"``, e.g. ``Debian GNU/Linux 12 (bookworm) - x64``."""
    return f"{os_description()} - {arch_label()}"[:1024]


@implementer(IOpenSSLClientConnectionCreator)
class InsecureTLS:
    """TLS client connections without certificate verification (see the module docstring)."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname
        try:
            ipaddress.ip_address(hostname)
            self._sni: Optional[bytes] = None
        except ValueError:
            self._sni = hostname.encode("idna")
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_verify(SSL.VERIFY_NONE, lambda *args: True)
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        connection.set_connect_state()
        return connection


class AgentClientProtocol(WebSocketClientProtocol):
    """One connection to the server: handshake, then session. See the module docstring."""

    log = Logger()
    factory: "AgentClientFactory"

    def __init__(self) -> None:
        super().__init__()
        self._handshake: Optional[AgentHandshake] = None
        self._session: Optional[AgentSession] = None
        self._timeout_call: Optional[IDelayedCall] = None
        self._closing = False
        self.closed: Deferred[None] = Deferred()

    # -- Autobahn callbacks (camelCase: Autobahn calls them) -----------------------------------

    def onOpen(self) -> None:
        agent = self.factory.agent
        certificate = self._peer_certificate()
        if certificate is None:
            self.log.error("{url}: the server presented no TLS certificate", url=self.factory.url)
            self.close("no TLS certificate")
            return
        self._handshake = agent.new_handshake(certificate)
        self.log.info(
            "connected to {url}; {path} handshake",
            url=self.factory.url,
            path="reconnect (skip)" if self._handshake.skipping else "full",
        )
        for send in self._handshake.start():
            self.send_frame(send.frame, send.text)
        self._timeout_call = agent.reactor.callLater(agent.handshake_timeout, self._check_timeout)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._closing:
            return
        if self._session is not None:
            self._session.receive(bytes(payload))
            return
        if self._handshake is None:
            return
        for event in self._handshake.receive(bytes(payload)):
            self._handle(event)
            if self._closing:
                return

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None
        if self._session is not None:
            self._session.stop()
            self._session = None
        self.factory.agent.connection_lost(self)
        if not self.closed.called:
            self.closed.callback(None)

    # -- adapter -------------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """Close this connection (clean WebSocket close; dropped after the close timeout)."""
        if self._closing:
            return
        self._closing = True
        self.log.debug("closing {url}: {reason}", url=self.factory.url, reason=reason)
        if self._session is not None:
            self._session.stop()
        try:
            self.sendClose(code=1000)
        except Exception:  # not open yet: drop the TCP connection instead
            self.dropConnection(abort=True)

    def _peer_certificate(self) -> Optional[bytes]:
        get_certificate = getattr(self.transport, "getPeerCertificate", None)
        if get_certificate is None:
            return None
        certificate = get_certificate()
        if certificate is None:
            return None
        return bytes(crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate))

    def send_frame(self, frame: bytes, text: bool) -> None:
        """Send one WebSocket message (text for JSON, binary otherwise)."""
        if not self._closing:
            self.sendMessage(frame, isBinary=not text)

    def _check_timeout(self) -> None:
        self._timeout_call = None
        if self._handshake is not None and self._session is None:
            for event in self._handshake.check_timeout():
                self._handle(event)

    def _handle(self, event: Event) -> None:
        agent = self.factory.agent
        if isinstance(event, Send):
            self.send_frame(event.frame, event.text)
        elif isinstance(event, ServerVerified):
            agent.server_verified(event.tls_hash)
        elif isinstance(event, AgentInfoSent):
            agent.backoff.reset()
        elif isinstance(event, Confirmed):
            if self._timeout_call is not None and self._timeout_call.active():
                self._timeout_call.cancel()
            self._timeout_call = None
            self.log.info(
                "authenticated to {url} as node {node_id}{skip}",
                url=self.factory.url,
                node_id=agent.identity.node_id,
                skip=" (TLS certificate already trusted)" if event.skipped else "",
            )
            self._session = agent.new_session(self)
            self._session.start()
        elif isinstance(event, Refused):
            self.log.error(
                "refusing server {url}: {reason}: {detail}; nothing will run, retrying later",
                url=self.factory.url,
                reason=event.reason.value,
                detail=event.detail,
            )
            agent.last_refusal = event
            self.close(event.reason.value)


class AgentClientFactory(WebSocketClientFactory):
    """Autobahn client factory for one attempt, bound to the :class:`AgentService`."""

    protocol = AgentClientProtocol  # type: ignore[assignment]

    def __init__(self, agent: "AgentService", server: ServerUrl) -> None:
        host = f"[{server.host}]" if ":" in server.host else server.host
        url = f"wss://{host}:{server.port}{server.path}"
        super().__init__(url, useragent="", reactor=agent.reactor)
        self.noisy = False  # one factory per attempt: no "Starting factory" lines
        self.agent = agent
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_FRAME,
            maxMessagePayloadSize=MAX_FRAME,
            openHandshakeTimeout=OPEN_HANDSHAKE_TIMEOUT,
            closeHandshakeTimeout=STOP_TIMEOUT,
            autoPingInterval=agent.settings.idle_timeout,
            autoPingTimeout=PONG_TIMEOUT,
            autoPingRestartOnAnyTraffic=True,
        )


EndpointFactory = Callable[[Any, ServerUrl], Any]


def default_endpoint(reactor: Any, server: ServerUrl) -> Any:
    """TCP (IPv4/IPv6/DNS) + :class:`InsecureTLS` to ``server``."""
    tcp = HostnameEndpoint(reactor, server.host, server.port, timeout=CONNECT_TIMEOUT)
    return wrapClientTLS(InsecureTLS(server.host), tcp)


class AgentService(Service):
    """Keeps one authenticated connection to the server, reconnecting with back-off."""

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        state: StateDir,
        identity: NodeIdentity,
        *,
        reactor: Any,
        endpoint_factory: EndpointFactory = default_endpoint,
        uniform: Optional[Uniform] = None,
        choice: Optional[Callable[[int], int]] = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        agent_info: Optional[AgentInfo] = None,
        hostinfo: Optional[str] = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.identity = identity
        self.reactor = reactor
        self.handshake_timeout = handshake_timeout
        self.backoff = Backoff(uniform)
        self.agent_info = agent_info if agent_info is not None else build_agent_info(settings)
        self.host_info = hostinfo if hostinfo is not None else host_info()
        self.library = CoreLibrary(state)
        self.protocol: Optional[AgentClientProtocol] = None
        self.session: Optional[AgentSession] = None
        self.last_refusal: Optional[Refused] = None
        self.attempts = 0
        self._endpoint_factory = endpoint_factory
        pick = choice if choice is not None else random.SystemRandom().randrange
        self._next_index = pick(len(settings.servers))
        self._current: ServerUrl = settings.servers[self._next_index]
        self._retry: Optional[IDelayedCall] = None
        self._connecting: Optional[Deferred[Any]] = None
        self._stopping = False

    # -- service -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.log.info(
            "agent {node_id} starting; servers: {servers}",
            node_id=self.identity.node_id,
            servers=", ".join(server.url for server in self.settings.servers),
        )
        self._attempt()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
        protocol = self.protocol
        if protocol is None:
            return succeed(None)
        protocol.close("agent stopping")
        return protocol.closed

    # -- called by the protocol ----------------------------------------------------------------

    def new_handshake(self, tls_certificate_der: bytes) -> AgentHandshake:
        """The handshake machine for a new connection that saw this TLS certificate."""
        return AgentHandshake(
            node_key=self.identity.key,
            node_cert_der=self.identity.certificate_der,
            server_id=self.settings.server_id,
            tls_cert_der=tls_certificate_der,
            agent_info=self.agent_info,
            trusted_tls_hash=self.state.trusted_tls_hash(self.settings.server_id),
            commit_date=agentsrc.COMMIT_DATE,
            host_info=self.host_info,
            agent_name=self.settings.agent_name,
            now=self.reactor.seconds,
            timeout=self.handshake_timeout,
        )

    def new_session(self, protocol: AgentClientProtocol) -> AgentSession:
        """The post-authentication session for ``protocol``."""
        self.session = AgentSession(
            library=self.library,
            builtin=agentsrc.core,
            send=protocol.send_frame,
            close=protocol.close,
            reactor=self.reactor,
            node_id=self.identity.node_id,
            server_url=self._current.url,
            agent_version=agentsrc.__version__,
            tag=self.settings.tag,
            no_update_core_module=self.settings.no_update_core_module,
            tls_hashes=tuple(h.hex() for h in [
                self.state.trusted_tls_hash(self.settings.server_id)] if h),
        )
        return self.session

    def server_verified(self, tls_hash: bytes) -> None:
        """The server proved its key over this TLS certificate: pin its hash."""
        try:
            self.state.store_tls_hash(self.settings.server_id, tls_hash)
        except OSError as error:
            self.log.warn("cannot store the server TLS hash: {error}", error=str(error))

    def connection_lost(self, protocol: AgentClientProtocol) -> None:
        if protocol is self.protocol:
            self.protocol = None
            self.session = None
        if not self._stopping:
            self._schedule_retry("connection closed")

    # -- internals -----------------------------------------------------------------------------

    def _attempt(self) -> None:
        self._retry = None
        if self._stopping:
            return
        self.attempts += 1
        server = self.settings.servers[self._next_index]
        self._next_index = (self._next_index + 1) % len(self.settings.servers)
        self._current = server
        factory = AgentClientFactory(self, server)
        try:
            endpoint = self._endpoint_factory(self.reactor, server)
            connecting: Deferred[Any] = endpoint.connect(factory)
        except Exception as error:
            self._schedule_retry(f"cannot connect to {server.url}: {error}")
            return
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connect_failed, errbackArgs=(server,))

    def _connected(self, protocol: AgentClientProtocol) -> None:
        self._connecting = None
        self.protocol = protocol

    def _connect_failed(self, failure: Failure, server: ServerUrl) -> None:
        self._connecting = None
        if self._stopping:
            return
        reason = failure.getErrorMessage() or repr(failure.value)
        self._schedule_retry(f"cannot connect to {server.url}: {reason}")

    def _schedule_retry(self, why: str) -> None:
        if self._stopping or (self._retry is not None and self._retry.active()):
            return
        delay = self.backoff.next_delay()
        self.log.info("{why}; reconnecting in {delay:.1f} s", why=why, delay=delay)
        self._retry = self.reactor.callLater(delay, self._attempt)
