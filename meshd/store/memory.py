"""An in-memory IStore for unit tests of other modules.

It shares argument checks and value rules with the real backends (and passes the same
contract tests), runs every call inline and returns already-fired Deferreds, so tests
need no reactor and no threads. ``unavailable = True`` makes every call fail with
StoreUnavailable, to test how callers cope with a dead database.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from meshd.store import _docs
from meshd.store._base import StoreBase
from meshd.store.interface import (
    EVENTS_COLLECTION,
    MAIN_COLLECTION,
    POWER_COLLECTION,
    Document,
    Export,
    IStore,
    StoreUnavailable,
)

_T = TypeVar("_T")


def _copy(doc: Document) -> Document:
    result: Document = _docs.normalize(doc)
    return result


@implementer(IStore)
class MemoryStore(StoreBase):
    """IStore kept in dicts and lists; nothing survives the object."""

    backend = "memory"
    location = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.unavailable = False
        self._documents: dict[str, Document] = {}
        self._events: list[tuple[int, Document]] = []
        self._power: list[tuple[int, Document]] = []
        self._sequence = itertools.count(1)

    def _execute(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        if self.unavailable:
            return defer.fail(StoreUnavailable(self.backend, self.location, "simulated outage"))
        try:
            return defer.succeed(work(*args))
        except Exception:
            return defer.fail()

    def open(self) -> Deferred[None]:
        self._open_state = True
        self._healthy = True
        return defer.succeed(None)

    def close(self) -> Deferred[None]:
        self._open_state = False
        return defer.succeed(None)

    # -- main collection -------------------------------------------------------------

    def _thd_get(self, doc_id: str) -> Document | None:
        doc = self._documents.get(doc_id)
        return None if doc is None else _copy(doc)

    def _thd_get_many(self, doc_ids: list[str]) -> list[Document]:
        return [_copy(self._documents[doc_id]) for doc_id in doc_ids if doc_id in self._documents]

    def _thd_set_many(self, docs: list[Document]) -> None:
        for doc in docs:
            self._documents[doc["_id"]] = doc

    def _thd_remove_many(self, doc_ids: list[str]) -> int:
        return sum(self._documents.pop(doc_id, None) is not None for doc_id in set(doc_ids))

    def _thd_remove_by_mesh(self, mesh_id: str) -> int:
        doomed = [key for key, doc in self._documents.items() if doc.get("meshid") == mesh_id]
        for key in doomed:
            del self._documents[key]
        return len(doomed)

    def _thd_find(
        self, doc_type: str, domain: str | None, field: str | None, values: list[str] | None
    ) -> list[Document]:
        wanted = set(values or [])
        return [
            _copy(doc)
            for doc in self._documents.values()
            if doc.get("type") == doc_type
            and (domain is None or doc.get("domain") == domain)
            and (field is None or doc.get(field) in wanted)
        ]

    def _thd_count(self, doc_type: str, domain: str | None) -> int:
        return len(self._thd_find(doc_type, domain, None, None))

    def _thd_increment(self, doc_id: str, field: str, by: int) -> int:
        doc = self._documents.get(doc_id, {"_id": doc_id})
        current = doc.get(field, 0)
        if isinstance(current, bool) or not isinstance(current, int):
            raise ValueError(f"field {field!r} of {doc_id!r} is not an integer")
        value = _docs.normalize(current + by, field)
        self._documents[doc_id] = {**doc, field: value}
        return int(value)

    # -- events ----------------------------------------------------------------------

    def _thd_store_event(self, event: Document) -> None:
        self._events.append((next(self._sequence), event))

    def _thd_get_events(
        self,
        ids: list[str] | None,
        domain: str,
        limit: int | None,
        node_id: str | None,
        user_id: str | None,
        action: str | None,
    ) -> list[Document]:
        targets = None if ids is None else set(ids)

        def matches(event: Document) -> bool:
            if event.get("domain") != domain:
                return False
            if targets is not None and targets.isdisjoint(event["ids"]):
                if user_id is None or event.get("userid") != user_id:
                    return False
            if node_id is not None and event.get("nodeid") != node_id:
                return False
            return action is None or event.get("action") == action

        found = [(event["time"], seq, event) for seq, event in self._events if matches(event)]
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        if limit is not None:
            found = found[:limit]
        return [_copy(event) for _, _, event in found]

    def _remove_events(self, doomed: Callable[[Document], bool]) -> int:
        before = len(self._events)
        self._events = [(seq, event) for seq, event in self._events if not doomed(event)]
        return before - len(self._events)

    def _thd_remove_node_events(self, node_id: str, domain: str) -> int:
        return self._remove_events(
            lambda event: event.get("domain") == domain and event.get("nodeid") == node_id
        )

    def _thd_purge_events(self, older_than: datetime, batch: int) -> int:
        return self._remove_events(lambda event: bool(event["time"] < older_than))

    # -- power timeline --------------------------------------------------------------

    def _thd_store_power_event(self, event: Document) -> None:
        self._power.append((next(self._sequence), event))

    def _thd_get_power_events(self, node_id: str, since: datetime | None) -> list[Document]:
        found = [
            (event["time"], seq, event)
            for seq, event in self._power
            if event["nodeid"] in (node_id, "*") and (since is None or event["time"] >= since)
        ]
        found.sort(key=lambda item: (item[0], item[1]))
        return [_copy(event) for _, _, event in found]

    def _remove_power(self, doomed: Callable[[Document], bool]) -> int:
        before = len(self._power)
        self._power = [(seq, event) for seq, event in self._power if not doomed(event)]
        return before - len(self._power)

    def _thd_remove_node_power_events(self, node_id: str) -> int:
        return self._remove_power(lambda event: event["nodeid"] == node_id)

    def _thd_purge_power_events(self, older_than: datetime, batch: int) -> int:
        return self._remove_power(lambda event: bool(event["time"] < older_than))

    # -- maintenance -----------------------------------------------------------------

    def _thd_export(self) -> Export:
        def oldest_first(records: list[tuple[int, Document]]) -> list[Document]:
            ordered = sorted(records, key=lambda record: (record[1]["time"], record[0]))
            return [_copy(event) for _, event in ordered]

        return {
            MAIN_COLLECTION: [_copy(self._documents[key]) for key in sorted(self._documents)],
            EVENTS_COLLECTION: oldest_first(self._events),
            POWER_COLLECTION: oldest_first(self._power),
        }
