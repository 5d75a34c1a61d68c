"""The store contract: one Deferred-returning interface, several backends.

Records are plain dicts in MeshCentral's shapes (spec control-protocol §5, §10), so a
MeshCentral database can be imported and MeshCentral's own ids keep working:

* the **main collection** (MeshCentral's ``meshcentral`` collection) holds every
  document keyed by ``_id``: users (``type: "user"``, ``_id: "user//admin"``), device
  groups (``"mesh"``), devices (``"node"``), user groups (``"ugrp"``), login tokens
  (``"logintoken"``), per-device records (``if…``, ``si…``, ``lc…``) and server keys
  (``LoginCookieEncryptionKey``, ``DatabaseIdentifier`` …);
* the **events** collection holds the audit trail: the dispatched event plus ``ids``
  (its dispatch targets), ``time`` and ``domain``;
* the **power** collection holds the power timeline: ``{time, nodeid, power, …}``, with
  ``nodeid: "*"`` for server start/stop markers.

Values a document may hold: ``None``, ``bool``, ``int`` (64-bit), ``float``, ``str``,
``list``/``tuple``, ``dict`` with ``str`` keys, and ``datetime.datetime``. Datetimes are
stored with millisecond precision (BSON's) and always come back timezone-aware in UTC;
a naive datetime is taken to be UTC. Every call snapshots its input, and every result
is a fresh copy the caller may change.

Errors: a dead database (disk full, unreadable or read-only file, MongoDB down)
fails the Deferred with :class:`StoreUnavailable`; a bad argument (no ``_id``, a value
that cannot be stored) with ``ValueError`` or ``TypeError``; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

#: Names of MeshCentral's collections (MongoDB collection names; sections of an export).
MAIN_COLLECTION = "meshcentral"
EVENTS_COLLECTION = "events"
POWER_COLLECTION = "power"

#: A stored record: JSON-like values plus datetimes.
Document = dict[str, Any]

#: What :meth:`IStore.export_all` returns: collection name -> documents.
Export = dict[str, list[Document]]


class StoreError(Exception):
    """Base class of the store's own errors."""


class StoreUnavailable(StoreError):
    """The database cannot be read or written right now.

    Raised for a full disk, a read-only, missing or corrupt database file, an
    unreachable or failing MongoDB server, and for calls on a closed store. Callers
    answer the client with a generic error and keep serving; the store recovers by
    itself when the cause goes away (the next call tries again).
    """

    def __init__(self, backend: str, location: str, reason: str) -> None:
        self.backend = backend
        self.location = location
        self.reason = reason
        super().__init__(f"{backend} database {location} is unavailable: {reason}")


class SchemaError(StoreError):
    """The database was written by a newer meshd, or is not a meshd database."""


class IStore(Interface):
    """A Deferred-based document store with MeshCentral's collections.

    Every method returns a Deferred and never blocks the reactor. With the bundled
    backends, calls run one at a time in the order they were made.
    """

    backend: str = Attribute("Short backend name for logs: 'sqlite', 'mongodb', 'memory'.")
    location: str = Attribute("Where the data lives (file path or redacted URL), for logs.")
    is_healthy: bool = Attribute(
        "False before open(), after close() and after a call failed with "
        "StoreUnavailable; True again after the next successful call."
    )

    # -- lifecycle -------------------------------------------------------------------

    def open() -> Deferred[None]:
        """Connect, create or migrate the schema and indexes.

        @return: Deferred[None]; fails with StoreUnavailable or SchemaError.
        """

    def close() -> Deferred[None]:
        """Release the connection and stop worker threads; idempotent.

        @return: Deferred[None].
        """

    # -- main collection -------------------------------------------------------------

    def get(doc_id: str) -> Deferred[Document | None]:
        """@return: Deferred[Document | None], the document with this ``_id``."""

    def get_many(doc_ids: Sequence[str]) -> Deferred[list[Document]]:
        """@return: Deferred[list[Document]] in the order asked, missing ids skipped."""

    def set(doc: Document) -> Deferred[None]:
        """Insert or replace (whole) the document with ``doc["_id"]``.

        @return: Deferred[None].
        """

    def set_many(docs: Sequence[Document]) -> Deferred[None]:
        """Insert or replace many documents (one transaction where the backend can).

        @return: Deferred[None].
        """

    def remove(doc_id: str) -> Deferred[bool]:
        """@return: Deferred[bool], whether a document was removed."""

    def remove_many(doc_ids: Sequence[str]) -> Deferred[int]:
        """@return: Deferred[int], how many documents were removed."""

    def remove_by_mesh(mesh_id: str) -> Deferred[int]:
        """Remove every document whose ``meshid`` is ``mesh_id`` (the group's devices
        and their per-device records), not the group itself.

        @return: Deferred[int], how many documents were removed.
        """

    def find_by_type(doc_type: str, domain: str | None = None) -> Deferred[list[Document]]:
        """All documents of a ``type``, in one domain or (``None``) in all domains.

        @return: Deferred[list[Document]], in no particular order.
        """

    def find_nodes_by_mesh(
        mesh_ids: Sequence[str], domain: str | None = None
    ) -> Deferred[list[Document]]:
        """Devices (``type: "node"``) whose ``meshid`` is one of ``mesh_ids``.

        @return: Deferred[list[Document]], in no particular order.
        """

    def find_by_node(
        doc_type: str, node_ids: Sequence[str], domain: str | None = None
    ) -> Deferred[list[Document]]:
        """Documents of a type whose ``nodeid`` field is one of ``node_ids`` (e.g. the
        login tokens of a user: type ``logintoken``, nodeid ``logintoken-<userid>``).

        @return: Deferred[list[Document]], in no particular order.
        """

    def find_users_by_email(email: str, domain: str) -> Deferred[list[Document]]:
        """@return: Deferred[list[Document]], users of ``domain`` with this ``email``."""

    def count_by_type(doc_type: str, domain: str | None = None) -> Deferred[int]:
        """@return: Deferred[int], how many documents of this type (in ``domain``)."""

    def increment(doc_id: str, field: str, by: int = 1) -> Deferred[int]:
        """Atomically add ``by`` to the integer top-level ``field`` of a document,
        creating the document (``{"_id": doc_id, field: by}``) or field as needed.

        @return: Deferred[int], the new value; ValueError if the field is not a number.
        """

    def get_setting(key: str) -> Deferred[Any]:
        """Server setting stored as MeshCentral does: ``{_id: key, value: …}``.

        @return: Deferred[Any], the ``value`` or ``None`` when unset.
        """

    def set_setting(key: str, value: Any) -> Deferred[None]:
        """Store ``{_id: key, value: value}`` in the main collection.

        @return: Deferred[None].
        """

    def change_marker() -> Deferred[Any]:
        """A value that is equal to an earlier one only if no document changed in
        between, in this process or another; None if the backend cannot tell.

        Callers use it to keep something computed from documents (the device list) as
        long as nothing changed. Events do not count as changes.

        @return: Deferred[Hashable | None].
        """

    # -- events ----------------------------------------------------------------------

    def store_event(event: Document) -> Deferred[None]:
        """Append an event. It needs ``ids`` (list of dispatch targets), ``time``
        (datetime) and ``domain`` (str); everything else is kept as given. Callers
        strip what MeshCentral does not store (``node``) before calling.

        @return: Deferred[None].
        """

    def get_events(
        ids: Sequence[str] | None,
        domain: str,
        limit: int | None = None,
        node_id: str | None = None,
        user_id: str | None = None,
        action: str | None = None,
    ) -> Deferred[list[Document]]:
        """Events of ``domain``, newest first (equal times: last stored first).

        An event matches when one of its ``ids`` is in ``ids`` or, if ``user_id`` is
        given, when its ``userid`` is ``user_id``; ``ids=None`` drops that test (for
        per-device queries whose rights were checked by the caller). ``node_id`` and
        ``action`` further require ``nodeid``/``action`` to be equal.

        @return: Deferred[list[Document]], the stored events without a backend ``_id``.
        """

    def remove_node_events(node_id: str, domain: str) -> Deferred[int]:
        """Delete the events of a removed device.

        @return: Deferred[int], how many were removed.
        """

    def purge_events(older_than: datetime) -> Deferred[int]:
        """Delete events with ``time`` before ``older_than``.

        @return: Deferred[int], how many were removed.
        """

    # -- power timeline --------------------------------------------------------------

    def store_power_event(event: Document) -> Deferred[None]:
        """Append ``{time: datetime, nodeid: str, power: int, …}``.

        @return: Deferred[None].
        """

    def get_power_events(
        node_id: str, since: datetime | None = None
    ) -> Deferred[list[Document]]:
        """The device's power events and the server's (``nodeid: "*"``) at or after
        ``since``, oldest first.

        @return: Deferred[list[Document]], without a backend ``_id``.
        """

    def remove_node_power_events(node_id: str) -> Deferred[int]:
        """@return: Deferred[int], how many power events of the device were removed."""

    def purge_power_events(older_than: datetime) -> Deferred[int]:
        """@return: Deferred[int], how many power events before ``older_than`` were removed."""

    # -- maintenance -----------------------------------------------------------------

    def export_all() -> Deferred[Export]:
        """Everything, for ``dbexport`` and backups, as one consistent snapshot.

        @return: Deferred[Export]: ``{"meshcentral": [...], "events": [...],
            "power": [...]}``; events and power events without a backend ``_id``.
        """
