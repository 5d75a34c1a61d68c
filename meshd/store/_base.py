"""What every backend shares: argument checks, snapshots, health, the thread pool.

A public method checks and snapshots its arguments in the caller's (reactor) thread,
so a caller may change a dict right after the call, then hands plain data to a
``_thd_*`` method. ``_thd_*`` methods run where the backend decides (the backend's own
thread pool, or inline for the in-memory fake) and return plain data, never cursors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from meshd.store import _docs
from meshd.store.interface import Document, Export, StoreUnavailable

_P = ParamSpec("_P")
_T = TypeVar("_T")
_S = TypeVar("_S", bound="StoreBase")

#: Rows a purge deletes per call (and per SQLite transaction).
PURGE_BATCH = 2000


def _fail_early(
    method: Callable[Concatenate[_S, _P], Deferred[_T]],
) -> Callable[Concatenate[_S, _P], Deferred[_T]]:
    """Turn an argument error raised before any work starts into a failed Deferred."""

    def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            return defer.fail()

    functools.update_wrapper(wrapper, method)
    return wrapper


class StoreBase:
    """The IStore methods, written once over abstract ``_thd_*`` methods."""

    backend: str = "abstract"
    location: str = ""
    _log = Logger()

    def __init__(self) -> None:
        self._open_state = False
        self._healthy = False
        #: Document writes asked of this store object (see :meth:`change_marker`).
        self._writes = 0

    @property
    def is_healthy(self) -> bool:
        return self._open_state and self._healthy

    # -- running work ----------------------------------------------------------------

    def _execute(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Run ``work(*args)`` where this backend runs its database work."""
        raise NotImplementedError

    def _run(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Run ``work`` on an open store, keeping ``is_healthy`` up to date."""
        if not self._open_state:
            return defer.fail(StoreUnavailable(self.backend, self.location, "the store is closed"))
        result = self._execute(work, *args)
        result.addCallbacks(self._succeeded, self._failed)
        return result

    def _succeeded(self, result: _T) -> _T:
        if not self._healthy:
            self._healthy = True
            self._log.info("{backend} store {location} is available", backend=self.backend,
                           location=self.location)
        return result

    def _failed(self, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, StoreUnavailable) and self._healthy:
            self._healthy = False
            self._log.error("{backend} store {location} is unavailable: {reason}",
                            backend=self.backend, location=self.location, reason=error.reason)
        return failure

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> Deferred[None]:
        raise NotImplementedError

    def close(self) -> Deferred[None]:
        raise NotImplementedError

    # -- main collection -------------------------------------------------------------

    @_fail_early
    def get(self, doc_id: str) -> Deferred[Document | None]:
        return self._run(self._thd_get, _docs.require_id(doc_id))

    @_fail_early
    def get_many(self, doc_ids: Sequence[str]) -> Deferred[list[Document]]:
        return self._run(self._thd_get_many, _docs.require_ids(doc_ids, "doc_ids"))

    @_fail_early
    def set(self, doc: Document) -> Deferred[None]:
        self._writes += 1
        return self._run(self._thd_set_many, [_docs.normalize_document(doc)])

    @_fail_early
    def set_many(self, docs: Sequence[Document]) -> Deferred[None]:
        self._writes += 1
        return self._run(self._thd_set_many, [_docs.normalize_document(doc) for doc in docs])

    @_fail_early
    def remove(self, doc_id: str) -> Deferred[bool]:
        self._writes += 1
        result = self._run(self._thd_remove_many, [_docs.require_id(doc_id)])
        return result.addCallback(bool)

    @_fail_early
    def remove_many(self, doc_ids: Sequence[str]) -> Deferred[int]:
        self._writes += 1
        return self._run(self._thd_remove_many, _docs.require_ids(doc_ids, "doc_ids"))

    @_fail_early
    def remove_by_mesh(self, mesh_id: str) -> Deferred[int]:
        self._writes += 1
        return self._run(self._thd_remove_by_mesh, _docs.require_id(mesh_id, "mesh_id"))

    @_fail_early
    def find_by_type(self, doc_type: str, domain: str | None = None) -> Deferred[list[Document]]:
        return self._run(self._thd_find, _docs.require_id(doc_type, "doc_type"),
                         _check_domain(domain), None, None)

    @_fail_early
    def find_nodes_by_mesh(
        self, mesh_ids: Sequence[str], domain: str | None = None
    ) -> Deferred[list[Document]]:
        return self._run(self._thd_find, "node", _check_domain(domain), "meshid",
                         _docs.require_ids(mesh_ids, "mesh_ids"))

    @_fail_early
    def find_by_node(
        self, doc_type: str, node_ids: Sequence[str], domain: str | None = None
    ) -> Deferred[list[Document]]:
        return self._run(self._thd_find, _docs.require_id(doc_type, "doc_type"),
                         _check_domain(domain), "nodeid", _docs.require_ids(node_ids, "node_ids"))

    @_fail_early
    def find_users_by_email(self, email: str, domain: str) -> Deferred[list[Document]]:
        if not isinstance(domain, str):
            raise TypeError("domain must be a str")
        return self._run(self._thd_find, "user", domain, "email",
                         [_docs.require_id(email, "email")])

    @_fail_early
    def count_by_type(self, doc_type: str, domain: str | None = None) -> Deferred[int]:
        return self._run(self._thd_count, _docs.require_id(doc_type, "doc_type"),
                         _check_domain(domain))

    @_fail_early
    def increment(self, doc_id: str, field: str, by: int = 1) -> Deferred[int]:
        self._writes += 1
        if isinstance(by, bool) or not isinstance(by, int):
            raise TypeError("by must be an int")
        return self._run(self._thd_increment, _docs.require_id(doc_id),
                         _docs.check_field_name(field), _docs.normalize(by))

    @_fail_early
    def get_setting(self, key: str) -> Deferred[Any]:
        result = self._run(self._thd_get, _docs.require_id(key, "key"))
        return result.addCallback(lambda doc: None if doc is None else doc.get("value"))

    @_fail_early
    def set_setting(self, key: str, value: Any) -> Deferred[None]:
        doc = _docs.normalize_document({"_id": _docs.require_id(key, "key"), "value": value})
        self._writes += 1
        return self._run(self._thd_set_many, [doc])

    def change_marker(self) -> Deferred[Any]:
        """A value equal to an earlier one only if no document changed in between.

        Writes asked of this object are counted here (the backend runs calls in the
        order they were made, so a read asked after the marker sees every write counted
        before it); :meth:`_thd_external_version` adds what other processes committed.
        None when the backend cannot tell (then nothing may be cached on it).
        """
        writes = self._writes
        if not self.can_mark_changes:
            return defer.succeed(None)
        return self._run(self._thd_external_version).addCallback(
            lambda external: (writes, external))

    #: Whether :meth:`change_marker` can tell changes (a store shared with other
    #: processes that it cannot watch cannot).
    can_mark_changes = True

    def _thd_external_version(self) -> Any:
        """Something that changes when another process commits a change."""
        return 0

    # -- events ----------------------------------------------------------------------

    @_fail_early
    def store_event(self, event: Document) -> Deferred[None]:
        return self._run(self._thd_store_event, _docs.normalize_event(event))

    @_fail_early
    def get_events(
        self,
        ids: Sequence[str] | None,
        domain: str,
        limit: int | None = None,
        node_id: str | None = None,
        user_id: str | None = None,
        action: str | None = None,
    ) -> Deferred[list[Document]]:
        if not isinstance(domain, str):
            raise TypeError("domain must be a str")
        targets = None if ids is None else _docs.require_ids(ids, "ids")
        return self._run(
            self._thd_get_events,
            targets,
            domain,
            _docs.check_limit(limit),
            None if node_id is None else _docs.require_id(node_id, "node_id"),
            None if user_id is None else _docs.require_id(user_id, "user_id"),
            None if action is None else _docs.require_id(action, "action"),
        )

    @_fail_early
    def remove_node_events(self, node_id: str, domain: str) -> Deferred[int]:
        if not isinstance(domain, str):
            raise TypeError("domain must be a str")
        return self._run(self._thd_remove_node_events, _docs.require_id(node_id, "node_id"), domain)

    @_fail_early
    def purge_events(self, older_than: datetime) -> Deferred[int]:
        cutoff = _docs.require_datetime(older_than, "older_than")
        return Deferred.fromCoroutine(self._purge(self._thd_purge_events, cutoff))

    async def _purge(self, work: Callable[[datetime, int], int], cutoff: datetime) -> int:
        """Delete in batches, each its own call, so a large purge (the first one after
        an import) does not hold up other calls for long."""
        total = 0
        while True:
            removed = await self._run(work, cutoff, PURGE_BATCH)
            total += removed
            if removed < PURGE_BATCH:
                return total

    # -- power timeline --------------------------------------------------------------

    @_fail_early
    def store_power_event(self, event: Document) -> Deferred[None]:
        return self._run(self._thd_store_power_event, _docs.normalize_power_event(event))

    @_fail_early
    def get_power_events(
        self, node_id: str, since: datetime | None = None
    ) -> Deferred[list[Document]]:
        start = None if since is None else _docs.require_datetime(since, "since")
        return self._run(self._thd_get_power_events, _docs.require_id(node_id, "node_id"), start)

    @_fail_early
    def remove_node_power_events(self, node_id: str) -> Deferred[int]:
        return self._run(self._thd_remove_node_power_events, _docs.require_id(node_id, "node_id"))

    @_fail_early
    def purge_power_events(self, older_than: datetime) -> Deferred[int]:
        cutoff = _docs.require_datetime(older_than, "older_than")
        return Deferred.fromCoroutine(self._purge(self._thd_purge_power_events, cutoff))

    # -- maintenance -----------------------------------------------------------------

    def export_all(self) -> Deferred[Export]:
        return self._run(self._thd_export)

    # -- the backend's work (plain data in, plain data out) ----------------------------

    def _thd_get(self, doc_id: str) -> Document | None:
        raise NotImplementedError

    def _thd_get_many(self, doc_ids: list[str]) -> list[Document]:
        raise NotImplementedError

    def _thd_set_many(self, docs: list[Document]) -> None:
        raise NotImplementedError

    def _thd_remove_many(self, doc_ids: list[str]) -> int:
        raise NotImplementedError

    def _thd_remove_by_mesh(self, mesh_id: str) -> int:
        raise NotImplementedError

    def _thd_find(
        self, doc_type: str, domain: str | None, field: str | None, values: list[str] | None
    ) -> list[Document]:
        """Documents of ``doc_type`` (in ``domain``) whose ``field`` is in ``values``;
        ``field`` is one of ``meshid``, ``nodeid``, ``email`` or None (no test)."""
        raise NotImplementedError

    def _thd_count(self, doc_type: str, domain: str | None) -> int:
        raise NotImplementedError

    def _thd_increment(self, doc_id: str, field: str, by: int) -> int:
        raise NotImplementedError

    def _thd_store_event(self, event: Document) -> None:
        raise NotImplementedError

    def _thd_get_events(
        self,
        ids: list[str] | None,
        domain: str,
        limit: int | None,
        node_id: str | None,
        user_id: str | None,
        action: str | None,
    ) -> list[Document]:
        raise NotImplementedError

    def _thd_remove_node_events(self, node_id: str, domain: str) -> int:
        raise NotImplementedError

    def _thd_purge_events(self, older_than: datetime, batch: int) -> int:
        """Delete events older than ``older_than``: at least ``batch`` of them if there
        are that many (more is allowed); return how many."""
        raise NotImplementedError

    def _thd_store_power_event(self, event: Document) -> None:
        raise NotImplementedError

    def _thd_get_power_events(self, node_id: str, since: datetime | None) -> list[Document]:
        raise NotImplementedError

    def _thd_remove_node_power_events(self, node_id: str) -> int:
        raise NotImplementedError

    def _thd_purge_power_events(self, older_than: datetime, batch: int) -> int:
        """Like ``_thd_purge_events``, for power events."""
        raise NotImplementedError

    def _thd_export(self) -> Export:
        raise NotImplementedError


def _check_domain(domain: Any) -> str | None:
    if domain is not None and not isinstance(domain, str):
        raise TypeError("domain must be a str or None")
    return domain


class ThreadedStore(StoreBase):
    """A backend whose blocking client runs on its own thread pool.

    One thread by default: calls then run in the order they were made, and SQLite gets
    the single writer it wants. The pool is created by :meth:`open` and stopped by
    :meth:`close` (or at reactor shutdown if nobody closed the store).
    """

    def __init__(self, reactor: Any, threads: int = 1) -> None:
        super().__init__()
        self._reactor: Any = reactor
        if not IReactorFromThreads.providedBy(reactor):
            raise TypeError("the reactor must provide IReactorFromThreads")
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._threads = threads
        self._pool: ThreadPool | None = None
        self._shutdown_trigger: Any = None

    # Backends implement these; they run on the pool.
    def _thd_open(self) -> None:
        raise NotImplementedError

    def _thd_close(self) -> None:
        raise NotImplementedError

    def _map_error(self, exc: Exception) -> Exception | None:
        """The StoreUnavailable (or ValueError) a client library error means, or None."""
        return None

    def _guarded(self, work: Callable[..., _T], *args: Any) -> _T:
        try:
            return work(*args)
        except Exception as exc:
            mapped = self._map_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def _execute(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        assert self._pool is not None
        return deferToThreadPool(self._reactor, self._pool, self._guarded, work, *args)

    def open(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        if self._open_state:
            return
        pool = ThreadPool(minthreads=self._threads, maxthreads=self._threads,
                          name=f"meshd-store-{self.backend}")
        pool.start()
        self._pool = pool
        if IReactorCore.providedBy(self._reactor):
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._stop_pool)
        try:
            await self._execute(self._thd_open)
        except BaseException:
            self._stop_pool()
            raise
        self._open_state = True
        self._healthy = True
        self._log.info("{backend} store {location} opened", backend=self.backend,
                       location=self.location)

    def close(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self._pool is None:
            return
        self._open_state = False
        try:
            await self._execute(self._thd_close)
        except Exception:
            self._log.failure("closing {backend} store {location} failed",
                              backend=self.backend, location=self.location)
        finally:
            self._stop_pool()
        self._log.info("{backend} store {location} closed", backend=self.backend,
                       location=self.location)

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if self._shutdown_trigger is not None:
            trigger, self._shutdown_trigger = self._shutdown_trigger, None
            try:
                self._reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                pass  # already fired: we are running as that trigger
        if pool is not None:
            pool.stop()
