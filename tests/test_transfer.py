"""Tests for meshd.store.transfer and ``meshd-admin dbexport``/``dbimport``: round trips
between backends, MeshCentral NeDB files written here in MeshCentral's exact format,
bad lines, import rules, and an imported MeshCentral user logging in over real HTTPS."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from typing import Any

import pymongo
from twisted.internet import reactor
from twisted.trial import unittest

from meshd.store import transfer
from meshd.store.interface import EVENTS_COLLECTION, MAIN_COLLECTION, POWER_COLLECTION
from meshd.store.memory import MemoryStore
from meshd.store.mongo import MongoStore
from meshd.store.sqlite import SQLiteStore
from tests import mongoserver
from tests.server import ROOT, ServerProcess, fresh_datapath, server_env
from tests.test_login import login, request

UTC = timezone.utc
T0 = datetime(2025, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
T0_MS = 1740830400123

# MeshCentral ids: 48 random bytes in base64 with + -> @ and / -> $ (spec §5).
MESH_ID = "mesh//" + "Qk7$zA@9" * 8
MESH_GONE = "mesh//" + "Zz$Yy@Xx" * 8
NODE_ID = "node//" + "nO@dE$1x" * 8
NODE_GONE = "node//" + "GoNe$@2y" * 8
UGRP_ID = "ugrp//" + "gR$p@3zq" * 8


def escaped(key: str) -> str:
    """MeshCentral's escaping of a links key, written out here independently."""
    return (key.replace("%", "%25").replace(".", "%2E").replace("$", "%24")
            .replace(",", "%2C"))


def meshcentral_password(password: str, salt_bytes: bytes) -> tuple[str, str]:
    """Salt and hash as MeshCentral's pass.js makes them (spec §9): the salt is the
    base64 of 128 bytes, and PBKDF2-SHA384 takes the salt *string's* bytes."""
    salt = base64.b64encode(salt_bytes).decode("ascii")
    key = hashlib.pbkdf2_hmac("sha384", password.encode("utf-8"), salt.encode("ascii"),
                              12000, 128)
    return salt, base64.b64encode(key).decode("ascii")


def nedb(doc: dict[str, Any]) -> str:
    """One NeDB line: JSON.stringify's compact form (Dates already {"$$date": ms})."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n"


def date(ms: int) -> dict[str, int]:
    return {"$$date": ms}


ALICE_OLD = "alice old password"
ALICE_NEW = "alice new password"
BOB_PASSWORD = "bob's password"


def meshcentral_db_lines() -> list[str]:
    """A small ``meshcentral.db`` as MeshCentral 1.1.55 leaves it: the index lines NeDB
    appends when the file is new, then records, updates, a deletion."""
    alice_old = meshcentral_password(ALICE_OLD, bytes(range(128)))
    alice_new = meshcentral_password(ALICE_NEW, bytes(range(128, 256)))
    bob = meshcentral_password(BOB_PASSWORD, b"\x07" * 128)
    alice = {"type": "user", "_id": "user//alice", "name": "alice", "domain": "",
             "creation": 1700000000, "login": 1700000000, "access": 1700000000,
             "siteadmin": 4294967295, "passchange": 1700000000,
             "salt": alice_old[0], "hash": alice_old[1]}
    alice_2 = dict(alice, login=1700000500, access=1700000500,
                   links={escaped(MESH_ID): {"rights": 4294967295}})
    alice_3 = dict(alice_2, salt=alice_new[0], hash=alice_new[1], passchange=1700000900,
                   email="alice@example.com", emailVerified=True)
    return [nedb({"$$indexCreated": {"fieldName": "type", "unique": False, "sparse": False}}),
            nedb({"$$indexCreated": {"fieldName": "domain", "unique": False, "sparse": False}}),
            nedb({"$$indexCreated": {"fieldName": "meshid", "unique": False, "sparse": True}}),
            nedb({"$$indexCreated": {"fieldName": "nodeid", "unique": False, "sparse": True}}),
            nedb({"$$indexCreated": {"fieldName": "email", "unique": False, "sparse": True}}),
            nedb({"_id": "SchemaVersion", "value": 2}),
            nedb({"_id": "DatabaseIdentifier", "value": "a1b2" * 12}),
            nedb({"_id": "LoginCookieEncryptionKey", "key": "ab" * 80, "time": 1700000000000}),
            nedb(alice),
            nedb({"type": "user", "_id": "user//bob.smith", "name": "bob.smith", "domain": "",
                  "creation": 1700000100, "login": 0, "access": 1700000100,
                  "passchange": 1700000100, "salt": bob[0], "hash": bob[1],
                  "links": {escaped(MESH_ID): {"rights": 8}, escaped(UGRP_ID): {"rights": 1}}}),
            nedb({"type": "mesh", "_id": MESH_ID, "name": "Office", "mtype": 2, "desc": "",
                  "domain": "", "links": {"user//alice": {"name": "alice", "rights": 4294967295},
                                          escaped("user//bob.smith"): {"name": "bob.smith",
                                                                       "rights": 8}},
                  "creation": 1700000200000, "creatorid": "user//alice",
                  "creatorname": "alice"}),
            nedb(alice_2),
            nedb({"type": "node", "_id": NODE_ID, "meshid": MESH_ID, "mtype": 2, "icon": 1,
                  "name": "pc-1", "host": "10.0.0.5", "domain": "",
                  "agent": {"id": 6, "caps": 15, "ver": 0, "core": "Jan 1 2025"},
                  "rdp": {escaped("user//bob.smith"): {"d": 1}}}),
            nedb({"type": "node", "_id": NODE_GONE, "meshid": MESH_ID, "mtype": 2, "icon": 1,
                  "name": "old-pc", "domain": ""}),
            nedb({"type": "ugrp", "_id": UGRP_ID, "name": "Helpdesk", "desc": "", "domain": "",
                  "links": {escaped("user//bob.smith"): {"userid": "user//bob.smith",
                                                         "name": "bob.smith", "rights": 1},
                            escaped(MESH_ID): {"rights": 8}}}),
            nedb({"_id": "logintoken-~t:AbCdEfGhIjKlMnOp", "type": "logintoken",
                  "nodeid": "logintoken-user//alice", "userid": "user//alice",
                  "name": "script", "tokenUser": "~t:AbCdEfGhIjKlMnOp", "salt": "s", "hash": "h",
                  "domain": "", "created": 1700000300000, "expire": 0}),
            nedb({"$$deleted": True, "_id": NODE_GONE}),
            nedb(alice_3),
            nedb({"_id": "lc" + NODE_ID, "type": "lastconnect", "domain": "",
                  "time": 1700000400000, "addr": "10.0.0.5", "meshid": MESH_ID}),
            nedb({"type": "mesh", "_id": MESH_GONE, "name": "Closed", "mtype": 2, "domain": "",
                  "links": {}, "creation": 1700000000000, "creatorid": "user//alice",
                  "creatorname": "alice", "deleted": date(T0_MS)})]


def write_file(directory: str, name: str, lines: list[str]) -> str:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(lines)
    return path


def read_lines(lines: list[str], name: str = "meshcentral.db",
               **options: Any) -> transfer.ImportData:
    return transfer.read_import(io.BytesIO("".join(lines).encode("utf-8")), name, **options)


def sorted_export(data: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """An export in one canonical order, to compare backends."""
    return {
        MAIN_COLLECTION: sorted(data[MAIN_COLLECTION], key=lambda doc: doc["_id"]),
        EVENTS_COLLECTION: sorted(data[EVENTS_COLLECTION], key=lambda e: (e["time"], e["n"])),
        POWER_COLLECTION: sorted(data[POWER_COLLECTION], key=lambda e: (e["time"], e["nodeid"])),
    }


def admin(datapath: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshd.admin", "--datapath", datapath, *args],
                          cwd=ROOT, env=server_env(), text=True, capture_output=True,
                          input=stdin, timeout=60)


class _StoresMixin(unittest.TestCase):
    def temp_dir(self) -> str:
        directory = tempfile.mkdtemp(prefix="meshd-transfer-")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    async def sqlite_store(self) -> SQLiteStore:
        store = SQLiteStore(self.temp_dir(), reactor)
        await store.open()
        self.addCleanup(store.close)
        return store

    async def memory_store(self) -> MemoryStore:
        store = MemoryStore()
        await store.open()
        return store

    async def mongo_store(self) -> MongoStore:
        try:
            url, _ = mongoserver.mongodb_url()
        except mongoserver.MongoServerUnavailable as exc:
            if mongoserver.required():
                raise AssertionError(f"MongoDB test server unavailable on CI: {exc}") from exc
            raise unittest.SkipTest(f"no MongoDB test server: {exc}") from exc
        database = mongoserver.fresh_database_name()

        def drop() -> None:
            client: pymongo.MongoClient[dict[str, Any]]
            with pymongo.MongoClient(url, serverSelectionTimeoutMS=3000) as client:
                client.drop_database(database)

        self.addCleanup(drop)
        store = MongoStore(url, reactor, database, server_selection_timeout_ms=3000,
                           events_expire_seconds=None, power_expire_seconds=None)
        await store.open()
        self.addCleanup(store.close)
        return store

    async def fill(self, store: Any) -> None:
        """Records with datetimes, escaped-key ids, non-ASCII text and big integers."""
        await store.set_many([
            {"_id": "user//alice", "type": "user", "name": "alice", "domain": "",
             "realname": "Älice Ünicode ✓", "siteadmin": 0xFFFFFFFF, "creation": 1700000000,
             "links": {MESH_ID: {"rights": 0xFFFFFFFF}, "node//x.y,z%": {"rights": 1}}},
            {"_id": MESH_ID, "type": "mesh", "name": "Office", "mtype": 2, "domain": "",
             "links": {"user//alice": {"name": "alice", "rights": 0xFFFFFFFF}},
             "deleted": T0, "nested": {"list": [T0, None, 1.5, True, 2**62]}},
            {"_id": NODE_ID, "type": "node", "meshid": MESH_ID, "name": "pc", "domain": "",
             "ssh": {"user//alice": {"u": "root"}}},
            {"_id": "LoginCookieEncryptionKey", "key": "cd" * 80, "time": 1700000000000},
        ])
        for n in range(3):
            await store.store_event({"etype": "user", "action": "login", "n": n,
                                     "ids": ["user//alice", "*"], "domain": "",
                                     "time": T0 + timedelta(seconds=n), "userid": "user//alice",
                                     "links": {MESH_ID: {"rights": 1}}})
        await store.store_power_event({"time": T0, "nodeid": NODE_ID, "power": 1})
        await store.store_power_event({"time": T0 + timedelta(minutes=1), "nodeid": "*",
                                       "power": 0, "s": 2})


class RoundTripTests(_StoresMixin):
    """dbexport output imported into another backend gives back the same database."""

    async def round_trip(self, source: Any, target: Any) -> None:
        original = await source.export_all()
        buffer = io.BytesIO()
        transfer.write_export(original, buffer, source.backend, T0)
        buffer.seek(0)
        data = transfer.read_import(buffer, "backup.jsonl")
        self.assertEqual((data.source_format, data.bad, data.warnings),
                         (transfer.MESHD_FORMAT, [], []))
        report = await transfer.apply_import(target, data)
        self.assertEqual((report.added, report.events, report.power), (4, 3, 2))
        self.assertEqual(sorted_export(await target.export_all()), sorted_export(original))

    async def test_sqlite_to_memory(self) -> None:
        """An SQLite export imported into the memory store keeps every record and date."""
        source = await self.sqlite_store()
        await self.fill(source)
        await self.round_trip(source, await self.memory_store())

    async def test_sqlite_to_mongodb_and_back(self) -> None:
        """SQLite -> MongoDB -> SQLite through two exports leaves the data unchanged."""
        source = await self.sqlite_store()
        await self.fill(source)
        mongo = await self.mongo_store()
        await self.round_trip(source, mongo)
        await self.round_trip(mongo, await self.sqlite_store())

    async def test_export_format(self) -> None:
        """The export is a header line then one record a line, dates as {"$$date": ms}."""
        source = await self.memory_store()
        await self.fill(source)
        buffer = io.BytesIO()
        transfer.write_export(await source.export_all(), buffer, "memory", T0)
        lines = [json.loads(line) for line in buffer.getvalue().decode("utf-8").splitlines()]
        self.assertEqual(lines[0], {"format": "meshd-export", "version": 1,
                                    "meshd": lines[0]["meshd"], "backend": "memory",
                                    "exported": {"$$date": T0_MS},
                                    "counts": {"meshcentral": 4, "events": 3, "power": 2}})
        self.assertEqual([line["collection"] for line in lines[1:]],
                         ["meshcentral"] * 4 + ["events"] * 3 + ["power"] * 2)
        [mesh] = [line["doc"] for line in lines[1:] if line["doc"].get("_id") == MESH_ID]
        self.assertEqual(mesh["deleted"], {"$$date": T0_MS})
        self.assertIn("Älice Ünicode ✓", buffer.getvalue().decode("utf-8"))

    def test_export_file_atomic_and_private(self) -> None:
        """dbexport replaces the file in one rename, mode 0600, leaving no temporary file."""
        directory = self.temp_dir()
        path = write_file(directory, "backup.jsonl", ["old contents\n"])
        data = {MAIN_COLLECTION: [{"_id": "x", "value": 1}], EVENTS_COLLECTION: [],
                POWER_COLLECTION: []}
        transfer.write_export_file(data, path, "sqlite", T0)
        self.assertEqual(os.listdir(directory), ["backup.jsonl"])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            self.assertEqual(transfer.read_import(f, path).main, {"x": {"_id": "x", "value": 1}})
        with self.assertRaises(transfer.TransferError):
            transfer.write_export_file(data, os.path.join(directory, "no", "such.jsonl"),
                                       "sqlite", T0)


class NeDBTests(_StoresMixin):
    """MeshCentral NeDB files are replayed as NeDB loads them."""

    def test_replay(self) -> None:
        """Updates replace, deletions remove, index lines are skipped, keys are unescaped."""
        data = read_lines(meshcentral_db_lines())
        self.assertEqual(data.source_format, transfer.NEDB_FORMAT)
        self.assertEqual((data.bad, data.lines, data.deleted, data.index_lines), ([], 20, 1, 5))
        self.assertEqual(sorted(data.main), sorted([
            "SchemaVersion", "DatabaseIdentifier", "LoginCookieEncryptionKey", "user//alice",
            "user//bob.smith", MESH_ID, NODE_ID, UGRP_ID, "logintoken-~t:AbCdEfGhIjKlMnOp",
            "lc" + NODE_ID, MESH_GONE]))
        alice = data.main["user//alice"]
        self.assertEqual(alice["salt"], meshcentral_password(ALICE_NEW, bytes(range(128, 256)))[0])
        self.assertEqual((alice["email"], alice["login"]), ("alice@example.com", 1700000500))
        self.assertEqual(alice["links"], {MESH_ID: {"rights": 4294967295}})
        self.assertEqual(set(data.main["user//bob.smith"]["links"]), {MESH_ID, UGRP_ID})
        self.assertEqual(set(data.main[MESH_ID]["links"]), {"user//alice", "user//bob.smith"})
        self.assertEqual(data.main[NODE_ID]["rdp"], {"user//bob.smith": {"d": 1}})
        self.assertEqual(data.main[MESH_GONE]["deleted"], T0)
        self.assertEqual(data.main[UGRP_ID]["links"]["user//bob.smith"]["rights"], 1)

    async def test_import_counts(self) -> None:
        """The import report counts users, groups, devices, tokens and server records."""
        store = await self.memory_store()
        report = await transfer.apply_import(store, read_lines(meshcentral_db_lines()))
        self.assertEqual(report.summary(),
                         "imported 2 users, 2 device groups, 1 device, 1 user group, "
                         "1 login token, 1 other record, 3 server records; 0 events, "
                         "0 power events (11 new, 0 replaced)")
        self.assertIsNone(await store.get(NODE_GONE))
        self.assertEqual(len(await store.find_nodes_by_mesh([MESH_ID])), 1)
        [token] = await store.find_by_node("logintoken", ["logintoken-user//alice"])
        self.assertEqual(token["tokenUser"], "~t:AbCdEfGhIjKlMnOp")

    async def test_bad_lines(self) -> None:
        """Bad lines are reported by line number and skipped; every other line counts."""
        lines = meshcentral_db_lines()
        lines.insert(6, '{"_id":"user//half","type":"us\n')                  # line 7
        lines.insert(8, "[1, 2]\n")                                           # line 9
        lines.insert(9, '{"_id": 42, "type": "user"}\n')                      # line 10
        lines.insert(10, '{"type": "user", "name": "noid"}\n')                # line 11
        lines.insert(11, '{"_id": "big", "n": 99999999999999999999}\n')       # line 12
        lines.insert(12, '{"_id": "not-utf8", "name": "\xff"}\n')             # line 13
        lines.insert(13, "\n")                                                # blank, fine
        raw = "".join(lines).encode("utf-8").replace("\xff".encode("utf-8"), b"\xff")
        data = transfer.read_import(io.BytesIO(raw), "meshcentral.db")
        self.assertEqual([bad.where for bad in data.bad],
                         ["line 7", "line 9", "line 10", "line 11", "line 12", "line 13"])
        self.assertIn("not JSON", data.bad[0].reason)
        self.assertIn("not UTF-8", data.bad[5].reason)
        self.assertEqual(len(data.main), 11)
        store = await self.memory_store()
        await transfer.apply_import(store, data)
        self.assertEqual(len(await store.find_by_type("user")), 2)

    async def test_events_and_power_files(self) -> None:
        """meshcentral-events.db and meshcentral-power.db go to their own collections."""
        events = [nedb({"$$indexCreated": {"fieldName": "ids", "unique": False,
                                           "sparse": False}}),
                  nedb({"etype": "mesh", "action": "createmesh", "meshid": MESH_ID,
                        "links": {escaped("user//bob.smith"): {"rights": 8}},
                        "ids": [MESH_ID, "*"], "domain": "", "time": date(T0_MS),
                        "_id": "k3Fa9VqLx0bPmW2z"}),
                  nedb({"etype": "user", "action": "login", "ids": ["user//alice"],
                        "domain": "", "time": date(T0_MS + 1000), "_id": "Pq8sT1uVw2xYz3Ab"}),
                  nedb({"$$deleted": True, "_id": "Pq8sT1uVw2xYz3Ab"}),
                  # A server-wide event: MeshCentral writes it without a domain.
                  nedb({"etype": "server", "action": "serverstart", "ids": ["*"],
                        "msg": "Server started", "time": date(T0_MS + 2000),
                        "_id": "Zz9sT1uVw2xYz3Ab"})]
        power = [nedb({"time": date(T0_MS), "nodeid": NODE_ID, "power": 1,
                       "_id": "aaaaaaaaaaaaaaaa"})]
        store = await self.memory_store()
        read = read_lines(events, "/x/meshcentral-events.db")
        self.assertEqual(read.bad, [])
        report = await transfer.apply_import(store, read)
        await transfer.apply_import(store, read_lines(power, "meshcentral-power.db"))
        self.assertEqual(report.events, 2)
        [started] = await store.get_events(["*"], "", action="serverstart")
        self.assertEqual(started["domain"], "")
        [stored] = await store.get_events([MESH_ID], "")
        self.assertEqual((stored["time"], stored["links"]),
                         (T0, {"user//bob.smith": {"rights": 8}}))
        self.assertEqual(len(await store.get_power_events(NODE_ID)), 1)

    def test_unreadable_nedb(self) -> None:
        """A file no line of which reads (an encrypted NeDB file) gets a warning."""
        data = read_lines(["ZW5jcnlwdGVk" * 8 + "\n"] * 3)
        self.assertEqual((data.bad_count, data.records), (3, 0))
        self.assertIn("--dbencryptkey", data.warnings[0])

    async def test_meshcentral_dbexport_file(self) -> None:
        """MeshCentral's --dbexport JSON array is recognised and imported."""
        docs = [json.loads(line) for line in meshcentral_db_lines()[5:8]]
        docs.append({"type": "mesh", "_id": MESH_ID, "name": "Office", "domain": "",
                     "links": {escaped("user//bob.smith"): {"rights": 8}}})
        docs.append("not a record")
        data = read_lines([json.dumps(docs)], "meshcentral.db.json")
        self.assertEqual(data.source_format, transfer.MESHCENTRAL_JSON_FORMAT)
        self.assertEqual([str(bad) for bad in data.bad], ["record 5: not a JSON object"])
        self.assertEqual(data.main[MESH_ID]["links"], {"user//bob.smith": {"rights": 8}})
        self.assertEqual(len(data.main), 4)


class ImportRuleTests(_StoresMixin):
    """When an import is refused, merged, or only checked."""

    async def test_refused_without_merge(self) -> None:
        """A store with accounts is not imported into unless merge is asked for."""
        store = await self.memory_store()
        await store.set({"_id": "user//carol", "type": "user", "name": "carol", "domain": ""})
        with self.assertRaises(transfer.StoreNotEmpty) as caught:
            await transfer.apply_import(store, read_lines(meshcentral_db_lines()))
        self.assertIn("1 user; use --merge", str(caught.exception))
        self.assertIsNone(await store.get("user//alice"))

    async def test_merge_keeps_server_records(self) -> None:
        """--merge replaces records with the same _id but keeps this server's keys."""
        store = await self.memory_store()
        await store.set_many([
            {"_id": "user//carol", "type": "user", "name": "carol", "domain": ""},
            {"_id": "user//alice", "type": "user", "name": "alice", "domain": "", "x": 1},
            {"_id": "LoginCookieEncryptionKey", "key": "ours"}])
        report = await transfer.apply_import(store, read_lines(meshcentral_db_lines()),
                                             merge=True)
        self.assertEqual((report.added, report.replaced, report.kept), (9, 1, 1))
        self.assertIn("1 server record kept", report.summary())
        self.assertEqual(await store.get("LoginCookieEncryptionKey"),
                         {"_id": "LoginCookieEncryptionKey", "key": "ours"})
        alice = await store.get("user//alice")
        self.assertEqual(alice["hash"] if alice else None,
                         meshcentral_password(ALICE_NEW, bytes(range(128, 256)))[1])
        self.assertIsNotNone(await store.get("user//carol"))

    async def test_store_fails_during_events(self) -> None:
        """A store failing while events are written: the error says what was imported."""
        store = await self.memory_store()
        source = await self.memory_store()
        await self.fill(source)
        data = transfer.read_import(io.BytesIO(b"".join(
            line.encode() for line in transfer.export_lines(await source.export_all(),
                                                            "memory", T0))))
        original_store_event = store.store_event

        def failing_store_event(event: dict[str, Any]) -> Any:
            store.unavailable = True
            return original_store_event(event)

        store.store_event = failing_store_event  # type: ignore[method-assign]
        with self.assertRaises(transfer.TransferError) as caught:
            await transfer.apply_import(store, data)
        self.assertIn("the main collection was imported, but storing events failed after 0 "
                      "of 3: memory database memory is unavailable", str(caught.exception))
        store.unavailable = False
        self.assertEqual(len(await store.find_by_type("user")), 1)

    async def test_dry_run(self) -> None:
        """A dry run reports what it would import and writes nothing."""
        store = await self.memory_store()
        report = await transfer.apply_import(store, read_lines(meshcentral_db_lines()),
                                             dry_run=True)
        self.assertTrue(report.summary().startswith("would import 2 users"))
        self.assertEqual((await store.export_all())[MAIN_COLLECTION], [])

    def test_unreadable_files(self) -> None:
        """Empty files and exports of a newer format version are refused as a whole."""
        with self.assertRaises(transfer.TransferError):
            read_lines(["\n", "\n"])
        header = {"format": "meshd-export", "version": 2, "counts": {}}
        with self.assertRaises(transfer.TransferError) as caught:
            read_lines([json.dumps(header) + "\n"])
        self.assertIn("newer meshd", str(caught.exception))

    def test_truncated_export(self) -> None:
        """An export with fewer records than its header announces is flagged."""
        header = {"format": "meshd-export", "version": 1, "counts": {"meshcentral": 3}}
        data = read_lines([json.dumps(header) + "\n",
                           json.dumps({"collection": "meshcentral", "doc": {"_id": "a"}}) + "\n",
                           '{"collection": "nosuch", "doc": {}}\n'])
        self.assertEqual([str(bad) for bad in data.bad], ["line 3: unknown collection 'nosuch'"])
        self.assertEqual(data.warnings, ["the header announces 3 records but the file has 2: "
                                         "it may be truncated"])

    def test_progress(self) -> None:
        """Reading reports progress every N lines."""
        messages: list[str] = []
        read_lines(meshcentral_db_lines(), progress=messages.append, progress_every=8)
        self.assertEqual(messages, ["read 8 lines", "read 16 lines"])


class CommandLineTests(unittest.SynchronousTestCase):
    """meshd-admin dbimport/dbexport against real data folders and a real server."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="meshd-transfer-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.nedb = write_file(self.directory, "meshcentral.db", meshcentral_db_lines())

    def start_server(self, datapath: str) -> ServerProcess:
        server = ServerProcess(datapath).start()
        self.addCleanup(server.stop)
        return server

    def test_imported_meshcentral_user_logs_in(self) -> None:
        """A user imported from meshcentral.db logs in over HTTPS with MeshCentral's hash."""
        datapath = fresh_datapath()
        result = admin(datapath, "dbimport", self.nedb)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines(), [
            f"{self.nedb}: MeshCentral NeDB file, 20 lines, 11 records (1 deleted in the file)",
            "imported 2 users, 2 device groups, 1 device, 1 user group, 1 login token, "
            "1 other record, 3 server records; 0 events, 0 power events (11 new, 0 replaced)"])
        server = self.start_server(datapath)
        self.assertEqual(login(server, "alice", ALICE_OLD).status, 401)
        response = login(server, "alice", ALICE_NEW)
        self.assertEqual(response.status, 303)
        page = request(server, "GET", "/", cookie=response.cookie())
        self.assertIn('Logged in as <strong id="user">alice</strong> (site administrator)',
                      page.body)
        self.assertEqual(login(server, "bob.smith", BOB_PASSWORD).status, 303)

    def test_import_into_running_server_then_export(self) -> None:
        """With the server running: refused without --merge, merged, logged in, exported."""
        server = self.start_server(fresh_datapath())
        self.assertEqual(admin(server.datapath, "createaccount", "carol",
                               "--pass", "carol password").returncode, 0)
        refused = admin(server.datapath, "dbimport", self.nedb)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("meshd-admin: the store already holds 1 user; use --merge",
                      refused.stderr)
        merged = admin(server.datapath, "dbimport", self.nedb, "--merge")
        self.assertEqual(merged.returncode, 0, merged.stderr)
        self.assertEqual(login(server, "alice", ALICE_NEW).status, 303)
        self.assertEqual(login(server, "carol", "carol password").status, 303)
        backup = os.path.join(self.directory, "backup.jsonl")
        exported = admin(server.datapath, "dbexport", backup)
        self.assertEqual(exported.returncode, 0, exported.stderr)
        self.assertRegex(exported.stdout, r"^exported \d+ records, \d+ events and 0 power "
                                          r"events to .*backup.jsonl\n$")
        self.assertEqual(stat.S_IMODE(os.stat(backup).st_mode), 0o600)
        with open(backup, "rb") as f:
            data = transfer.read_import(f, backup)
        self.assertEqual(data.main["user//alice"]["email"], "alice@example.com")
        self.assertTrue(any(e.get("action") == "login" for e in data.events))
        # The export goes back into an empty data folder; the users log in there.
        restored = os.path.join(self.directory, "restored")
        os.mkdir(restored)
        result = admin(restored, "dbimport", backup)
        self.assertEqual(result.returncode, 0, result.stderr)
        listing = admin(restored, "listaccounts").stdout
        self.assertEqual(sorted(line.split("\t")[0] for line in listing.splitlines()),
                         ["user//alice", "user//bob.smith", "user//carol"])

    def test_bad_lines_and_progress(self) -> None:
        """The CLI names bad lines on stderr, shows progress, imports the rest, exits 1."""
        lines = meshcentral_db_lines()
        lines.insert(3, "garbage\n")
        path = write_file(self.directory, "meshcentral.db", lines)
        strict = os.path.join(self.directory, "strict")
        os.mkdir(strict)
        result = admin(strict, "dbimport", path, "--strict")
        self.assertEqual(result.returncode, 1)
        self.assertIn("1 bad line; nothing imported (--strict)", result.stderr)
        self.assertEqual(admin(strict, "listaccounts").stdout, "")
        datapath = os.path.join(self.directory, "data")
        os.mkdir(datapath)
        result = admin(datapath, "dbimport", "--progress-every", "10", "-", stdin="".join(lines))
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.splitlines(), [
            "meshd-admin: read 10 lines",
            "meshd-admin: read 20 lines",
            "meshd-admin: standard input line 4: not JSON (Expecting value at column 1)",
            "meshd-admin: writing 11 records of the main collection",
            "meshd-admin: skipped 1 bad line"])
        self.assertEqual(len(admin(datapath, "listaccounts").stdout.splitlines()), 2)
