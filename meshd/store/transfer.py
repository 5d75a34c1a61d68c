"""Moving a whole database out and in: ``meshd-admin dbexport`` and ``dbimport``.

**meshd export** (what ``dbexport`` writes): UTF-8 JSON lines. The first line is a
header, every other line one record with the collection it belongs to::

    {"format":"meshd-export","version":1,"meshd":"0.1.0","backend":"sqlite",
     "exported":{"$$date":1741000000000},"counts":{"meshcentral":3,"events":1,"power":0}}
    {"collection":"meshcentral","doc":{"_id":"user//alice","type":"user",...}}
    {"collection":"events","doc":{"ids":["*"],"time":{"$$date":1741000000000},...}}

Datetimes are written as NeDB writes them, ``{"$$date": <ms>}``, and read back as
datetimes (so a stored dict that is exactly ``{"$$date": <number>}`` comes back as a
datetime, as it does from the SQLite backend). Keys of ``links``/``ssh``/``rdp`` are
plain (unescaped), as :class:`~meshd.store.interface.IStore` returns them. The header's
counts let an import notice a truncated file.

**What ``dbimport`` reads**, told apart by the first non-blank line:

* a meshd export (the header above; a newer format version is refused);
* a MeshCentral NeDB file (``meshcentral.db``): one JSON document a line, later lines
  replace earlier ones with the same ``_id``, ``{"$$deleted":true,"_id":…}`` deletes,
  ``{"$$indexCreated":…}``/``{"$$indexRemoved":…}`` lines are skipped, dates are
  ``{"$$date":ms}`` and keys of ``links``/``ssh``/``rdp`` are escaped (``%2E`` ``%24``
  ``%2C`` ``%25``; spec control-protocol §10). Every live record of the main collection
  is imported: users, device groups, devices, user groups, login tokens, per-device
  records and server keys (``LoginCookieEncryptionKey`` keeps MeshCentral's login
  keys working). A file named ``meshcentral-events.db`` or ``meshcentral-power.db``
  goes to the events or power collection instead;
* MeshCentral's own ``--dbexport`` file: one JSON array of main-collection documents
  (its dates are ISO strings and stay strings).

**How an import runs**: the whole file is read and checked first; a bad line (not
JSON, not a record, a value the store cannot hold) is reported with its line number
and skipped, the rest is kept. Then the main collection is written with one
``set_many`` (one transaction with SQLite: all of it or none), then events and power
events in batches (a failure there leaves the main collection imported and says how
many events were stored). A store that already holds users, device groups, devices or
user groups is refused unless ``merge`` is set; merged records replace those with the
same ``_id`` and everything else stays, except that the server's own records (those
without a ``type``: keys, settings) are kept rather than replaced.

Reading and writing files is blocking work for a thread; the store calls are
Deferred-based as everywhere else.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Optional

from twisted.internet import defer

import meshd
from meshd.store import _docs
from meshd.store.interface import (
    EVENTS_COLLECTION,
    MAIN_COLLECTION,
    POWER_COLLECTION,
    Document,
    Export,
    IStore,
    StoreError,
)

FORMAT = "meshd-export"
VERSION = 1
COLLECTIONS = (MAIN_COLLECTION, EVENTS_COLLECTION, POWER_COLLECTION)

#: The formats :func:`read_import` recognises (``ImportData.source_format``).
MESHD_FORMAT = "meshd export"
NEDB_FORMAT = "MeshCentral NeDB file"
MESHCENTRAL_JSON_FORMAT = "MeshCentral --dbexport file"

#: NeDB file names of MeshCentral's other collections.
NEDB_COLLECTION_FILES = {
    "meshcentral-events.db": EVENTS_COLLECTION,
    "meshcentral-power.db": POWER_COLLECTION,
}

#: Bad lines remembered for the report (all are counted).
MAX_BAD_KEPT = 1000
#: Default number of records between two progress messages.
PROGRESS_EVERY = 10000
#: Events stored concurrently (queued on the store's thread) per round.
_EVENT_BATCH = 500
#: Ids asked for at once when looking for records an import replaces.
_LOOKUP_BATCH = 1000
#: Types that make a store "not empty" for an import without ``merge``.
ACCOUNT_TYPES = ("user", "mesh", "node", "ugrp")

_TYPE_NAMES = {
    "user": ("user", "users"),
    "mesh": ("device group", "device groups"),
    "node": ("device", "devices"),
    "ugrp": ("user group", "user groups"),
    "logintoken": ("login token", "login tokens"),
}
_OTHER = "other"
_SERVER = "server"

Progress = Callable[[str], None]


class TransferError(StoreError):
    """An export or import that cannot be done; the message says why."""


class StoreNotEmpty(TransferError):
    """The store holds accounts or devices and ``merge`` was not asked for."""


@dataclass(frozen=True)
class BadLine:
    """A part of the input that was skipped: ``where`` is ``"line 7"`` or ``"record 3"``."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class ImportData:
    """What :func:`read_import` found, ready for :func:`apply_import`."""

    source_format: str
    main: dict[str, Document] = field(default_factory=dict)
    events: list[Document] = field(default_factory=list)
    power: list[Document] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: int = 0
    deleted: int = 0
    index_lines: int = 0
    bad_count: int = 0

    def add_bad(self, where: str, reason: str) -> None:
        """Note a skipped line (the first ``MAX_BAD_KEPT`` are kept for the report)."""
        self.bad_count += 1
        if len(self.bad) < MAX_BAD_KEPT:
            self.bad.append(BadLine(where, reason))

    @property
    def records(self) -> int:
        return len(self.main) + len(self.events) + len(self.power)

    def describe(self) -> str:
        """One line: the format and what was read."""
        text = (f"{self.source_format}, {_plural(self.lines, 'line', 'lines')}, "
                f"{_plural(self.records, 'record', 'records')}")
        if self.deleted:
            text += f" ({self.deleted} deleted in the file)"
        return text


@dataclass
class ImportReport:
    """What :func:`apply_import` wrote (or would write, for a dry run)."""

    by_kind: Counter[str] = field(default_factory=Counter)
    added: int = 0
    replaced: int = 0
    kept: int = 0
    events: int = 0
    power: int = 0
    dry_run: bool = False

    def summary(self) -> str:
        """One line: what was imported, by kind."""
        names = dict(_TYPE_NAMES)
        names[_OTHER] = ("other record", "other records")
        names[_SERVER] = ("server record", "server records")
        parts = [_plural(self.by_kind[kind], one, many)
                 for kind, (one, many) in names.items() if self.by_kind[kind]]
        verb = "would import" if self.dry_run else "imported"
        text = (f"{verb} {', '.join(parts) or '0 records'}; "
                f"{_plural(self.events, 'event', 'events')}, "
                f"{_plural(self.power, 'power event', 'power events')}")
        details = [f"{self.added} new", f"{self.replaced} replaced"]
        if self.kept:
            details.append(f"{self.kept} server {'record' if self.kept == 1 else 'records'} "
                           f"kept")
        return f"{text} ({', '.join(details)})"


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def kind_of(doc: Document) -> str:
    """How a main-collection record is counted in reports."""
    doc_type = doc.get("type")
    if doc_type is None:
        return _SERVER
    if doc_type in _TYPE_NAMES:
        return str(doc_type)
    return _OTHER


# -- export ----------------------------------------------------------------------------


def export_header(data: Export, backend: str, exported: datetime) -> Document:
    """The first line of a meshd export of ``data``."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "meshd": meshd.__version__,
        "backend": backend,
        "exported": _docs.to_utc(exported),
        "counts": export_counts(data),
    }


def export_lines(data: Export, backend: str, exported: datetime) -> Iterator[str]:
    """The lines (each ending in ``\\n``) of a meshd export of ``data``."""
    yield _docs.to_json(export_header(data, backend, exported)) + "\n"
    for name in COLLECTIONS:
        for doc in data.get(name, []):
            yield _docs.to_json({"collection": name, "doc": doc}) + "\n"


def write_export(data: Export, stream: BinaryIO, backend: str, exported: datetime) -> None:
    """Write a meshd export to a binary stream (blocking)."""
    for line in export_lines(data, backend, exported):
        stream.write(line.encode("utf-8"))


def write_export_file(data: Export, path: str, backend: str, exported: datetime) -> None:
    """Write a meshd export to ``path`` atomically, readable by its owner only (it holds
    password hashes): a temporary file in the same folder, synced, then renamed over
    ``path``. Blocking; raises TransferError."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    try:
        fd, temporary = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                                         suffix=".tmp", dir=directory)
    except OSError as e:
        raise TransferError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as stream:
            write_export(data, stream, backend, exported)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as e:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise TransferError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def export_counts(data: Export) -> dict[str, int]:
    """Records per collection."""
    return {name: len(data.get(name, [])) for name in COLLECTIONS}


def describe_export(counts: dict[str, int]) -> str:
    """``"3 records, 1 event and 0 power events"``."""
    return (f"{_plural(counts[MAIN_COLLECTION], 'record', 'records')}, "
            f"{_plural(counts[EVENTS_COLLECTION], 'event', 'events')} and "
            f"{_plural(counts[POWER_COLLECTION], 'power event', 'power events')}")


# -- reading an import -----------------------------------------------------------------


def read_import(stream: BinaryIO, name: str = "", *, progress: Optional[Progress] = None,
                progress_every: int = PROGRESS_EVERY) -> ImportData:
    """Read and check a whole import file (blocking); see the module docstring.

    @param name: the file's name, which picks the collection of an NeDB file.
    @param progress: called with a message every ``progress_every`` lines.
    @raise TransferError: the file cannot be used at all (empty, newer format).
    """
    lines = _Lines(stream, progress, progress_every)
    for number, raw in lines:
        if not raw.strip():
            continue
        if raw.lstrip().startswith(b"["):
            rest = b"".join([raw] + [line for _, line in lines])
            return _read_meshcentral_json(rest)
        try:
            first = _parse(raw)
        except ValueError:
            first = None
        if isinstance(first, dict) and first.get("format") == FORMAT:
            return _read_meshd(first, number, lines)
        collection = NEDB_COLLECTION_FILES.get(os.path.basename(name), MAIN_COLLECTION)
        return _read_nedb(collection, [(number, raw)], lines)
    raise TransferError("the file is empty")


class _Lines:
    """``(line number, bytes)`` pairs of a stream, with progress messages."""

    def __init__(self, stream: BinaryIO, progress: Optional[Progress], every: int) -> None:
        self._stream = stream
        self._progress = progress
        self._every = every
        self.count = 0

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        return self

    def __next__(self) -> tuple[int, bytes]:
        raw = self._stream.readline()
        if not raw:
            raise StopIteration
        self.count += 1
        if self._progress is not None and self._every > 0 and self.count % self._every == 0:
            self._progress(f"read {self.count} lines")
        if self.count == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark
        return self.count, raw


def _parse(raw: bytes) -> Any:
    """The JSON value of one line; ValueError says what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return _docs.from_json(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError("not JSON (nested too deeply)") from None


def _check(collection: str, doc: Any) -> Document:
    """The normalised record for ``collection``; TypeError/ValueError say why not."""
    if collection == MAIN_COLLECTION:
        return _docs.normalize_document(doc)
    if collection == EVENTS_COLLECTION:
        return _docs.normalize_event(doc)
    return _docs.normalize_power_event(doc)


def _problem(error: Exception) -> str:
    return str(error) or type(error).__name__


def _read_meshd(header: Document, header_line: int,
                lines: Iterable[tuple[int, bytes]]) -> ImportData:
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TransferError(f"line {header_line}: the export header has no valid version")
    if version > VERSION:
        raise TransferError(f"the file was written by a newer meshd (export format version "
                            f"{version}); this meshd reads version {VERSION}")
    data = ImportData(MESHD_FORMAT)
    record_lines = 0
    last = header_line
    for number, raw in lines:
        last = number
        if not raw.strip():
            continue
        record_lines += 1
        try:
            record = _parse(raw)
            if not isinstance(record, dict) or "collection" not in record or "doc" not in record:
                raise ValueError('not a record (expected {"collection": …, "doc": …})')
            collection = record["collection"]
            if collection not in COLLECTIONS:
                raise ValueError(f"unknown collection {collection!r}")
            doc = _check(collection, record["doc"])
        except (TypeError, ValueError) as e:
            data.add_bad(f"line {number}", _problem(e))
            continue
        if collection == MAIN_COLLECTION:
            data.main[doc["_id"]] = doc
        elif collection == EVENTS_COLLECTION:
            data.events.append(doc)
        else:
            data.power.append(doc)
    data.lines = last
    counts = header.get("counts")
    if isinstance(counts, dict):
        expected = sum(count for count in counts.values()
                       if isinstance(count, int) and not isinstance(count, bool))
        if record_lines < expected:
            data.warnings.append(f"the header announces {expected} records but the file has "
                                 f"{record_lines}: it may be truncated")
    return data


def _read_nedb(collection: str, head: list[tuple[int, bytes]],
               lines: Iterable[tuple[int, bytes]]) -> ImportData:
    """Replay an NeDB file the way NeDB loads it."""
    data = ImportData(NEDB_FORMAT)
    live: dict[str, Document] = {}
    last = 0
    for number, raw in _chain(head, lines):
        last = number
        if not raw.strip():
            continue
        try:
            doc = _parse(raw)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            data.add_bad(f"line {number}", str(e))
            continue
        if "_id" not in doc:
            if "$$indexCreated" in doc or "$$indexRemoved" in doc:
                data.index_lines += 1
            elif "collection" in doc and "doc" in doc:
                data.add_bad(f"line {number}", "a meshd export record, but the file does not "
                                               "start with a meshd export header")
            else:
                data.add_bad(f"line {number}", "a document without _id")
            continue
        doc_id = doc["_id"]
        if not isinstance(doc_id, str) or not doc_id:
            data.add_bad(f"line {number}", "_id must be a non-empty string")
            continue
        if doc.get("$$deleted") is True:
            if live.pop(doc_id, None) is not None:
                data.deleted += 1
            continue
        try:
            if collection == MAIN_COLLECTION:
                record = _docs.normalize_document(_docs.unescape_links(doc))
            else:
                event = _docs.unescape_event(doc)
                if collection == EVENTS_COLLECTION and "domain" not in event:
                    # MeshCentral's server-wide events (server started, …) have no
                    # domain: they belong to the default one.
                    event["domain"] = ""
                record = _check(collection, event)
        except (TypeError, ValueError) as e:
            data.add_bad(f"line {number}", _problem(e))
            continue
        live[doc_id] = record
    data.lines = last
    if not live and data.bad_count and not data.index_lines:
        data.warnings.append("no line of the file could be read; a MeshCentral database "
                             "encrypted with --dbencryptkey cannot be imported (export it "
                             "with MeshCentral's --dbexport and import that file)")
    if collection == MAIN_COLLECTION:
        data.main = live
    elif collection == EVENTS_COLLECTION:
        data.events = sorted(live.values(), key=lambda event: event["time"])
    else:
        data.power = sorted(live.values(), key=lambda event: event["time"])
    return data


def _chain(head: Sequence[tuple[int, bytes]],
           rest: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    yield from head
    yield from rest


def _read_meshcentral_json(content: bytes) -> ImportData:
    """MeshCentral's ``--dbexport``: ``JSON.stringify`` of the main collection's array."""
    data = ImportData(MESHCENTRAL_JSON_FORMAT)
    data.lines = content.count(b"\n") + (0 if content.endswith(b"\n") else 1)
    try:
        records = _parse(content)
    except ValueError as e:
        raise TransferError(f"a JSON array that cannot be read: {e}") from None
    if not isinstance(records, list):
        raise TransferError("not a MeshCentral export: expected a JSON array")
    for index, doc in enumerate(records, 1):
        try:
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
            record = _docs.normalize_document(_docs.unescape_links(doc))
        except (TypeError, ValueError) as e:
            data.add_bad(f"record {index}", _problem(e))
            continue
        data.main[record["_id"]] = record
    return data


# -- writing an import -----------------------------------------------------------------


async def store_counts(store: IStore) -> dict[str, int]:
    """How many users, device groups, devices and user groups the store holds."""
    return {doc_type: await store.count_by_type(doc_type) for doc_type in ACCOUNT_TYPES}


def describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(_plural(count, *_TYPE_NAMES[doc_type])
                     for doc_type, count in counts.items() if count)


async def apply_import(store: IStore, data: ImportData, *, merge: bool = False,
                       dry_run: bool = False, progress: Optional[Progress] = None,
                       progress_every: int = PROGRESS_EVERY) -> ImportReport:
    """Write what :func:`read_import` found into ``store`` (see the module docstring).

    @raise StoreNotEmpty: the store holds accounts or devices and ``merge`` is false.
    @raise StoreUnavailable: the store failed; the message of a failure after the main
        collection was written says so (as a TransferError).
    """
    existing_counts = await store_counts(store)
    if any(existing_counts.values()) and not merge:
        raise StoreNotEmpty(f"the store already holds {describe_counts(existing_counts)}; "
                            f"use --merge to add the imported records to it")
    existing: set[str] = set()
    ids = list(data.main)
    for start in range(0, len(ids), _LOOKUP_BATCH):
        found = await store.get_many(ids[start:start + _LOOKUP_BATCH])
        existing.update(doc["_id"] for doc in found)
    report = ImportReport(dry_run=dry_run)
    docs: list[Document] = []
    for doc_id, doc in data.main.items():
        kind = kind_of(doc)
        if doc_id in existing:
            if merge and kind == _SERVER:
                report.kept += 1
                continue
            report.replaced += 1
        else:
            report.added += 1
        report.by_kind[kind] += 1
        docs.append(doc)
    report.events = len(data.events)
    report.power = len(data.power)
    if dry_run:
        return report
    if docs:
        if progress is not None and len(docs) >= progress_every > 0:
            progress(f"writing {_plural(len(docs), 'record', 'records')} of the main "
                     f"collection")
        await store.set_many(docs)
    for what, records, write in (("events", data.events, store.store_event),
                                 ("power events", data.power, store.store_power_event)):
        done = 0
        try:
            for start in range(0, len(records), _EVENT_BATCH):
                batch = records[start:start + _EVENT_BATCH]
                await defer.gatherResults([write(record) for record in batch],
                                          consumeErrors=True)
                before, done = done, done + len(batch)
                if progress is not None and progress_every > 0 and (
                        done // progress_every > before // progress_every):
                    progress(f"stored {done} of {len(records)} {what}")
        except defer.FirstError as e:
            raise _partial(what, done, len(records), e.subFailure.getErrorMessage()) from None
        except StoreError as e:
            raise _partial(what, done, len(records), e) from None
    return report


def _partial(what: str, done: int, total: int, error: object) -> TransferError:
    return TransferError(f"the main collection was imported, but storing {what} failed "
                         f"after {done} of {total}: {error}")
