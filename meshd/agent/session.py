"""One agent's connection after the WebSocket is open: handshake, admission, core, JSON.

The transport is abstract (``send(frame)``, ``close()``), so the same session serves the
Autobahn adapter (:mod:`meshd.agent.server`) and tests without sockets.

Order of work for a connection (spec agent-protocol §3-5):

1. Frames go to :class:`~meshd.agent.handshake.ServerHandshake`; its RSA work runs on
   the worker pool (``AgentManager.run_crypto``), so a reconnect storm does not block
   the reactor.
2. On ``Authenticated`` the device group named in command 3 must exist and be an agent
   group (``mtype`` 2); otherwise the connection is held silently and closed at the
   handshake deadline (a closed socket would make the agent reconnect at once).
3. The device record is created or updated, presence is set (a newer connection of the
   same node replaces this one), ``nodeconnect`` is published, and ``00 04`` is sent.
4. The core check: ``00 0B`` asks for the agent's core hash; a different core is pushed
   (at most :data:`MAX_CORE_PUSHES` times per connection), then ``CoreOk``.
5. JSON messages are dispatched by ``action`` through a table; unknown actions are ignored.

Malformed frames after authentication close the connection with a logged reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from meshd.agent import identity
from meshd.agent.handshake import (
    Authenticated,
    Fail,
    Send,
    ServerHandshake,
    SignJob,
    VerifyJob,
)
from meshd.agent.wire import (
    AgentHash,
    AgentInfo,
    AgentProtocolError,
    AgentTag,
    CoreModule,
    CoreModuleHash,
    CoreOk,
    Sender,
    decode_message,
    encode_json,
)
from meshd.presence import CONN_AGENT, Connection

if TYPE_CHECKING:
    from meshd.agent.server import AgentManager

MAX_CORE_PUSHES = 5
CAP_TEMPORARY = 0x20
_ZERO_HASH = bytes(48)


class AgentSession:
    _log = Logger()

    def __init__(self, manager: "AgentManager", send: Callable[[bytes], None],
                 close: Callable[[], None], peer: str) -> None:
        self._manager = manager
        self._send = send
        self._close_transport = close
        self.peer = peer
        self.node_key: Optional[str] = None
        self.mesh_key: Optional[str] = None
        self.info: Optional[AgentInfo] = None
        self.connection: Optional[Connection] = None
        self._closed = False
        self._failed = False
        self._confirmed = False
        self._core_pushes = 0
        self._timer: Any = None
        self._handshake = ServerHandshake(
            manager.agent_cert, manager.agent_key, manager.tls_hashes(),
            now=manager.clock.seconds, offload=True)

    # -- transport events --------------------------------------------------------------

    def start(self) -> None:
        for frame in self._handshake.start():
            self._send(frame)
        delay = max(0.0, self._handshake.deadline - self._manager.clock.seconds())
        self._timer = self._manager.clock.callLater(delay, self._deadline)

    def frame_received(self, frame: bytes) -> None:
        if self._closed or self._failed:
            return
        if not self._confirmed:
            self._handle(self._handshake.receive(frame))
            return
        try:
            message = decode_message(frame, True, sender=Sender.AGENT)
        except AgentProtocolError as e:
            self._log.warn("agent {node} from {peer} sent a bad frame, closing: {problem}",
                           node=self.node_key, peer=self.peer, problem=str(e))
            self.close()
            return
        if isinstance(message, dict):
            self._on_json(message)
        else:
            self._on_binary(message)

    def connection_lost(self) -> None:
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.connection is not None:
            self._manager.disconnected(self)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close_transport()

    # -- handshake ---------------------------------------------------------------------

    def _handle(self, events: list[Any]) -> None:
        for event in events:
            if self._closed:
                return
            if isinstance(event, Send):
                self._send(event.frame)
            elif isinstance(event, (SignJob, VerifyJob)):
                self._run_job(event)
            elif isinstance(event, Authenticated):
                Deferred.fromCoroutine(self._admit(event)).addErrback(self._admit_failed)
            elif isinstance(event, Fail):
                self._fail(f"{event.reason.value}: {event.detail}")

    def _run_job(self, job: Any) -> None:
        d = self._manager.run_crypto(self._handshake.execute, job)

        def done(result: Any) -> None:
            if not self._closed and not self._failed:
                self._handle(self._handshake.job_done(job, result))

        def failed(failure: Any) -> None:
            self._log.failure("agent handshake crypto failed", failure)
            self._fail("crypto failure")

        d.addCallbacks(done, failed)

    def _fail(self, why: str) -> None:
        """Stop reading and hold the socket until the deadline (no reconnect loop)."""
        if self._failed:
            return
        self._failed = True
        self._manager.stats["refused"] += 1
        self._log.warn("agent from {peer} refused: {why}", peer=self.peer, why=why)

    def _deadline(self) -> None:
        self._timer = None
        if self._confirmed or self._closed:
            return
        if not self._failed:
            self._handle(self._handshake.check_timeout())
        self._log.info("closing unauthenticated agent connection from {peer}", peer=self.peer)
        self.close()

    def _admit_failed(self, failure: Any) -> None:
        self._log.failure("admitting agent from {peer} failed", failure, peer=self.peer)
        self._fail("server error while admitting the agent")

    async def _admit(self, auth: Authenticated) -> None:
        manager = self._manager
        info = auth.agent_info
        mesh_id = identity.mesh_id_from_agent_info(info.mesh_id)
        mesh_key = identity.mesh_key(mesh_id, manager.domain)
        mesh = await manager.store.get(mesh_key)
        if self._closed:
            return
        if mesh is None or mesh.get("mtype") != 2 or mesh.get("deleted"):
            self._handle(self._handshake.reject(f"unknown device group {mesh_key}"))
            return
        node_key = identity.node_key(auth.node_id, manager.domain)
        node = await manager.store.get(node_key)
        if self._closed:
            return
        name = auth.agent_name or info.hostname
        now = int(manager.clock.seconds())
        if node is None:
            if manager.max_devices is not None and await manager.store.count_by_type(
                    "node") >= manager.max_devices:
                self._handle(self._handshake.reject("device limit reached"))
                return
            node = {"_id": node_key, "type": "node", "mtype": 2, "meshid": mesh_key,
                    "domain": manager.domain, "name": name, "rname": info.hostname,
                    "icon": int(info.platform), "host": None}
            created = True
        else:
            created = False
            if node.get("meshid") != mesh_key:
                # The device was moved to another group: keep the database's group if it
                # still exists, else follow the agent's settings file.
                current = await manager.store.get(node.get("meshid", ""))
                if current is None or current.get("deleted"):
                    node["meshid"] = mesh_key
            node["rname"] = info.hostname
        node["agent"] = {**node.get("agent", {}), "ver": info.agent_version,
                         "id": info.agent_id, "caps": info.capabilities}
        address = self.peer
        node["ip"] = address
        await manager.store.set(node)
        if self._closed:
            return
        self.node_key, self.mesh_key, self.info = node_key, node["meshid"], info
        for frame in self._handshake.confirm():
            self._send(frame)
        self._confirmed = True
        # The handshake's state (certificates, nonces) is not needed any more.
        self._handshake = None  # type: ignore[assignment]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        manager.connected(self, node, created, now)
        # Core check: ask which core the agent runs (spec §4, MeshCentral's order).
        self._send(CoreModuleHash().encode())

    # -- after authentication -----------------------------------------------------------

    def _on_binary(self, message: Any) -> None:
        if isinstance(message, CoreModuleHash) and not isinstance(message, AgentHash):
            self._on_core_hash(message.hash)
        elif isinstance(message, AgentTag):
            self._manager.update_node(self, {"agenttag": message.text})
        # AgentHash replies and commands >= 1000 need nothing from the server yet.

    def _on_core_hash(self, reported: Optional[bytes]) -> None:
        assert self.info is not None
        core = self._manager.core_for(self.info)
        if core is None or reported == _ZERO_HASH or reported == core.hash:
            self._send(CoreOk().encode())
            if core is not None or reported is not None:
                self._after_core()
            return
        if self._core_pushes >= MAX_CORE_PUSHES:
            self._log.warn("agent {node} keeps refusing core {core}; leaving it as it is",
                           node=self.node_key, core=core.name)
            self._send(CoreOk().encode())
            return
        self._core_pushes += 1
        self._log.info("pushing core {core} ({size} bytes) to {node}", core=core.name,
                       size=len(core.blob), node=self.node_key)
        self._send(CoreModule(module_hash=core.hash, module=core.blob).encode())

    def _after_core(self) -> None:
        self.send_json({"action": "serverInfo"})
        self.send_json({"action": "sysinfo"})

    def send_json(self, message: dict[str, Any]) -> None:
        if not self._closed:
            self._send(encode_json(message))

    def _on_json(self, message: dict[str, Any]) -> None:
        action = message.get("action")
        handler = _JSON_HANDLERS.get(action) if isinstance(action, str) else None
        if handler is None:
            return
        try:
            handler(self, message)
        except Exception:
            self._log.failure("agent {node}: handling {action} failed", node=self.node_key,
                              action=action)

    def _on_ping(self, message: dict[str, Any]) -> None:
        self.send_json({"action": "pong"})

    def _on_coreinfo(self, message: dict[str, Any]) -> None:
        changes: dict[str, Any] = {}
        if isinstance(message.get("osdesc"), str):
            changes["osdesc"] = message["osdesc"][:1024]
        agent_changes: dict[str, Any] = {}
        if isinstance(message.get("value"), str):
            agent_changes["core"] = message["value"][:256]
        if isinstance(message.get("root"), bool):
            agent_changes["root"] = message["root"]
        if isinstance(message.get("caps"), int):
            agent_changes["caps"] = message["caps"]
        self._manager.update_node(self, changes, agent_changes)

    def _on_netinfo(self, message: dict[str, Any]) -> None:
        if isinstance(message.get("netif2"), dict):
            self._manager.store_node_record(self, "if", {"netif2": message["netif2"]})

    def _on_sysinfo(self, message: dict[str, Any]) -> None:
        if isinstance(message.get("data"), dict):
            self._manager.store_node_record(self, "si", {"data": message["data"]})

    def _on_sessions(self, message: dict[str, Any]) -> None:
        self._manager.agent_message(self, message)

    def _on_msg(self, message: dict[str, Any]) -> None:
        self._manager.agent_message(self, message)

    def _on_log(self, message: dict[str, Any]) -> None:
        self._manager.agent_message(self, message)

    def _ignore(self, message: dict[str, Any]) -> None:
        pass

    @property
    def temporary(self) -> bool:
        return self.info is not None and bool(self.info.capabilities & CAP_TEMPORARY)


# JSON from the agent, by action (spec §5.1); anything else is ignored.
_JSON_HANDLERS: dict[str, Callable[[AgentSession, dict[str, Any]], None]] = {
    "ping": AgentSession._on_ping,
    "pong": AgentSession._ignore,
    "coreinfo": AgentSession._on_coreinfo,
    "netinfo": AgentSession._on_netinfo,
    "sysinfo": AgentSession._on_sysinfo,
    "sessions": AgentSession._on_sessions,
    "msg": AgentSession._on_msg,
    "log": AgentSession._on_log,
}
