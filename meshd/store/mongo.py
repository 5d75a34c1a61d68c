"""The MongoDB store: pymongo on its own thread pool, MeshCentral's layout.

Same database (default ``meshcentral``), collections (``meshcentral``, ``events``,
``power``), index names and key escaping as MeshCentral 1.1.55, so meshd can run on
a database MeshCentral wrote. Keys of ``links``/``ssh``/``rdp`` are stored escaped
(MeshCentral's ``%2E``/``%24`` scheme: mesh ids contain ``$``) and read back plain.
Datetimes are BSON dates.

Availability: server selection gives up after ``server_selection_timeout_ms`` (5 s by
default), so a dead server turns into StoreUnavailable quickly instead of hanging a
caller; pymongo reconnects by itself when the server is back.

Expiry: like MeshCentral, ``events.time`` and ``power.time`` carry TTL indexes
(``ExpireTime1``) with the configured retention; pass ``None`` to leave expiry to
:mod:`meshd.store.expire` alone. ``export_all`` is not a point-in-time snapshot here.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from bson.errors import InvalidDocument
from bson.objectid import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReplaceOne, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    DocumentTooLarge,
    OperationFailure,
)
from zope.interface import implementer

from meshd.store import _docs
from meshd.store._base import ThreadedStore
from meshd.store.interface import (
    EVENTS_COLLECTION,
    MAIN_COLLECTION,
    POWER_COLLECTION,
    Document,
    Export,
    IStore,
    StoreUnavailable,
)

DEFAULT_DATABASE = "meshcentral"
DEFAULT_EVENTS_EXPIRE_SECONDS = 20 * 24 * 3600
DEFAULT_POWER_EXPIRE_SECONDS = 10 * 24 * 3600

# Server error codes that mean "the database cannot serve us", not "bad request":
# Unauthorized, AuthenticationFailed, NotWritablePrimary, InterruptedAtShutdown,
# ShutdownInProgress, PrimarySteppedDown, OutOfDiskSpace.
_UNAVAILABLE_CODES = frozenset({13, 18, 10107, 11600, 91, 189, 14031})
# IndexOptionsConflict, IndexKeySpecsConflict.
_INDEX_CONFLICT_CODES = frozenset({85, 86})
_TYPE_MISMATCH = 14

_Index = tuple[str, list[tuple[str, int]], dict[str, Any]]

# MeshCentral's indexes (db.js), so MeshCentral finds what it expects in a shared DB.
_MAIN_INDEXES: list[_Index] = [
    ("TypeDomainMesh1", [("type", ASCENDING), ("domain", ASCENDING), ("meshid", ASCENDING)],
     {"sparse": True}),
    ("Email1", [("email", ASCENDING)], {"sparse": True}),
    ("Mesh1", [("meshid", ASCENDING)], {"sparse": True}),
    ("AmtUuid1", [("intelamt.uuid", ASCENDING)], {"sparse": True}),
]
_EVENTS_INDEXES: list[_Index] = [
    ("UseridAction1", [("userid", ASCENDING), ("action", ASCENDING)], {"sparse": True}),
    ("DomainNodeTime1", [("domain", ASCENDING), ("nodeid", ASCENDING), ("time", DESCENDING)],
     {"sparse": True}),
    ("IdsAndTime1", [("ids", ASCENDING), ("time", DESCENDING)], {"sparse": True}),
]
_POWER_INDEXES: list[_Index] = [
    ("NodeIdAndTime1", [("nodeid", ASCENDING), ("time", ASCENDING)], {"sparse": True}),
]


def redact_url(url: str) -> str:
    """The URL without its password, fit for logs and error messages."""
    return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", url)


def _short_reason(exc: Exception) -> str:
    # Server selection errors append a long topology dump; the first part says it all.
    text = str(exc).split(", Timeout:")[0].split(", Topology Description:")[0]
    return text if len(text) <= 300 else text[:297] + "..."


def _plain(value: Any) -> Any:
    """Plain data from what pymongo returns (datetimes in UTC, ObjectIds as str)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return _docs.to_utc(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)  # bson.Int64 -> int
    return value


def _read_document(raw: dict[str, Any]) -> Document:
    result: Document = _plain(_docs.unescape_links(raw))
    return result


def _read_record(raw: dict[str, Any]) -> Document:
    """An event or power event: the backend's ObjectId ``_id`` is dropped."""
    raw.pop("_id", None)
    result: Document = _plain(_docs.unescape_event(raw))
    return result


@implementer(IStore)
class MongoStore(ThreadedStore):
    """IStore over a MongoDB database (see the module docstring)."""

    # Other meshd processes write to the same database unseen: nothing may be cached.
    can_mark_changes = False

    backend = "mongodb"

    def __init__(
        self,
        url: str,
        reactor: Any,
        database: str = DEFAULT_DATABASE,
        *,
        server_selection_timeout_ms: int = 5000,
        socket_timeout_ms: int = 60000,
        threads: int = 1,
        events_expire_seconds: int | None = DEFAULT_EVENTS_EXPIRE_SECONDS,
        power_expire_seconds: int | None = DEFAULT_POWER_EXPIRE_SECONDS,
    ) -> None:
        super().__init__(reactor, threads=threads)
        self._url = url
        self._database_name = database
        self._server_selection_timeout_ms = server_selection_timeout_ms
        self._socket_timeout_ms = socket_timeout_ms
        self._events_expire_seconds = events_expire_seconds
        self._power_expire_seconds = power_expire_seconds
        self.location = f"{redact_url(url)} (database {database})"
        self._client: MongoClient[dict[str, Any]] | None = None
        self._main: Collection[dict[str, Any]] | None = None
        self._event_docs: Collection[dict[str, Any]] | None = None
        self._power_docs: Collection[dict[str, Any]] | None = None

    # -- errors ----------------------------------------------------------------------

    def _map_error(self, exc: Exception) -> Exception | None:
        if isinstance(exc, (ConnectionFailure, ConfigurationError)):
            return StoreUnavailable(self.backend, self.location, _short_reason(exc))
        if isinstance(exc, OperationFailure) and exc.code in _UNAVAILABLE_CODES:
            return StoreUnavailable(self.backend, self.location, _short_reason(exc))
        if isinstance(exc, (InvalidDocument, DocumentTooLarge)):
            return ValueError(str(exc))
        return None

    def _collections(
        self,
    ) -> tuple[Collection[dict[str, Any]], Collection[dict[str, Any]], Collection[dict[str, Any]]]:
        if self._main is None or self._event_docs is None or self._power_docs is None:
            raise StoreUnavailable(self.backend, self.location, "the store is closed")
        return self._main, self._event_docs, self._power_docs

    # -- lifecycle -------------------------------------------------------------------

    def _thd_open(self) -> None:
        client: MongoClient[dict[str, Any]] = MongoClient(
            self._url,
            serverSelectionTimeoutMS=self._server_selection_timeout_ms,
            connectTimeoutMS=self._server_selection_timeout_ms,
            socketTimeoutMS=self._socket_timeout_ms,
            tz_aware=True,
            tzinfo=_docs.UTC,
            appname="meshd",
        )
        try:
            client.admin.command("ping")
            database = client[self._database_name]
            main = database[MAIN_COLLECTION]
            events = database[EVENTS_COLLECTION]
            power = database[POWER_COLLECTION]
            self._create_indexes(main, _MAIN_INDEXES)
            self._create_indexes(
                events, _EVENTS_INDEXES + self._time_index(self._events_expire_seconds))
            self._create_indexes(
                power, _POWER_INDEXES + self._time_index(self._power_expire_seconds))
        except BaseException:
            client.close()
            raise
        self._client = client
        self._main, self._event_docs, self._power_docs = main, events, power

    @staticmethod
    def _time_index(expire_seconds: int | None) -> list[_Index]:
        if expire_seconds is None:
            return [("Time1", [("time", ASCENDING)], {})]
        return [("ExpireTime1", [("time", ASCENDING)], {"expireAfterSeconds": expire_seconds})]

    def _create_indexes(
        self, collection: Collection[dict[str, Any]], indexes: list[_Index]
    ) -> None:
        for name, keys, options in indexes:
            try:
                collection.create_index(keys, name=name, **options)
            except OperationFailure as exc:
                if exc.code not in _INDEX_CONFLICT_CODES:
                    raise
                if "expireAfterSeconds" in options:
                    # MeshCentral (or an earlier configuration) set another retention.
                    collection.database.command(
                        "collMod", collection.name,
                        index={"name": name, "expireAfterSeconds": options["expireAfterSeconds"]},
                    )
                else:
                    self._log.warn("index {name} on {collection} exists with other options; "
                                   "keeping it", name=name, collection=collection.name)

    def _thd_close(self) -> None:
        client, self._client = self._client, None
        self._main = self._event_docs = self._power_docs = None
        if client is not None:
            client.close()

    # -- main collection -------------------------------------------------------------

    def _thd_get(self, doc_id: str) -> Document | None:
        main, _, _ = self._collections()
        raw = main.find_one({"_id": doc_id})
        return None if raw is None else _read_document(raw)

    def _thd_get_many(self, doc_ids: list[str]) -> list[Document]:
        main, _, _ = self._collections()
        found = {raw["_id"]: raw for raw in main.find({"_id": {"$in": doc_ids}})}
        return [_read_document(found[doc_id]) for doc_id in doc_ids if doc_id in found]

    def _thd_set_many(self, docs: list[Document]) -> None:
        main, _, _ = self._collections()
        if docs:
            main.bulk_write(
                [ReplaceOne({"_id": doc["_id"]}, _docs.escape_links(doc), upsert=True)
                 for doc in docs]
            )

    def _thd_remove_many(self, doc_ids: list[str]) -> int:
        main, _, _ = self._collections()
        return main.delete_many({"_id": {"$in": doc_ids}}).deleted_count

    def _thd_remove_by_mesh(self, mesh_id: str) -> int:
        main, _, _ = self._collections()
        return main.delete_many({"meshid": mesh_id}).deleted_count

    def _thd_find(
        self, doc_type: str, domain: str | None, field: str | None, values: list[str] | None
    ) -> list[Document]:
        main, _, _ = self._collections()
        query: dict[str, Any] = {"type": doc_type}
        if domain is not None:
            query["domain"] = domain
        if field is not None:
            query[field] = {"$in": values or []}
        return [_read_document(raw) for raw in main.find(query)]

    def _thd_count(self, doc_type: str, domain: str | None) -> int:
        main, _, _ = self._collections()
        query: dict[str, Any] = {"type": doc_type}
        if domain is not None:
            query["domain"] = domain
        return main.count_documents(query)

    def _thd_increment(self, doc_id: str, field: str, by: int) -> int:
        main, _, _ = self._collections()
        try:
            raw = main.find_one_and_update(
                {"_id": doc_id}, {"$inc": {field: by}}, upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except OperationFailure as exc:
            if exc.code == _TYPE_MISMATCH:
                raise ValueError(f"field {field!r} of {doc_id!r} is not a number") from exc
            raise
        value = None if raw is None else raw.get(field)
        if isinstance(value, bool) or not isinstance(value, int):
            # MongoDB refuses $inc on a non-number (TypeMismatch, above); some
            # wire-compatible servers answer nothing instead.
            raise ValueError(f"field {field!r} of {doc_id!r} is not an integer")
        return int(value)

    # -- events ----------------------------------------------------------------------

    def _thd_store_event(self, event: Document) -> None:
        _, events, _ = self._collections()
        events.insert_one(_docs.escape_event(event))

    def _thd_get_events(
        self,
        ids: list[str] | None,
        domain: str,
        limit: int | None,
        node_id: str | None,
        user_id: str | None,
        action: str | None,
    ) -> list[Document]:
        _, events, _ = self._collections()
        if limit == 0:
            return []
        query: dict[str, Any] = {"domain": domain}
        if ids is not None:
            if user_id is None:
                query["ids"] = {"$in": ids}
            else:
                query["$or"] = [{"ids": {"$in": ids}}, {"userid": user_id}]
        if node_id is not None:
            query["nodeid"] = node_id
        if action is not None:
            query["action"] = action
        cursor = events.find(query).sort([("time", DESCENDING), ("_id", DESCENDING)])
        if limit is not None:
            cursor = cursor.limit(limit)
        return [_read_record(raw) for raw in cursor]

    def _thd_remove_node_events(self, node_id: str, domain: str) -> int:
        _, events, _ = self._collections()
        return events.delete_many({"domain": domain, "nodeid": node_id}).deleted_count

    def _thd_purge_events(self, older_than: datetime, batch: int) -> int:
        _, events, _ = self._collections()
        return events.delete_many({"time": {"$lt": older_than}}).deleted_count

    # -- power timeline --------------------------------------------------------------

    def _thd_store_power_event(self, event: Document) -> None:
        _, _, power = self._collections()
        power.insert_one(dict(event))

    def _thd_get_power_events(self, node_id: str, since: datetime | None) -> list[Document]:
        _, _, power = self._collections()
        query: dict[str, Any] = {"nodeid": {"$in": [node_id, "*"]}}
        if since is not None:
            query["time"] = {"$gte": since}
        cursor = power.find(query).sort([("time", ASCENDING), ("_id", ASCENDING)])
        return [_read_record(raw) for raw in cursor]

    def _thd_remove_node_power_events(self, node_id: str) -> int:
        _, _, power = self._collections()
        return power.delete_many({"nodeid": node_id}).deleted_count

    def _thd_purge_power_events(self, older_than: datetime, batch: int) -> int:
        _, _, power = self._collections()
        return power.delete_many({"time": {"$lt": older_than}}).deleted_count

    # -- maintenance -----------------------------------------------------------------

    def _thd_export(self) -> Export:
        main, events, power = self._collections()
        return {
            MAIN_COLLECTION: [_read_document(raw) for raw in main.find({}).sort("_id", ASCENDING)],
            EVENTS_COLLECTION: [
                _read_record(raw)
                for raw in events.find({}).sort([("time", ASCENDING), ("_id", ASCENDING)])
            ],
            POWER_COLLECTION: [
                _read_record(raw)
                for raw in power.find({}).sort([("time", ASCENDING), ("_id", ASCENDING)])
            ],
        }
