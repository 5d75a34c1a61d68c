"""``/agent.ashx``: the Autobahn adapter and the server-wide agent registry.

:class:`AgentProtocol` is a thin WebSocket adapter: it hands every frame, text or binary
alike (the agent decides by the first byte, spec §1), to an
:class:`~meshd.agent.session.AgentSession`.  :class:`AgentManager` owns what all
sessions share: the agent certificate, the accepted TLS hashes, the worker pool for
RSA, presence, the event bus and the store writes for devices.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Collection, Optional

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from meshd.agent.core import Core
from meshd.agent.session import AgentSession
from meshd.agent.wire import AgentInfo
from meshd.control.views import safe_node
from meshd.events import IEventBus, publish_and_store
from meshd.presence import CONN_AGENT, Connection, IPresence
from meshd.store.interface import IStore, StoreUnavailable

MAX_MESSAGE = 16 * 1024 * 1024
CoreProvider = Callable[[AgentInfo], Optional[Core]]


def _peer_host(peer: str) -> str:
    """``tcp:127.0.0.1:5555`` / ``tcp6:[::1]:5555`` -> the address."""
    if ":" not in peer:
        return peer
    _kind, rest = peer.split(":", 1)
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]")


class AgentManager:
    """Shared state of every agent connection of this server."""

    _log = Logger()

    def __init__(self, *, store: IStore, presence: IPresence, bus: IEventBus, clock: Any,
                 agent_cert: Any, agent_key: Any, tls_hashes: Callable[[], Collection[bytes]],
                 run_crypto: Callable[..., "Deferred[Any]"], server_id: str = "local",
                 core_provider: Optional[CoreProvider] = None,
                 max_devices: Optional[int] = None, domain: str = "") -> None:
        self.store = store
        self.presence = presence
        self.bus = bus
        self.clock = clock
        self.agent_cert = agent_cert
        self.agent_key = agent_key
        self.tls_hashes = tls_hashes
        self.run_crypto = run_crypto
        self.server_id = server_id
        self.core_provider = core_provider
        self.max_devices = max_devices
        self.domain = domain  # MeshCentral domain: "" is the default one
        self.stats = {"connections": 0, "authenticated": 0, "refused": 0, "replaced": 0}
        #: Agents connected to this manager now, and store writes not finished yet.
        self._live: set[AgentSession] = set()
        self._pending: set["Deferred[Any]"] = set()

    def core_for(self, info: AgentInfo) -> Optional[Core]:
        return self.core_provider(info) if self.core_provider is not None else None

    # -- connection lifecycle -------------------------------------------------------------

    def connected(self, session: AgentSession, node: dict[str, Any], created: bool,
                  now: float) -> None:
        assert session.node_key is not None
        self.stats["authenticated"] += 1
        connection = Connection(session.node_key, CONN_AGENT, self.server_id, now,
                                address=session.peer, handle=session)
        session.connection = connection
        self._live.add(session)
        previous = self.presence.add(connection)
        if previous is not None and previous.handle is not None and previous.handle is not session:
            self.stats["replaced"] += 1
            self._log.info("agent {node} reconnected from {peer}; closing its older connection",
                           node=session.node_key, peer=session.peer)
            previous.handle.connection = None  # its close must not mark the node offline
            previous.handle.close()
        self._log.info("agent {node} connected from {peer} ({name})", node=session.node_key,
                       peer=session.peer, name=node.get("name"))
        mesh = node["meshid"]
        targets = [session.node_key, "*", mesh]
        if created:
            self._write(publish_and_store(self.bus, self.store, targets, {
                "etype": "node", "action": "addnode", "node": safe_node(node),
                "nodeid": node["_id"],
                "domain": self.domain, "msgid": 84, "msg": f"Added device {node.get('name')} to group"},
                self.clock.seconds))
        self.bus.publish(targets, {"action": "nodeconnect", "meshid": mesh,
                                   "nodeid": session.node_key,
                                   "conn": self.presence.state(session.node_key), "pwr": 1,
                                   "ct": int(now * 1000), "nolog": 1, "domain": self.domain})
        self._write(self.store.store_power_event({
            "time": datetime.fromtimestamp(now, timezone.utc), "nodeid": session.node_key,
            "power": 1}))
        self._write(self.store.set({"_id": "lc" + session.node_key, "type": "lastconnect",
                                    "nodeid": session.node_key, "meshid": mesh,
                                    "time": int(now * 1000), "addr": session.peer,
                                    "domain": self.domain}))

    def disconnected(self, session: AgentSession) -> None:
        connection = session.connection
        session.connection = None
        self._live.discard(session)
        if connection is None or not self.presence.remove(connection):
            return
        node_key = connection.node_id
        now = self.clock.seconds()
        conn = self.presence.state(node_key)
        self._log.info("agent {node} disconnected", node=node_key)
        targets = [node_key, "*", session.mesh_key or ""]
        self.bus.publish(targets, {"action": "nodeconnect", "meshid": session.mesh_key,
                                   "nodeid": node_key, "conn": conn, "pwr": 1 if conn else 0,
                                   "nolog": 1, "domain": self.domain})
        self._write(self.store.store_power_event({
            "time": datetime.fromtimestamp(now, timezone.utc), "nodeid": node_key,
            "power": 0}))
        if session.temporary and not conn:
            # A temporary agent (``meshagent connect``) leaves no device behind.
            self._write(self.store.remove(node_key))
            self.bus.publish(targets, {"etype": "node", "action": "removenode",
                                       "nodeid": node_key, "domain": self.domain, "nolog": 1})

    # -- data from agents -----------------------------------------------------------------

    def update_node(self, session: AgentSession, changes: dict[str, Any],
                    agent_changes: Optional[dict[str, Any]] = None) -> None:
        if not changes and not agent_changes:
            return
        node_key = session.node_key

        async def update() -> None:
            if node_key is None:
                return
            node = await self.store.get(node_key)
            if node is None:
                return
            before = (dict(node), dict(node.get("agent") or {}))
            node.update(changes)
            if agent_changes:
                node["agent"] = {**node.get("agent", {}), **agent_changes}
            if (dict(node), dict(node.get("agent") or {})) == before:
                return
            await self.store.set(node)
            # Users see the new OS or agent core at once (MeshCentral: changenode, nolog).
            self.bus.publish([node_key, "*", node.get("meshid", "")], {
                "etype": "node", "action": "changenode", "nodeid": node_key,
                "node": safe_node(node), "nolog": 1, "domain": self.domain})

        self._write(Deferred.fromCoroutine(update()))

    def store_node_record(self, session: AgentSession, prefix: str,
                          fields: dict[str, Any]) -> None:
        if session.node_key is None:
            return
        record = {"_id": prefix + session.node_key, "type": {"if": "ifinfo", "si": "sysinfo"}
                  .get(prefix, prefix), "nodeid": session.node_key, "domain": self.domain,
                  "updateTime": int(self.clock.seconds() * 1000), **fields}
        self._write(self.store.set(record))

    def agent_message(self, session: AgentSession, message: dict[str, Any]) -> None:
        """JSON for user sessions (replies, console output, session counts)."""
        if session.node_key is None:
            return
        self.bus.publish(["agent:" + session.node_key], {
            "action": "agentmsg", "nodeid": session.node_key, "message": message})

    # -- sending to agents ----------------------------------------------------------------

    def send_to_node(self, node_key: str, message: dict[str, Any]) -> bool:
        connection = self.presence.get(node_key, CONN_AGENT)
        if connection is None or connection.handle is None:
            return False
        connection.handle.send_json(message)
        return True

    def shutdown(self) -> "Deferred[Any]":
        """The server is stopping: every agent of this manager is marked offline (its
        power event and presence) and its connection closed, while the store is still
        open; fires when those writes are done."""
        for session in list(self._live):
            self.disconnected(session)
            session.close()
        return DeferredList(list(self._pending), consumeErrors=True)

    def _write(self, d: "Optional[Deferred[Any]]") -> None:
        if d is None:
            return
        self._pending.add(d)
        d.addBoth(lambda result: (self._pending.discard(d), result)[1])

        def failed(failure: Any) -> None:
            if failure.check(StoreUnavailable):
                self._log.error("agent data not stored: {problem}", problem=str(failure.value))
            else:
                self._log.failure("storing agent data failed", failure)

        d.addErrback(failed)


class AgentProtocol(WebSocketServerProtocol):
    """Thin adapter: frames in, frames out; the session does the work."""

    _log = Logger()
    session: Optional[AgentSession] = None

    def onConnect(self, request: ConnectionRequest) -> None:
        self._peer = _peer_host(request.peer)
        return None

    def onOpen(self) -> None:
        manager: AgentManager = self.factory.manager
        manager.stats["connections"] += 1
        self.session = AgentSession(manager, self._send_frame, self._close, self._peer)
        self.session.start()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.session is None:
            return
        try:
            self.session.frame_received(payload)
        except Exception:
            # A bug must cost this one connection, never the server.
            self._log.failure("agent connection from {peer} failed", peer=self._peer)
            self.session.close()

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        if self.session is not None:
            self.session.connection_lost()
            self.session = None

    def _send_frame(self, frame: bytes) -> None:
        # MeshCentral sends everything, JSON included, as binary frames (spec §1).
        self.sendMessage(frame, isBinary=True)

    def _close(self) -> None:
        self.sendClose()
        # Do not wait for a peer that never answers the closing handshake.
        self.factory.manager.clock.callLater(5, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self.transport is not None and self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)


def agent_resource(manager: AgentManager, reactor: Any) -> WebSocketResource:
    """The ``/agent.ashx`` resource."""
    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = AgentProtocol
    factory.manager = manager
    factory.setProtocolOptions(
        maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE,
        autoPingInterval=60, autoPingTimeout=30, openHandshakeTimeout=30,
        closeHandshakeTimeout=5, perMessageCompressionAccept=lambda offers: None)
    return WebSocketResource(factory)
