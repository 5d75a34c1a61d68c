"""After the server's command 4: core-module commands, and JSON to and from the running core.

Spec: agent-protocol.md §4. S = server, A = agent (this side). Every binary command here is
``command(2) requestid(2) …``; replies echo the request id::

    on start        A 15 AgentTag (the .msh Tag, may be empty)
    S 12            A 12 + 48 zero bytes: "never update me" (this agent does not self-update;
                    S 13/14 binary updates are ignored)
    S 11            A 11 + hash of the pushed core held (running, or stored and waiting),
                    A 11 alone if none (only the built-in core), or A 11 + 48 zero bytes
                    ("custom core") once a pushed core was declined on this connection
    S 10 hash blob  blob checked: SHA-384 == hash, else A 11 alone; not a Python core
                    (e.g. MeshCentral's JavaScript core) → declined, A 11 + zeros, so
                    MeshCentral sends CoreOk instead of re-pushing; a Python core that
                    imports and starts → stored, running, A 11 + hash; one that fails →
                    deleted, built-in core, A 11 alone
    S 10 (4 bytes)  delete the pushed core; run the built-in one
    S 20            as 10 with the blob raw-DEFLATEd (bounded inflate)
    S 16 CoreOk     start the stored core if it was waiting for this
    JSON            to the running core (queued, at most :data:`MAX_QUEUED`, while a stored
                    core waits for CoreOk); ids >= 1000 to the core as binary commands

A stored core waits for S 16 (or a new push) before it starts, with a
:data:`CORE_OK_FALLBACK` s fallback, like the real agent; without a stored core the built-in
core starts at once. A frame the codec rejects closes the connection.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from agentsrc import coreblob
from agentsrc.state import StateDir
from meshd.agent.wire import (
    HASH_LEN,
    MAX_CORE_MODULE_LEN,
    AgentHash,
    AgentProtocolError,
    AgentTag,
    Command,
    CoreBinary,
    CoreModule,
    CoreModuleHash,
    CoreOk,
    Sender,
    decode_message,
    encode_json,
)

__all__ = [
    "CORE_OK_FALLBACK",
    "MAX_QUEUED",
    "CoreContext",
    "CoreLibrary",
    "AgentSession",
]

CORE_OK_FALLBACK = 60.0
MAX_QUEUED = 64
ZERO_HASH = bytes(HASH_LEN)


@dataclass
class CoreContext:
    """What a core gets from the bootstrap (the ``context`` of :mod:`agentsrc.core`)."""

    reactor: Any
    send_json: Callable[[dict[str, Any]], None]
    send_binary: Callable[[bytes], None]
    log: Logger
    node_id: str
    server_url: str
    agent_version: str
    core_hash: Optional[str]
    # Hex SHA-384 of the server's TLS certificate as pinned on the control channel: the
    # relay (same server) is trusted with it too.
    tls_hashes: tuple[str, ...] = ()


class CoreLibrary:
    """The pushed core: stored in the state folder, imported once per hash per process."""

    def __init__(self, state: StateDir) -> None:
        self._state = state
        self._modules: dict[bytes, ModuleType] = {}

    def stored(self) -> Optional[tuple[bytes, bytes]]:
        """``(hash, blob)`` of the stored core, if it is a Python core."""
        found = self._state.load_core()
        if found is None:
            return None
        blob, digest = found
        if not coreblob.is_python_core(blob):
            self._state.delete_core()
            return None
        return digest, blob

    def load(self, digest: bytes, blob: bytes) -> ModuleType:
        """The imported package of a blob (raises :class:`coreblob.CoreBlobError`)."""
        module = self._modules.get(digest)
        if module is None:
            module = coreblob.load_core(blob, digest)
            for old in list(self._modules):  # one pushed core at a time
                coreblob.unload_core(self._modules.pop(old).__name__)
            self._modules[digest] = module
        return module

    def store(self, blob: bytes) -> None:
        self._state.store_core(blob)

    def clear(self) -> None:
        """Delete the stored core and forget imported ones."""
        self._state.delete_core()
        for digest in list(self._modules):
            coreblob.unload_core(self._modules.pop(digest).__name__)


class AgentSession:
    """One authenticated connection, from S 4 until it closes."""

    log = Logger()

    def __init__(
        self,
        *,
        library: CoreLibrary,
        builtin: ModuleType,
        send: Callable[[bytes, bool], None],
        close: Callable[[str], None],
        reactor: Any,
        node_id: str,
        server_url: str,
        agent_version: str,
        tag: str = "",
        no_update_core_module: bool = False,
        tls_hashes: tuple[str, ...] = (),
    ) -> None:
        """
        :param send: ``send(frame, text)`` — one WebSocket message (text for JSON).
        :param close: close the connection, with a reason for the log.
        :param reactor: IReactorTime (+ IReactorProcess for the core).
        """
        self._library = library
        self._builtin = builtin
        self._send = send
        self._close = close
        self._reactor = reactor
        self._node_id = node_id
        self._server_url = server_url
        self._agent_version = agent_version
        self._tag = tag
        self._no_update = no_update_core_module
        self._tls_hashes = tls_hashes
        self._core: Any = None
        self._core_hash: Optional[bytes] = None  # hash of the running pushed core
        self._pending: Optional[tuple[bytes, bytes]] = None  # stored core waiting for S 16
        self._fallback: Optional[IDelayedCall] = None
        self._queue: list[dict[str, Any]] = []
        self._declined = False
        self._stopped = False
        self._handlers: dict[Command, Callable[[Any], None]] = {
            Command.CORE_MODULE_HASH: self._on_core_hash_request,
            Command.AGENT_HASH: self._on_agent_hash_request,
            Command.CORE_MODULE: self._on_core_module,
            Command.COMPRESSED_CORE_MODULE: self._on_compressed_core_module,
            Command.CORE_OK: self._on_core_ok,
            Command.AGENT_UPDATE: self._on_agent_update,
            Command.AGENT_UPDATE_BLOCK: self._on_agent_update,
        }

    # -- public API ----------------------------------------------------------------------------

    @property
    def core(self) -> Any:
        """The running core object (``None`` while a stored core waits)."""
        return self._core

    @property
    def core_hash(self) -> Optional[bytes]:
        """Hash of the running pushed core, ``None`` for the built-in one."""
        return self._core_hash

    def start(self) -> None:
        """Send A 15; start the built-in core, or wait for S 16 to start the stored one."""
        self._send(AgentTag(self._tag.encode("utf-8")[:4096]).encode(), False)
        stored = self._library.stored()
        if stored is not None:
            self._pending = stored
            self._fallback = self._reactor.callLater(CORE_OK_FALLBACK, self._fallback_fired)
            self.log.info(
                "stored core {hash} waits for the server's CoreOk", hash=stored[0].hex()[:16]
            )
        else:
            self._start_builtin()

    def stop(self) -> None:
        """The connection is gone: stop the core and timers."""
        self._stopped = True
        self._cancel_fallback()
        self._stop_core()
        self._queue.clear()

    def receive(self, frame: bytes) -> None:
        """Handle one frame from the server."""
        if self._stopped:
            return
        try:
            message = decode_message(frame, authenticated=True, sender=Sender.SERVER)
        except AgentProtocolError as error:
            self.log.warn("bad frame from the server: {error}; closing", error=str(error))
            self._close(f"protocol error: {error}")
            return
        if isinstance(message, dict):
            self._on_json(message)
        elif isinstance(message, CoreBinary):
            binary = message
            self._call_core(lambda core: core.handle_binary(binary.code, binary.payload))
        else:
            handler = self._handlers.get(message.command)
            if handler is None:
                self.log.debug("ignoring command {command}", command=int(message.command))
            else:
                handler(message)

    # -- handlers (each docstring names the layout) --------------------------------------------

    def _on_core_hash_request(self, message: CoreModuleHash) -> None:
        """S ``00 0B | rid`` → A ``00 0B | rid [| hash or 48 zeros]``."""
        if message.hash is not None:
            self.log.debug("ignoring a CoreModuleHash that carries a hash")
            return
        self._send(CoreModuleHash(message.request_id, self._reported_hash()).encode(), False)

    def _on_agent_hash_request(self, message: AgentHash) -> None:
        """S ``00 0C | rid`` → A ``00 0C | rid | 48 zeros`` (never update this agent)."""
        self._send(AgentHash(message.request_id, ZERO_HASH).encode(), False)

    def _on_agent_update(self, message: Any) -> None:
        """S 13/14 binary update transfer: not supported (we reported a zero hash)."""
        self.log.warn("the server tried to replace the agent binary; ignored")

    def _on_core_ok(self, message: CoreOk) -> None:
        """S ``00 10 | rid``: the core is current; start a waiting stored core."""
        if self._pending is not None:
            digest, blob = self._pending
            self._pending = None
            self._cancel_fallback()
            if not self._start_pushed(digest, blob):
                self._library.clear()
                self._start_builtin()
        elif self._core is None:
            self._start_builtin()

    def _on_compressed_core_module(self, message: CoreModule) -> None:
        """S ``00 14 | rid | hash | raw-DEFLATE(blob)``: inflate (bounded), then as 10."""
        if message.module_hash is None:
            self._on_core_module(message)
            return
        inflater = zlib.decompressobj(-15)
        try:
            blob = inflater.decompress(message.module, MAX_CORE_MODULE_LEN)
        except zlib.error as error:
            self.log.warn("compressed core does not inflate: {error}", error=str(error))
            self._send(CoreModuleHash(message.request_id).encode(), False)
            return
        if inflater.unconsumed_tail:
            self.log.warn("compressed core inflates past {limit} bytes", limit=MAX_CORE_MODULE_LEN)
            self._send(CoreModuleHash(message.request_id).encode(), False)
            return
        self._on_core_module(CoreModule(message.request_id, message.module_hash, blob))

    def _on_core_module(self, message: CoreModule) -> None:
        """S ``00 0A | rid | hash (48) | blob``, or ``00 0A | rid`` = delete the core."""
        rid = message.request_id
        if message.module_hash is None:
            self.log.info("the server cleared the core; running the built-in core")
            self._pending = None
            self._cancel_fallback()
            was_pushed = self._core_hash is not None
            self._library.clear()
            if was_pushed or self._core is None:
                self._stop_core()
                self._start_builtin()
            return
        digest, blob = message.module_hash, message.module
        if coreblob.core_hash(blob) != digest:
            self.log.warn("pushed core does not match its hash; dropped")
            self._send(CoreModuleHash(rid).encode(), False)
            return
        if not coreblob.is_python_core(blob):
            if not self._declined:
                self.log.warn(
                    "the server pushed a core this agent cannot run ({size} bytes, not a Python "
                    "core blob; MeshCentral's JavaScript core?); keeping the current core",
                    size=len(blob),
                )
            self._declined = True
            self._send(CoreModuleHash(rid, ZERO_HASH).encode(), False)
            return
        if self._no_update:
            self.log.info("noUpdateCoreModule=1: pushed core ignored")
            self._declined = True
            self._send(CoreModuleHash(rid, ZERO_HASH).encode(), False)
            return
        if digest == self._core_hash:
            self._send(CoreModuleHash(rid, digest).encode(), False)
            return
        self._pending = None
        self._cancel_fallback()
        if self._start_pushed(digest, blob):
            self._library.store(blob)
            self._declined = False
            self._send(CoreModuleHash(rid, digest).encode(), False)
        else:  # nothing was stored; whatever ran before keeps running (or the built-in core)
            if self._core is None:
                self._start_builtin()
            self._send(CoreModuleHash(rid).encode(), False)

    def _on_json(self, message: dict[str, Any]) -> None:
        """JSON → the running core; queued while a stored core waits for S 16."""
        if self._core is None:
            if len(self._queue) >= MAX_QUEUED:
                self.log.warn("core not started yet; dropping a queued message")
                self._queue.pop(0)
            self._queue.append(message)
            return
        self._call_core(lambda core: core.handle_json(message))

    # -- internals -----------------------------------------------------------------------------

    def _reported_hash(self) -> Optional[bytes]:
        if self._declined:
            return ZERO_HASH
        if self._core_hash is not None:
            return self._core_hash
        if self._pending is not None:
            return self._pending[0]
        return None

    def _context(self, digest: Optional[bytes]) -> CoreContext:
        return CoreContext(
            reactor=self._reactor,
            send_json=self._send_json,
            send_binary=self._send_binary,
            log=Logger(namespace="agentsrc.core"),
            node_id=self._node_id,
            server_url=self._server_url,
            agent_version=self._agent_version,
            core_hash=digest.hex() if digest is not None else None,
            tls_hashes=self._tls_hashes,
        )

    def _send_json(self, message: dict[str, Any]) -> None:
        if self._stopped:
            return
        try:
            frame = encode_json(message)
        except (TypeError, ValueError) as error:
            self.log.error("core sent a message that is not JSON: {error}", error=str(error))
            return
        self._send(frame, True)

    def _send_binary(self, frame: bytes) -> None:
        if self._stopped:
            return
        if len(frame) < 4 or int.from_bytes(frame[:2], "big") < 1000 or frame[:1] == b"{":
            self.log.error("core tried to send a non-core binary command; dropped")
            return
        self._send(bytes(frame), False)

    def _run(self, module: ModuleType, digest: Optional[bytes]) -> bool:
        try:
            core = module.create_core(self._context(digest))
            self._core, self._core_hash = core, digest
            core.start()
        except Exception:  # pushed code: any exception is possible
            self.log.failure("core {name} failed to start", name=module.__name__)
            self._stop_core()
            return False
        self.log.info(
            "core running: {name} {hash}",
            name=module.__name__,
            hash=digest.hex()[:16] if digest else "(built-in)",
        )
        queued, self._queue = self._queue, []
        for queued_message in queued:
            self._deliver(queued_message)
        return True

    def _start_builtin(self) -> None:
        self._stop_core()
        if not self._run(self._builtin, None):
            self._close("the built-in core failed to start")

    def _start_pushed(self, digest: bytes, blob: bytes) -> bool:
        try:
            module = self._library.load(digest, blob)
        except coreblob.CoreBlobError as error:
            self.log.error("pushed core {hash} refused: {error}", hash=digest.hex()[:16],
                           error=str(error))
            return False
        self._stop_core()
        return self._run(module, digest)

    def _stop_core(self) -> None:
        core, self._core, self._core_hash = self._core, None, None
        if core is not None:
            try:
                core.stop()
            except Exception:
                self.log.failure("core failed to stop cleanly")

    def _deliver(self, message: dict[str, Any]) -> None:
        self._call_core(lambda core: core.handle_json(message))

    def _call_core(self, call: Callable[[Any], None]) -> None:
        if self._core is None:
            return
        try:
            call(self._core)
        except Exception:  # the core is pushed code: any exception is possible
            self.log.failure("the core failed handling a message")

    def _cancel_fallback(self) -> None:
        if self._fallback is not None and self._fallback.active():
            self._fallback.cancel()
        self._fallback = None

    def _fallback_fired(self) -> None:
        self._fallback = None
        if self._pending is not None and not self._stopped:
            self.log.info("no CoreOk within {s} s; starting the stored core", s=CORE_OK_FALLBACK)
            self._on_core_ok(CoreOk())
