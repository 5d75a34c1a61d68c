"""The service tree of one meshd process, built in one place.

    MeshdService (MultiService)
     ├─ https      the web site, agents, users and relay: TLS (or plain HTTP with tlsOffload)
     ├─ redirect   plain HTTP: 301 to HTTPS (and ACME http-01 challenges, later)
     └─ mps        Intel AMT CIRA TLS port

Listeners bind in ``privilegedStartService`` (so ports below 1024 bind before twistd
drops privileges) and a port that cannot be bound stops the start-up with one line
that names the port and what to do, instead of a traceback.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.web.server import Site

import meshd
from meshd import certs, tls
from meshd.config import Config
from meshd.mps.listener import MpsFactory
from meshd.web import build_root
from meshd.web.redirect import RedirectResource

_log = Logger(namespace="meshd")

DEFAULT_DATA_PATH = "meshd-data"


class StartupError(Exception):
    """The server cannot start; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class ListenerSpec:
    name: str  # "https", "redirect", "mps"
    option: str  # the option that sets its port, for error messages
    port: int
    tls: bool


def _describe_bind_error(spec: ListenerSpec, bind: str, error: CannotListenError) -> str:
    where = f"{bind}:{spec.port}" if bind else f"port {spec.port}"
    code = getattr(error.socketError, "errno", None)
    if code == errno.EADDRINUSE:
        why = "the address is already in use by another program"
        todo = f"stop that program or choose another port with {spec.option}"
    elif code == errno.EACCES:
        why = "permission denied"
        todo = (f"ports below 1024 need root (twistd drops privileges after binding with "
                f"--uid/--gid) or CAP_NET_BIND_SERVICE; or choose another port with "
                f"{spec.option}")
    elif code == errno.EADDRNOTAVAIL:
        why = "that address does not belong to this machine"
        todo = "fix --bind (settings.portBind)"
    else:
        why = str(error.socketError)
        todo = f"choose another port with {spec.option}"
    return f"cannot listen for {spec.name} on {where}: {why}; {todo}"


class ListenerService(StreamServerEndpointService):
    """A listening port whose failure to bind is a :class:`StartupError`."""

    def __init__(self, spec: ListenerSpec, bind: str, endpoint: IStreamServerEndpoint,
                 factory: Factory) -> None:
        super().__init__(endpoint, factory)
        self.spec = spec
        self.bind = bind
        self.listening_port: Optional[IListeningPort] = None
        self._raiseSynchronously = True
        self.setName(spec.name)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise StartupError(_describe_bind_error(self.spec, self.bind, e)) from None
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.listening_port = port
        if port is not None:
            _log.info("listening for {listener} on {host}:{port}", listener=self.spec.name,
                      host=port.getHost().host, port=port.getHost().port)
        return port

    def info(self) -> dict[str, Any]:
        port = self.listening_port.getHost().port if self.listening_port else self.spec.port
        return {"name": self.spec.name, "port": port, "tls": self.spec.tls}


class MeshdService(MultiService):
    """The root service; start-up failures end the process with one clear log line."""

    def __init__(self, config: Config, datapath: str, certificates: certs.ServerCertificates,
                 clock: Any) -> None:
        super().__init__()
        self.config = config
        self.datapath = datapath
        self.certificates = certificates
        self.clock = clock
        self.started_at = clock.seconds()
        # The hash agents must see for the web certificate (the proxy's with tlsOffload).
        self.web_certificate_hash = certificates.web.sha384()
        # The HTTPS context, swapped in place when the certificate is renewed.
        self.web_context: Optional[tls.ReloadableContextFactory] = None

    def listeners(self) -> list[dict[str, Any]]:
        return [svc.info() for svc in self if isinstance(svc, ListenerService)]

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            # twistd has already sent standard error to the log by now, so the log line is
            # the one place the reason goes (the terminal with -n, the journal, the log file).
            _log.critical("meshd cannot start: {problem}", problem=str(e))
            raise SystemExit(1) from None


def _endpoint(reactor: Any, port: int, bind: str, context: Optional[Any]) -> IStreamServerEndpoint:
    if context is not None:
        return SSL4ServerEndpoint(reactor, port, context, interface=bind)
    if ":" in bind:
        return TCP6ServerEndpoint(reactor, port, interface=bind)
    return TCP4ServerEndpoint(reactor, port, interface=bind)


def load_certificates(config: Config, datapath: str) -> certs.ServerCertificates:
    """Load the certificates from the data folder, creating the missing ones."""
    settings = config.settings
    try:
        result = certs.load_or_create(datapath, settings.cert, mps_name=settings.mps_alias_host,
                                      fast=settings.fast_cert)
    except certs.CertificateError as e:
        raise StartupError(str(e)) from None
    if result.created:
        _log.info("created certificates in {datapath}: {created}", datapath=datapath,
                  created=", ".join(result.created))
    return result


def make_service(config: Config, *, reactor: Any, datapath: Optional[str] = None) -> MeshdService:
    """Build the whole server from a validated configuration.

    Raises :class:`StartupError` when the data folder or its certificates are unusable.
    """
    settings = config.settings
    datapath = os.path.abspath(datapath or settings.data_path or DEFAULT_DATA_PATH)
    for warning in config.warnings:
        _log.warn("configuration: {warning}", warning=warning)
    certificates = load_certificates(config, datapath)

    web_hash = certificates.web.sha384()
    if settings.tls_offload:
        offload_cert = settings.tls_offload_cert or os.path.join(
            datapath, "webserver-cert-public.crt")
        try:
            web_hash = certs.load_certificate_file(offload_cert).sha384()
        except certs.CertificateError as e:
            raise StartupError(str(e)) from None
    _log.info("meshd {version} data folder {datapath}", version=meshd.__version__,
              datapath=datapath)
    _log.info("web certificate SHA-384 {web_hash}", web_hash=web_hash)
    _log.info("agent certificate SHA-384 {agent_hash}, ServerID {server_id}",
              agent_hash=certificates.agent.sha384(),
              server_id=certificates.agent.public_key_sha384())

    root = MeshdService(config, datapath, certificates, reactor)
    root.web_certificate_hash = web_hash
    bind = settings.bind

    # HTTPS: web site, /agent.ashx, /control.ashx, /meshrelay.ashx.
    site = Site(build_root(clock=reactor, started_at=root.started_at,
                           title=config.default_domain.title, listeners=root.listeners))
    site.displayTracebacks = False
    web_context = None
    if not settings.tls_offload:
        web_context = tls.web_context_factory(certificates.web.cert, certificates.web.key,
                                              certificates.web.chain)
    root.web_context = web_context
    ListenerService(ListenerSpec("https", "--port", settings.port, web_context is not None),
                    bind, _endpoint(reactor, settings.port, bind, web_context),
                    site).setServiceParent(root)

    # HTTP: redirect everything to HTTPS.
    if settings.redir_port:
        redirect = Site(RedirectResource(settings.port, settings.cert))
        redirect.displayTracebacks = False
        ListenerService(ListenerSpec("redirect", "--redirport", settings.redir_port, False),
                        bind, _endpoint(reactor, settings.redir_port, bind, None),
                        redirect).setServiceParent(root)

    # MPS: Intel AMT CIRA over TLS 1.0-1.2 with the RSA-2048 MPS certificate.
    if settings.mps_port:
        mps_context = tls.mps_context_factory(certificates.mps.cert, certificates.mps.key)
        ListenerService(ListenerSpec("mps", "--mpsport", settings.mps_port, True),
                        bind, _endpoint(reactor, settings.mps_port, bind, mps_context),
                        MpsFactory()).setServiceParent(root)
    return root
