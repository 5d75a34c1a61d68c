"""Presence and routing: which devices are connected, how, and to which server.

A device can be reachable over several connections at once (its agent, Intel AMT over
CIRA, a relay); MeshCentral reports them as the bit field ``conn`` (1 agent, 2 CIRA,
4 AMT on the LAN, 16 MQTT) and the power state ``pwr``.  :class:`LocalPresence` keeps
this for one process; a Redis implementation with keys that expire keeps it for a
cluster, so every server can answer "is this node online, and where".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from zope.interface import Interface, implementer

CONN_AGENT = 1
CONN_CIRA = 2
CONN_AMT = 4
CONN_MQTT = 16


@dataclass(frozen=True)
class Connection:
    """One live connection of a device."""

    node_id: str
    kind: int  # one CONN_* bit
    server_id: str  # which meshd process holds it
    since: float
    address: str = ""
    handle: Any = None  # the protocol object, on the server that holds it


class IPresence(Interface):
    def add(connection: Connection) -> Optional[Connection]:
        """Record a connection; returns the one of the same node and kind it replaces."""

    def remove(connection: Connection) -> bool:
        """Forget a connection (only if it is still the current one)."""

    def get(node_id: str, kind: int) -> Optional[Connection]:
        """The current connection of that kind, if any."""

    def state(node_id: str) -> int:
        """The ``conn`` bit field of a node (0 when offline)."""


@implementer(IPresence)
class LocalPresence:
    """Presence for one process; ``on_change(node_id, conn)`` hears every change."""

    def __init__(self, on_change: Optional[Callable[[str, int], None]] = None) -> None:
        self._nodes: dict[str, dict[int, Connection]] = {}
        self._on_change = on_change
        #: Changes with every add and remove (what was computed from presence at one
        #: version is still right at the same version).
        self.version = 0

    def add(self, connection: Connection) -> Optional[Connection]:
        kinds = self._nodes.setdefault(connection.node_id, {})
        previous = kinds.get(connection.kind)
        kinds[connection.kind] = connection
        self.version += 1
        if self._on_change is not None:
            self._on_change(connection.node_id, self.state(connection.node_id))
        return previous

    def remove(self, connection: Connection) -> bool:
        kinds = self._nodes.get(connection.node_id)
        if kinds is None or kinds.get(connection.kind) is not connection:
            return False
        del kinds[connection.kind]
        self.version += 1
        if not kinds:
            del self._nodes[connection.node_id]
        if self._on_change is not None:
            self._on_change(connection.node_id, self.state(connection.node_id))
        return True

    def get(self, node_id: str, kind: int) -> Optional[Connection]:
        return self._nodes.get(node_id, {}).get(kind)

    def state(self, node_id: str) -> int:
        bits = 0
        for kind in self._nodes.get(node_id, {}):
            bits |= kind
        return bits

    def online(self) -> list[str]:
        return sorted(self._nodes)
