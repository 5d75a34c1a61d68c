"""The event bus: who hears about what happened.

``publish(targets, event)`` delivers ``event`` to every subscriber whose ids intersect
``targets`` (MeshCentral's dispatch rule, spec control-protocol §8): user sessions
subscribe with their user id, the ids of their device groups and user groups, and
``"*"`` for administrators.  Events not marked ``nolog`` are also written to the store
by the publisher (:func:`publish_and_store`), which is the audit trail.

:class:`LocalEventBus` serves one process; a Redis implementation of the same interface
serves a cluster.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import Interface, implementer

from meshd.store.interface import IStore

Event = dict[str, Any]
Listener = Callable[[Event], None]


class IEventBus(Interface):
    def publish(targets: Iterable[str], event: Event) -> None:
        """Deliver ``event`` to the subscribers of any of ``targets``."""

    def subscribe(ids: Iterable[str], listener: Listener) -> "Subscription":
        """Call ``listener(event)`` for events published to any of ``ids``."""


class Subscription:
    """A subscription; ``cancel()`` ends it, ``update(ids)`` changes its ids."""

    def __init__(self, bus: "LocalEventBus", ids: frozenset[str], listener: Listener) -> None:
        self._bus = bus
        self.ids = ids
        self.listener = listener

    def update(self, ids: Iterable[str]) -> None:
        self._bus._unindex(self)
        self.ids = frozenset(ids)
        self._bus._index(self)

    def cancel(self) -> None:
        self._bus._unindex(self)


@implementer(IEventBus)
class LocalEventBus:
    """In-process delivery; a listener that raises is logged and does not stop the others."""

    _log = Logger()

    def __init__(self) -> None:
        self._by_id: dict[str, set[Subscription]] = {}

    def _index(self, subscription: Subscription) -> None:
        for target in subscription.ids:
            self._by_id.setdefault(target, set()).add(subscription)

    def _unindex(self, subscription: Subscription) -> None:
        for target in subscription.ids:
            subscribers = self._by_id.get(target)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._by_id[target]

    def subscribe(self, ids: Iterable[str], listener: Listener) -> Subscription:
        subscription = Subscription(self, frozenset(ids), listener)
        self._index(subscription)
        return subscription

    def publish(self, targets: Iterable[str], event: Event) -> None:
        receivers: set[Subscription] = set()
        for target in targets:
            receivers.update(self._by_id.get(target, ()))
        for subscription in list(receivers):
            try:
                subscription.listener(event)
            except Exception:
                self._log.failure("event listener failed for {action}",
                                  action=event.get("action"))


def publish_and_store(bus: IEventBus, store: Optional[IStore], targets: list[str],
                      event: Event, now: Callable[[], float]) -> "Deferred[None]":
    """Publish an event and, unless it is ``nolog``, append it to the store's audit trail.

    The Deferred fires when the event is stored (at once for ``nolog`` events).
    """
    bus.publish(targets, event)
    if store is None or event.get("nolog"):
        return succeed(None)
    record = {k: v for k, v in event.items() if k != "node"}
    record["ids"] = list(targets)
    record.setdefault("domain", "")
    record["time"] = datetime.fromtimestamp(now(), timezone.utc)
    return store.store_event(record)
