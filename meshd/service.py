"""The service tree of one meshd process, built in one place.

    MeshdService (MultiService)
     ├─ store      opened first (SQLite file or MongoDB); closed last
     ├─ workers    thread pool for slow CPU work (password hashing)
     ├─ expire     purges old events, power events and ended web sessions
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
from datetime import timedelta
from typing import Any, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

import meshd
from meshd import certs, tls
from meshd.accounts import Accounts
from meshd.acme import (
    AcmeService,
    ChallengeResource,
    complete_interrupted_swap,
    with_acme_challenges,
)
from meshd.agent import identity
from meshd.agent.core import CoreChooser, MeshCentralCores, python_core
from meshd.agent.server import AgentManager, agent_resource
from meshd.control import control_hub, control_resource
from meshd.events import LocalEventBus
from meshd.presence import LocalPresence
from meshd.relay import RelayServer, relay_resource
from meshd.relay.recorder import recorders_from_config
from meshd.config import Config
from meshd.mail import mailer_from_config
from meshd.mps.amtpower import AmtPower
from meshd.mps.protocol import MpsServerFactory
from meshd.mps.webrelay import webrelay_resource
from meshd.passwords import RecentChecks
from meshd.passwordreset import PasswordReset
from meshd.ratelimit import FailureLimiter
from meshd.store import IStore, SchemaError, StoreUnavailable, open_store
from meshd.store.expire import ExpireService
from meshd.web import access_log_line, build_root
from meshd.web.agentinstall import MeshSettingsResource, mesh_agents_resource
from meshd.web.login import WebAuth
from meshd.web.redirect import RedirectResource
from meshd.web.session import Sessions
from meshd.web.sharing import SharingResource

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


class StoreService(Service):
    """Opens the store at start and closes it at stop.

    A database that cannot be reached at start is retried every few seconds while the
    rest of the server runs (requests that need it get a 503); a database written by a
    newer meshd stops the server.
    """

    name = "store"
    retry_delay = 5.0

    def __init__(self, store: IStore, reactor: Any) -> None:
        self.store = store
        self._reactor = reactor
        self._opened = False
        self._retry: Any = None

    def ready(self) -> "defer.Deferred[None]":
        """Fires at once when the store is open; fails with StoreUnavailable otherwise."""
        if self._opened:
            return defer.succeed(None)
        return defer.fail(StoreUnavailable(self.store.backend, self.store.location,
                                           "not open yet"))

    def startService(self) -> None:
        super().startService()
        self._open()

    def _open(self) -> None:
        self._retry = None
        d = self.store.open()
        d.addCallbacks(self._did_open, self._open_failed)

    def _did_open(self, _: object) -> None:
        self._opened = True
        _log.info("store open: {backend} {location}", backend=self.store.backend,
                  location=self.store.location)

    def _open_failed(self, failure: Any) -> None:
        if failure.check(StoreUnavailable) and self.running:
            _log.error("store unavailable, retrying in {delay} s: {problem}",
                       delay=self.retry_delay, problem=str(failure.value))
            self._retry = self._reactor.callLater(self.retry_delay, self._open)
            return
        if failure.check(SchemaError):
            _log.critical("meshd cannot start: {problem}", problem=str(failure.value))
        else:
            _log.failure("meshd cannot open its store", failure)
        if self._reactor.running:
            self._reactor.stop()

    def stopService(self) -> "defer.Deferred[None]":
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._opened = False
        return self.store.close()


class AgentShutdownService(Service):
    """Marks the agents of its managers offline when the server stops (power events,
    presence), so their last writes reach the store before it closes."""

    name = "agents-at-stop"

    def __init__(self) -> None:
        self.managers: list[AgentManager] = []

    def stopService(self) -> "defer.Deferred[Any]":
        super().stopService()
        return defer.gatherResults([manager.shutdown() for manager in self.managers])


class WorkerPoolService(Service):
    """A small thread pool for blocking CPU work, started and stopped with the server."""

    name = "workers"

    def __init__(self, reactor: Any, threads: int = 2) -> None:
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="meshd-workers")

    def run(self, function: Any, *args: Any) -> "defer.Deferred[Any]":
        return deferToThreadPool(self._reactor, self.pool, function, *args)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class SessionExpireService(ExpireService):
    """The store's expiry, plus ended web sessions."""

    def __init__(self, sessions: Sessions, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions = sessions

    async def _purge(self) -> None:
        if not self._store.is_healthy:
            return  # not open yet (the timer's first tick comes at start); next tick
        await super()._purge()
        try:
            await self._sessions.purge_expired()
        except StoreUnavailable:
            pass
        except Exception:
            self._log.failure("web session expiry failed")


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
        # Shared mechanisms and protocol servers, set by make_service.
        self.bus: Any = None
        self.presence: Any = None
        self.agents: Any = None
        self.mps: Any = None

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


#: Pending connections the kernel queues per listener (it caps this at somaxconn).
#: Twisted's default of 50 drops connection attempts when a thousand agents or Intel AMT
#: devices reconnect at once (after a restart): each dropped one retries only after 1, 3,
#: 7, 15... seconds.  Node.js (MeshCentral) queues 511.
LISTEN_BACKLOG = 1024


def _endpoint(reactor: Any, port: int, bind: str, context: Optional[Any]) -> IStreamServerEndpoint:
    if context is not None:
        return SSL4ServerEndpoint(reactor, port, context, backlog=LISTEN_BACKLOG,
                                  interface=bind)
    if ":" in bind:
        return TCP6ServerEndpoint(reactor, port, backlog=LISTEN_BACKLOG, interface=bind)
    return TCP4ServerEndpoint(reactor, port, backlog=LISTEN_BACKLOG, interface=bind)


def store_knows_devices(config: Config, datapath: str) -> Optional[bool]:
    """Whether the database already holds devices (None: it cannot be asked right now).

    Asked before the reactor runs, so it is a short blocking look, read-only.
    """
    settings = config.settings
    if settings.mongodb:
        try:
            import pymongo

            client: Any = pymongo.MongoClient(settings.mongodb, serverSelectionTimeoutMS=3000)
            try:
                found = client[settings.mongodb_name]["meshcentral"].find_one(
                    {"type": "node"}, {"_id": 1})
            finally:
                client.close()
            return found is not None
        except Exception:
            return None
    path = os.path.join(datapath, "meshd.db")
    if not os.path.exists(path):
        return False
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT 1 FROM documents WHERE json_extract(doc, '$.type') = "
                               "'node' LIMIT 1").fetchone()
        finally:
            conn.close()
        return row is not None
    except sqlite3.Error:
        return None


def load_certificates(config: Config, datapath: str) -> certs.ServerCertificates:
    """Load the certificates from the data folder, creating the missing ones.

    A new agent certificate is only made for a database that knows no devices: once
    agents are enrolled, the agent certificate is their server's identity.
    """
    settings = config.settings
    agent_files = [os.path.join(datapath, f"agentserver-cert-{part}")
                   for part in ("public.crt", "private.key")]
    allow_new_agent = True
    if not all(os.path.exists(path) for path in agent_files):
        allow_new_agent = store_knows_devices(config, datapath) is False
    try:
        result = certs.load_or_create(datapath, settings.cert, mps_name=settings.mps_alias_host,
                                      fast=settings.fast_cert,
                                      allow_new_agent_cert=allow_new_agent)
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
    # A certificate swap cut short by a crash is finished before anything is read.
    complete_interrupted_swap(datapath)
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

    # The store first: everything else uses it, and it closes last.
    store = open_store(datapath, settings.mongodb, reactor, mongodb_name=settings.mongodb_name)
    store_service = StoreService(store, reactor)
    store_service.setServiceParent(root)
    workers = WorkerPoolService(reactor)
    workers.setServiceParent(root)
    now = reactor.seconds
    sessions = Sessions(store, now=now, idle_seconds=settings.session_time * 60)
    expire = settings.db_expire
    SessionExpireService(sessions, store, reactor,
                         events_retention=timedelta(seconds=expire.events),
                         power_retention=timedelta(seconds=expire.power_events)
                         ).setServiceParent(root)
    # Events: published to live sessions and kept in the store.
    bus = LocalEventBus()
    limits = settings.max_invalid_login
    domain = config.default_domain
    accounts = Accounts(store, now=now, run_blocking=workers.run,
                        recent_checks=RecentChecks(settings.password_cache_seconds))
    auth = WebAuth(
        store=store, accounts=accounts,
        sessions=sessions,
        limiter=FailureLimiter(limits.count, limits.time * 60, limits.cool_off_time * 60),
        now=now, title=domain.title,
        new_accounts=domain.new_accounts if domain.new_accounts is not None
        else settings.new_accounts,
        ready=store_service.ready, bus=bus)

    # Presence and the agents.
    presence = LocalPresence()
    web_context = None
    if not settings.tls_offload:
        web_context = tls.web_context_factory(certificates.web.cert, certificates.web.key,
                                              certificates.web.chain)
    root.web_context = web_context
    root.bus, root.presence = bus, presence

    # Hashes of the web certificate served before the last hot swap: an agent whose TLS
    # handshake happened just before the swap still completes its agent handshake.
    previous_hashes: list[frozenset[bytes]] = [frozenset()]

    def accepted_tls_hashes() -> frozenset[bytes]:
        # The certificate agents see now (the proxy's with tlsOffload, the renewed one
        # after an ACME hot swap): its full hash and, for old agents, its key hash.
        if web_context is not None:
            return identity.accepted_tls_hashes(web_context.certificate) | previous_hashes[0]
        return frozenset({bytes.fromhex(root.web_certificate_hash)})

    def on_new_certificate(new: certs.CertKey) -> None:
        previous_hashes[0] = accepted_tls_hashes()
        root.web_certificate_hash = new.sha384()
        _log.info("web certificate renewed, SHA-384 {web_hash}", web_hash=new.sha384())

    meshcentral_cores = None
    if settings.agent_core_dir:
        try:
            meshcentral_cores = MeshCentralCores(settings.agent_core_dir)
        except ValueError as e:
            raise StartupError(str(e)) from None
    cores = CoreChooser(python_core(), meshcentral_cores)

    # At stop, agents are marked offline while the store is still open (this service
    # stops before the store, which was added before it).
    agents_at_stop = AgentShutdownService()
    agents_at_stop.setServiceParent(root)

    def agent_manager(domain: str) -> AgentManager:
        manager = AgentManager(
            store=store, presence=presence, bus=bus, clock=reactor,
            agent_cert=certificates.agent.cert, agent_key=certificates.agent.key,
            tls_hashes=accepted_tls_hashes, run_crypto=workers.run, core_provider=cores,
            max_devices=settings.max_devices, domain=domain)
        agents_at_stop.managers.append(manager)
        return manager

    agents = agent_manager("")
    root.agents = agents
    # One mailer (the smtp section) for invitations and password resets; None: no e-mail.
    mailer = mailer_from_config(config.smtp, reactor=reactor, helo_name=settings.cert)
    hub = control_hub(settings=settings, certificates=certificates, domain=domain,
                      web_hash=lambda: root.web_certificate_hash, store=store, bus=bus,
                      presence=presence, agents=agents, accounts=auth.accounts,
                      web_sessions=sessions, limiter=auth.limiter, run_blocking=workers.run,
                      mailer=mailer,
                      clock=reactor, server_warnings=[f"Configuration: {warning}"
                                                      for warning in config.warnings])
    # "Forgot your password?" by e-mail: only with a mailer (else no link, and 404).
    if mailer is not None:
        auth.password_reset = PasswordReset(store=store, mailer=mailer,
                                            public_url=hub.public_url, now=now,
                                            title=domain.title, close_user=hub.close_user)
    # Session recording (domains.<d>.sessionRecording): one recorder per domain, shared by
    # the agent relay and the Intel AMT web relay.
    recorder_for = recorders_from_config(config.domains, datapath, reactor.seconds, store)
    # One relay table for every domain's /[domain/]meshrelay.ashx; it logs users in as
    # the control channel does.
    relay = relay_resource(RelayServer.from_hub(hub, recorder_for=recorder_for), reactor)

    def agent_paths(domain: str, manager: AgentManager) -> dict[bytes, Any]:
        """What agents and their installers use, for one domain."""
        downloads = dict(store=store, server_id=certificates.agent.public_key_sha384,
                         port=settings.port, default_host=settings.cert, domain=domain)
        return {b"agent.ashx": agent_resource(manager, reactor),
                b"meshsettings": MeshSettingsResource(**downloads),  # type: ignore[arg-type]
                b"meshagents": mesh_agents_resource(**downloads),  # type: ignore[arg-type]
                b"meshrelay.ashx": relay}

    # Other domains serve the same under /<domain>/ (MeshCentral's layout).
    domain_folders: dict[bytes, Any] = {}
    for domain_name in config.domains:
        if not domain_name:
            continue
        folder = Resource()
        for path, resource in agent_paths(domain_name, agent_manager(domain_name)).items():
            folder.putChild(path, resource)
        domain_folders[domain_name.encode("utf-8")] = folder
    mps = MpsServerFactory(store, presence, bus, reactor, server_id=agents.server_id,
                           mps_pass=settings.mps_pass, max_devices=settings.max_devices,
                           now=reactor.seconds)
    root.mps = mps
    # Intel AMT power actions (poweraction 302/308/310) go over the devices' CIRA channels.
    hub.amt_power = AmtPower(mps=mps, clock=reactor, publish=hub.publish, presence=presence)

    # Browsers reach Intel AMT web services over CIRA: /[domain/]webrelay.ashx (users
    # log in as on the control channel).
    def webrelay(domain: str) -> Any:
        return webrelay_resource(store=store, mps=mps, bus=bus, authenticator=hub.auth,
                                 clock=reactor, domain=domain, recorder=recorder_for(domain))

    for domain_key, folder in domain_folders.items():
        folder.putChild(b"webrelay.ashx", webrelay(domain_key.decode("utf-8")))

    # HTTPS: web site, /agent.ashx, /control.ashx, /meshrelay.ashx, /sharing (guests).
    site = Site(build_root(clock=reactor, started_at=root.started_at,
                           title=config.default_domain.title, listeners=root.listeners,
                           auth=auth, status={"mps": mps.stats_dict,
                                              "agents": lambda: dict(agents.stats)}, extra={
                               **agent_paths("", agents), **domain_folders,
                               b"control.ashx": control_resource(hub, reactor),
                               b"webrelay.ashx": webrelay(""),
                               b"sharing": SharingResource(
                                   store=store, invite_cookies=hub.invite_cookies,
                                   clock=reactor, title=config.default_domain.title)}),
                logFormatter=access_log_line)
    site.displayTracebacks = False
    ListenerService(ListenerSpec("https", "--port", settings.port, web_context is not None),
                    bind, _endpoint(reactor, settings.port, bind, web_context),
                    site).setServiceParent(root)

    # ACME (Let's Encrypt): renews the web certificate and hot-swaps it.
    challenges = ChallengeResource()
    if config.letsencrypt is not None:
        AcmeService(config.letsencrypt, datapath, web_context, challenges, reactor,
                    on_new_certificate=on_new_certificate,
                    http_port=settings.redir_port or None).setServiceParent(root)

    # HTTP: redirect everything to HTTPS, except ACME http-01 challenges.
    if settings.redir_port:
        redirect = Site(with_acme_challenges(RedirectResource(settings.port, settings.cert),
                                             challenges),
                        logFormatter=access_log_line)
        redirect.displayTracebacks = False
        ListenerService(ListenerSpec("redirect", "--redirport", settings.redir_port, False),
                        bind, _endpoint(reactor, settings.redir_port, bind, None),
                        redirect).setServiceParent(root)

    # MPS: Intel AMT CIRA over TLS 1.0-1.2 with the RSA-2048 MPS certificate.
    if settings.mps_port:
        mps_context = tls.mps_context_factory(certificates.mps.cert, certificates.mps.key)
        ListenerService(ListenerSpec("mps", "--mpsport", settings.mps_port, True),
                        bind, _endpoint(reactor, settings.mps_port, bind, mps_context),
                        mps).setServiceParent(root)
    return root
