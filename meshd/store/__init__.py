"""The document store: MeshCentral's records behind a Deferred API (see ``interface``).

``open_store`` picks the backend from the configuration: the embedded SQLite file by
default, MongoDB when a URL is given. It returns the store unopened; the service that
owns it calls ``open()`` (which creates or migrates the schema) before anyone uses it,
and ``close()`` at shutdown.
"""

from __future__ import annotations

from typing import Any

from meshd.store.interface import (
    EVENTS_COLLECTION,
    MAIN_COLLECTION,
    POWER_COLLECTION,
    Document,
    Export,
    IStore,
    SchemaError,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "EVENTS_COLLECTION",
    "MAIN_COLLECTION",
    "POWER_COLLECTION",
    "Document",
    "Export",
    "IStore",
    "SchemaError",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]


def open_store(
    datapath: str,
    mongodb_url: str | None = None,
    reactor: Any = None,
    *,
    mongodb_name: str = "meshcentral",
    mongodb_timeout_ms: int = 5000,
) -> IStore:
    """The configured store, not yet opened.

    @param datapath: the data folder; the SQLite backend keeps ``meshd.db`` there.
    @param mongodb_url: use MongoDB at this URL (``mongodb://…``) instead of SQLite.
    @param reactor: the reactor whose threads run the blocking work (the global
        reactor if None, for ``twistd`` use).
    @param mongodb_name: MongoDB database name (MeshCentral's ``mongoDbName``).
    @param mongodb_timeout_ms: how long MongoDB calls wait for a server before failing
        with StoreUnavailable.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if mongodb_url:
        from meshd.store.mongo import MongoStore

        return MongoStore(mongodb_url, reactor, mongodb_name,
                          server_selection_timeout_ms=mongodb_timeout_ms)
    from meshd.store.sqlite import SQLiteStore

    return SQLiteStore(datapath, reactor)
