"""The default store: one SQLite file, ``meshd.db``, in the data folder.

Durability: WAL journal with ``synchronous=FULL``, so a write whose Deferred fired is
on disk and survives ``kill -9`` or a power cut. One connection on one thread: SQLite
allows a single writer anyway, and a single thread runs calls in the order they were
made. Writes asked while others wait share one transaction (group commit, each in its
own savepoint), so a burst of them costs a few synchronous commits, not one each. The file (and SQLite's ``-wal``/``-shm`` companions, which inherit its mode) is
created 0600.

Layout (schema version 2):

* ``documents(id, doc)``: the main collection, ``doc`` is JSON text
  (:mod:`meshd.store._docs`); virtual generated columns ``type``, ``domain``,
  ``meshid``, ``nodeid``, ``email`` extracted from it are indexed;
* ``events(seq, time, doc)``: ``time`` in ms since the epoch, generated ``domain``,
  ``nodeid``, ``userid``, ``action``; ``event_targets(target, domain, time, seq)`` holds
  each event's ``ids``, so "the latest N events for these ids" reads N index entries per
  id and merges them, however long the history;
* ``power(seq, time, nodeid, doc)``;
* ``schema_version(version)``.

Migrations: :data:`MIGRATIONS` lists the steps; opening an older file first copies it
to ``meshd.db.bak-v<old version>`` with SQLite's online backup API, then runs the
missing steps in one transaction. A file from a newer meshd is refused.
"""

from __future__ import annotations

import heapq
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
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
    SchemaError,
    StoreUnavailable,
)

DATABASE_FILENAME = "meshd.db"
_BUSY_TIMEOUT_MS = 5000


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements inside the caller's transaction
    (``executescript`` would commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    """Documents, events and power events as JSON text."""
    _execute_script(
        conn,
        """
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version (version) VALUES (0);
        CREATE TABLE documents (id TEXT PRIMARY KEY NOT NULL, doc TEXT NOT NULL);
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            time INTEGER NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE INDEX events_time ON events (time);
        CREATE TABLE power (
            seq INTEGER PRIMARY KEY,
            time INTEGER NOT NULL,
            nodeid TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE INDEX power_nodeid_time ON power (nodeid, time);
        CREATE INDEX power_time ON power (time);
        """
    )


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """Indexed lookups: generated columns on documents and events, event targets."""
    for column in ("type", "domain", "meshid", "nodeid", "email"):
        conn.execute(
            f"ALTER TABLE documents ADD COLUMN {column} "
            f"GENERATED ALWAYS AS (json_extract(doc, '$.{column}')) VIRTUAL"
        )
    for column in ("domain", "nodeid", "userid", "action"):
        conn.execute(
            f"ALTER TABLE events ADD COLUMN {column} "
            f"GENERATED ALWAYS AS (json_extract(doc, '$.{column}')) VIRTUAL"
        )
    _execute_script(
        conn,
        """
        CREATE INDEX documents_type_domain_meshid ON documents (type, domain, meshid);
        CREATE INDEX documents_meshid ON documents (meshid) WHERE meshid IS NOT NULL;
        CREATE INDEX documents_type_nodeid ON documents (type, nodeid) WHERE nodeid IS NOT NULL;
        CREATE INDEX documents_email ON documents (domain, email) WHERE email IS NOT NULL;
        CREATE INDEX events_domain_nodeid_time ON events (domain, nodeid, time);
        CREATE INDEX events_domain_userid_time ON events (domain, userid, time);
        CREATE TABLE event_targets (
            target TEXT NOT NULL,
            domain TEXT NOT NULL,
            time INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (target, domain, time, seq)
        ) WITHOUT ROWID;
        CREATE INDEX event_targets_seq ON event_targets (seq);
        INSERT OR IGNORE INTO event_targets (target, domain, time, seq)
            SELECT ids.value, ifnull(json_extract(events.doc, '$.domain'), ''), events.time,
                   events.seq
            FROM events, json_each(events.doc, '$.ids') AS ids
            WHERE ids.type = 'text';
        """
    )


#: ``MIGRATIONS[n]`` takes a version-``n`` database to version ``n + 1``.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_to_1, _migrate_to_2]
SCHEMA_VERSION = len(MIGRATIONS)

# Primary result codes meaning the database cannot be used right now: PERM, BUSY,
# LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_UNAVAILABLE_CODES = frozenset({3, 5, 6, 7, 8, 10, 11, 13, 14, 15, 26})

# Columns the generic find may test (generated, indexed columns of ``documents``).
_FIND_FIELDS = frozenset({"meshid", "nodeid", "email"})


def _create_private_file(path: str) -> None:
    """Create an empty file readable by its owner only, unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


@contextmanager
def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[sqlite3.Connection]:
    conn.execute(begin)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error says more
        raise


def _deliver(outcomes: list[tuple[Deferred[Any], bool, Any]]) -> None:
    """Fire the Deferreds of a flushed group (in the reactor thread)."""
    for done, ok, value in outcomes:
        if ok:
            done.callback(value)
        else:
            done.errback(value)


@implementer(IStore)
class SQLiteStore(ThreadedStore):
    """IStore over one SQLite file (see the module docstring)."""

    backend = "sqlite"

    #: Writes that share a transaction with the writes queued next to them (group
    #: commit); each runs in a savepoint of its own, so one that fails alone is undone
    #: alone.  The purges keep their own batched transactions.
    _GROUPED_WRITES = frozenset({
        "_thd_set_many", "_thd_remove_many", "_thd_remove_by_mesh", "_thd_increment",
        "_thd_store_event", "_thd_store_power_event", "_thd_remove_node_events",
        "_thd_remove_node_power_events"})

    def __init__(self, datapath: str, reactor: Any, filename: str = DATABASE_FILENAME) -> None:
        super().__init__(reactor, threads=1)
        self.path = os.path.abspath(os.path.join(datapath, filename))
        self.location = self.path
        self._conn: sqlite3.Connection | None = None
        # Group commit: writes waiting for the next flush, whether a flush is queued, and
        # (in the store thread) whether one is running.
        self._group: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self._group_lock = threading.Lock()
        self._flush_queued = False
        self._in_group = False
        #: Transactions committed by flushes, and writes they carried (for tests and
        #: figures).
        self.group_commits = 0
        self.grouped_writes = 0

    # -- group commit ----------------------------------------------------------------

    def _execute(self, work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Writes wait for the next flush (queued, in call order, when the first of them
        came): a burst of writes (a thousand devices reconnecting) then costs a few
        synchronous commits instead of one each.  Reads run as they come; a read asked
        after a write runs after the flush that carries it."""
        if getattr(work, "__name__", "") not in self._GROUPED_WRITES or self._pool is None:
            return super()._execute(work, *args)
        done: Deferred[Any] = Deferred()
        with self._group_lock:
            self._group.append((work, args, done))
            start = not self._flush_queued
            self._flush_queued = True
        if start:
            self._pool.callInThread(self._thd_flush)
        return done

    def _thd_flush(self) -> None:
        with self._group_lock:
            group, self._group = self._group, []
            self._flush_queued = False
        self._reactor.callFromThread(_deliver, self._thd_commit_group(group))

    def _thd_commit_group(self, group: list[tuple[Callable[..., Any], tuple[Any, ...],
                                                  Deferred[Any]]]
                          ) -> list[tuple[Deferred[Any], bool, Any]]:
        """Run a group's writes in one transaction; what each Deferred gets."""
        if len(group) == 1:  # a lone write: its own transaction, no savepoint
            (work, args, done), = group
            try:
                return [(done, True, self._guarded(work, *args))]
            except Exception:
                return [(done, False, Failure())]
        try:
            conn = self._db
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            return self._all_failed(group, exc)
        outcomes: list[tuple[Deferred[Any], bool, Any]] = []
        self._in_group = True
        try:
            for work, args, done in group:
                try:
                    outcomes.append((done, True, self._guarded(work, *args)))
                except Exception:
                    outcomes.append((done, False, Failure()))
        finally:
            self._in_group = False
        if not conn.in_transaction:
            # SQLite rolled the whole transaction back itself (a full disk, an I/O
            # error): nothing of the group is stored.
            causes = [f.value for _, ok, f in outcomes
                      if not ok and isinstance(f.value, StoreUnavailable)]
            return self._all_failed(group, causes[0] if causes else StoreUnavailable(
                self.backend, self.path, "the write transaction was rolled back"))
        try:
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the original error says more
            return self._all_failed(group, exc)
        self.group_commits += 1
        self.grouped_writes += len(group)
        return outcomes

    def _all_failed(self, group: list[tuple[Any, Any, Deferred[Any]]], exc: Exception
                    ) -> list[tuple[Deferred[Any], bool, Any]]:
        mapped = self._map_error(exc) or exc
        return [(done, False, Failure(mapped)) for _, _, done in group]

    # -- errors ----------------------------------------------------------------------

    def _map_error(self, exc: Exception) -> Exception | None:
        # SQLite's result code tells a dead database (full disk, I/O error, read-only
        # or locked file, corruption) from a bug (SQL error, constraint), which stays
        # as it is.
        if isinstance(exc, sqlite3.DatabaseError):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is None or code & 0xFF in _UNAVAILABLE_CODES:
                return StoreUnavailable(self.backend, self.path, str(exc))
            return None
        if isinstance(exc, OSError):
            return StoreUnavailable(self.backend, self.path, exc.strerror or str(exc))
        return None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(self.backend, self.path, "the store is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed at the end or rolled back on any error
        (including a failed COMMIT, so the connection is usable for the next call);
        inside a group commit, a savepoint of the group's transaction."""
        if not self._in_group:
            with _transaction(self._db, "BEGIN IMMEDIATE") as conn:
                yield conn
            return
        conn = self._db
        conn.execute("SAVEPOINT one_write")
        try:
            yield conn
        except BaseException:
            try:
                conn.execute("ROLLBACK TO one_write")
                conn.execute("RELEASE one_write")
            except sqlite3.Error:
                pass  # the original error says more; the group's COMMIT will tell
            raise
        conn.execute("RELEASE one_write")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction, for a consistent view across statements."""
        with _transaction(self._db, "BEGIN") as conn:
            yield conn

    # -- lifecycle -------------------------------------------------------------------

    def _thd_open(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        existed = os.path.exists(self.path)
        _create_private_file(self.path)
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        if mode & 0o077:
            os.chmod(self.path, 0o600)
            self._log.warn("{path} was readable by others (mode {mode:o}); set to 0600",
                           path=self.path, mode=mode)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            (journal,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(journal).lower() != "wal":
                raise StoreUnavailable(self.backend, self.path,
                                       f"cannot use WAL journal mode (got {journal})")
            conn.execute("PRAGMA synchronous = FULL")
            self._migrate(conn, existed)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _thd_close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "schema_version" in tables:
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            return int(row[0] or 0)
        if tables:
            raise SchemaError(f"{self.path} is an SQLite database, but not meshd's")
        return 0

    def _migrate(self, conn: sqlite3.Connection, existed: bool) -> None:
        version = self._schema_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} has schema version {version}; this meshd supports up to "
                f"{SCHEMA_VERSION}: upgrade meshd or restore a backup"
            )
        if version == SCHEMA_VERSION:
            return
        if existed and version > 0:
            backup = f"{self.path}.bak-v{version}"
            self._backup(conn, backup)
            self._log.info("backed up {path} (schema version {version}) to {backup}",
                           path=self.path, version=version, backup=backup)
        with _transaction(conn, "BEGIN IMMEDIATE"):
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](conn)
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        self._log.info("migrated {path} from schema version {old} to {new}",
                       path=self.path, old=version, new=SCHEMA_VERSION)

    def _backup(self, conn: sqlite3.Connection, backup_path: str) -> None:
        if os.path.exists(backup_path):
            os.remove(backup_path)
        _create_private_file(backup_path)
        target = sqlite3.connect(backup_path)
        try:
            conn.backup(target)
        finally:
            target.close()

    # -- main collection -------------------------------------------------------------

    def _thd_get(self, doc_id: str) -> Document | None:
        row = self._db.execute("SELECT doc FROM documents WHERE id = ?", (doc_id,)).fetchone()
        return None if row is None else _docs.from_stored_json(row[0])

    def _thd_get_many(self, doc_ids: list[str]) -> list[Document]:
        rows = self._db.execute(
            "SELECT id, doc FROM documents WHERE id IN (SELECT value FROM json_each(?))",
            (_docs.to_json(doc_ids),),
        ).fetchall()
        found = {row[0]: row[1] for row in rows}
        return [_docs.from_stored_json(found[doc_id]) for doc_id in doc_ids if doc_id in found]

    def _thd_set_many(self, docs: list[Document]) -> None:
        rows = [(doc["_id"], _docs.to_json(doc)) for doc in docs]
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO documents (id, doc) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                rows,
            )

    def _thd_remove_many(self, doc_ids: list[str]) -> int:
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM documents WHERE id IN (SELECT value FROM json_each(?))",
                (_docs.to_json(doc_ids),),
            )
            return cursor.rowcount

    def _thd_remove_by_mesh(self, mesh_id: str) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM documents WHERE meshid = ?", (mesh_id,)).rowcount

    def _thd_find(
        self, doc_type: str, domain: str | None, field: str | None, values: list[str] | None
    ) -> list[Document]:
        sql = ["SELECT doc FROM documents WHERE type = ?"]
        params: list[Any] = [doc_type]
        if domain is not None:
            sql.append("AND domain = ?")
            params.append(domain)
        if field is not None:
            if field not in _FIND_FIELDS:
                raise ValueError(f"cannot search documents by {field!r}")
            sql.append(f"AND {field} IN (SELECT value FROM json_each(?))")
            params.append(_docs.to_json(values or []))
        rows = self._db.execute(" ".join(sql), params).fetchall()
        return [_docs.from_stored_json(row[0]) for row in rows]

    def _thd_external_version(self) -> Any:
        # Changes when another connection (meshd-admin, another process) commits.
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def _thd_count(self, doc_type: str, domain: str | None) -> int:
        if domain is None:
            row = self._db.execute("SELECT COUNT(*) FROM documents WHERE type = ?", (doc_type,))
        else:
            row = self._db.execute(
                "SELECT COUNT(*) FROM documents WHERE type = ? AND domain = ?", (doc_type, domain)
            )
        return int(row.fetchone()[0])

    def _thd_increment(self, doc_id: str, field: str, by: int) -> int:
        with self._write() as conn:
            row = conn.execute("SELECT doc FROM documents WHERE id = ?", (doc_id,)).fetchone()
            doc: Document = {"_id": doc_id} if row is None else _docs.from_stored_json(row[0])
            current = doc.get(field, 0)
            if isinstance(current, bool) or not isinstance(current, int):
                raise ValueError(f"field {field!r} of {doc_id!r} is not an integer")
            doc[field] = _docs.normalize(current + by, field)
            conn.execute(
                "INSERT INTO documents (id, doc) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                (doc_id, _docs.to_json(doc)),
            )
            return int(doc[field])

    # -- events ----------------------------------------------------------------------

    def _thd_store_event(self, event: Document) -> None:
        time_ms = _docs.datetime_to_ms(event["time"])
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO events (time, doc) VALUES (?, ?)", (time_ms, _docs.to_json(event))
            )
            conn.executemany(
                "INSERT OR IGNORE INTO event_targets (target, domain, time, seq) "
                "VALUES (?, ?, ?, ?)",
                [(target, event["domain"], time_ms, cursor.lastrowid) for target in event["ids"]],
            )

    def _thd_get_events(
        self,
        ids: list[str] | None,
        domain: str,
        limit: int | None,
        node_id: str | None,
        user_id: str | None,
        action: str | None,
    ) -> list[Document]:
        if limit == 0:
            return []
        if ids is not None and limit is not None and node_id is None and action is None:
            return self._latest_events(ids, domain, limit, user_id)
        params: list[Any] = []
        if ids is None:
            sql = ["SELECT doc FROM events WHERE domain = ?"]
        else:
            candidates = (
                "SELECT seq FROM event_targets WHERE target IN (SELECT value FROM json_each(?))"
            )
            params.append(_docs.to_json(ids))
            if user_id is not None:
                candidates += " UNION SELECT seq FROM events WHERE userid = ?"
                params.append(user_id)
            sql = [f"SELECT doc FROM events WHERE seq IN ({candidates}) AND domain = ?"]
        params.append(domain)
        if node_id is not None:
            sql.append("AND nodeid = ?")
            params.append(node_id)
        if action is not None:
            sql.append("AND action = ?")
            params.append(action)
        sql.append("ORDER BY time DESC, seq DESC")
        if limit is not None:
            sql.append("LIMIT ?")
            params.append(limit)
        rows = self._db.execute(" ".join(sql), params).fetchall()
        return [_docs.from_stored_json(row[0]) for row in rows]

    def _latest_events(
        self, ids: list[str], domain: str, limit: int, user_id: str | None
    ) -> list[Document]:
        """The common query (a user's or a group's recent events): the newest ``limit``
        entries of each target's index range, merged; cost grows with ``limit`` times
        the number of ids, not with the size of the history."""
        with self._read() as conn:
            candidates: set[tuple[int, int]] = set()
            for target in set(ids):
                candidates.update(conn.execute(
                    "SELECT time, seq FROM event_targets WHERE target = ? AND domain = ? "
                    "ORDER BY time DESC, seq DESC LIMIT ?",
                    (target, domain, limit),
                ))
            if user_id is not None:
                candidates.update(conn.execute(
                    "SELECT time, seq FROM events WHERE domain = ? AND userid = ? "
                    "ORDER BY time DESC, seq DESC LIMIT ?",
                    (domain, user_id, limit),
                ))
            newest = heapq.nlargest(limit, candidates)
            rows = conn.execute(
                "SELECT doc FROM events WHERE seq IN (SELECT value FROM json_each(?)) "
                "ORDER BY time DESC, seq DESC",
                (_docs.to_json([seq for _, seq in newest]),),
            ).fetchall()
        return [_docs.from_stored_json(row[0]) for row in rows]

    def _delete_events(self, conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> int:
        seqs = _docs.to_json([row[0] for row in conn.execute(
            f"SELECT seq FROM events WHERE {where}", params)])
        conn.execute(
            "DELETE FROM event_targets WHERE seq IN (SELECT value FROM json_each(?))", (seqs,))
        return conn.execute(
            "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))", (seqs,)).rowcount

    def _thd_remove_node_events(self, node_id: str, domain: str) -> int:
        with self._write() as conn:
            return self._delete_events(conn, "domain = ? AND nodeid = ?", (domain, node_id))

    def _thd_purge_events(self, older_than: datetime, batch: int) -> int:
        with self._write() as conn:
            return self._delete_events(
                conn, "time < ? ORDER BY time LIMIT ?", (_docs.datetime_to_ms(older_than), batch)
            )

    # -- power timeline --------------------------------------------------------------

    def _thd_store_power_event(self, event: Document) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO power (time, nodeid, doc) VALUES (?, ?, ?)",
                (_docs.datetime_to_ms(event["time"]), event["nodeid"], _docs.to_json(event)),
            )

    def _thd_get_power_events(self, node_id: str, since: datetime | None) -> list[Document]:
        start = -(2**63) if since is None else _docs.datetime_to_ms(since)
        rows = self._db.execute(
            "SELECT doc FROM power WHERE nodeid IN (?, '*') AND time >= ? ORDER BY time, seq",
            (node_id, start),
        ).fetchall()
        return [_docs.from_stored_json(row[0]) for row in rows]

    def _thd_remove_node_power_events(self, node_id: str) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM power WHERE nodeid = ?", (node_id,)).rowcount

    def _thd_purge_power_events(self, older_than: datetime, batch: int) -> int:
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM power WHERE seq IN "
                "(SELECT seq FROM power WHERE time < ? ORDER BY time LIMIT ?)",
                (_docs.datetime_to_ms(older_than), batch),
            ).rowcount

    # -- maintenance -----------------------------------------------------------------

    def _thd_export(self) -> Export:
        with self._read() as conn:
            return {
                MAIN_COLLECTION: [
                    _docs.from_stored_json(row[0])
                    for row in conn.execute("SELECT doc FROM documents ORDER BY id")
                ],
                EVENTS_COLLECTION: [
                    _docs.from_stored_json(row[0])
                    for row in conn.execute("SELECT doc FROM events ORDER BY time, seq")
                ],
                POWER_COLLECTION: [
                    _docs.from_stored_json(row[0])
                    for row in conn.execute("SELECT doc FROM power ORDER BY time, seq")
                ],
            }
