"""Tests for meshd.store: one contract suite run against every backend, then each
backend's own concerns (SQLite files, migrations, durability; MongoDB compatibility
and outages)."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pymongo
from bson.objectid import ObjectId
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshd.store import IStore, SchemaError, StoreUnavailable, _base, open_store
from meshd.store.interface import EVENTS_COLLECTION, MAIN_COLLECTION, POWER_COLLECTION
from meshd.store.memory import MemoryStore
from meshd.store.mongo import MongoStore, redact_url
from meshd.store.sqlite import DATABASE_FILENAME, SCHEMA_VERSION, SQLiteStore
from tests import mongoserver

UTC = timezone.utc
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
MESH_A = "mesh//" + "A" * 30 + "$x.y@" + "a" * 29
MESH_B = "mesh//" + "B" * 64
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user(name: str, domain: str = "", **extra: Any) -> dict[str, Any]:
    doc = {"_id": f"user/{domain}/{name.lower()}", "type": "user", "name": name,
           "domain": domain, "creation": 1700000000, "links": {MESH_A: {"rights": 0xFFFFFFFF}}}
    doc.update(extra)
    return doc


def node(suffix: str, meshid: str, domain: str = "", **extra: Any) -> dict[str, Any]:
    doc = {"_id": f"node/{domain}/{suffix}", "type": "node", "meshid": meshid, "mtype": 2,
           "name": f"host-{suffix}", "domain": domain, "icon": 1}
    doc.update(extra)
    return doc


def event(time: datetime, ids: list[str], domain: str = "", **fields: Any) -> dict[str, Any]:
    doc = {"etype": "node", "action": "changenode", "ids": ids, "time": time, "domain": domain,
           "msg": "changed"}
    doc.update(fields)
    return doc


def ordinals(events: list[dict[str, Any]]) -> list[int]:
    return [e["n"] for e in events]


async def must_get(store: Any, doc_id: str) -> dict[str, Any]:
    """The stored document, which must exist."""
    doc = await store.get(doc_id)
    assert doc is not None, f"{doc_id} is missing"
    result: dict[str, Any] = doc
    return result


if TYPE_CHECKING:
    _TestCaseBase = unittest.TestCase
else:
    _TestCaseBase = object


class StoreContractMixin(_TestCaseBase):
    """The behaviour every IStore backend must have; subclasses say how to make one."""

    store: Any

    async def make_store(self) -> Any:
        """Return an opened store; register its cleanup."""
        raise NotImplementedError

    def setUp(self) -> defer.Deferred[None]:  # type: ignore[override]  # trial waits on it
        return defer.Deferred.fromCoroutine(self._open_store())

    async def _open_store(self) -> None:
        self.store = await self.make_store()

    # -- lifecycle ---------------------------------------------------------------------

    def test_provides_interface(self) -> None:
        """The backend provides IStore completely."""
        self.assertTrue(verifyObject(IStore, self.store))

    async def test_health_follows_lifecycle(self) -> None:
        """An open store is healthy; a closed one is not and refuses calls."""
        self.assertTrue(self.store.is_healthy)
        await self.store.close()
        self.assertFalse(self.store.is_healthy)
        with self.assertRaises(StoreUnavailable):
            await self.store.get("user//admin")
        await self.store.close()  # idempotent

    # -- main collection ---------------------------------------------------------------

    async def test_change_marker(self) -> None:
        """The change marker stays while only reads and events happen and moves with
        every document write; a backend that cannot tell gives None."""
        first = await self.store.change_marker()
        if first is None:
            self.assertFalse(self.store.can_mark_changes)
            return
        await self.store.get("user//nobody")
        await self.store.find_by_type("node")
        await self.store.store_event({"ids": ["*"], "domain": "", "action": "x",
                                      "time": datetime(2024, 1, 1, tzinfo=UTC)})
        self.assertEqual(await self.store.change_marker(), first)
        seen = {first}
        for write in (lambda: self.store.set(user("a")),
                      lambda: self.store.set_many([user("b")]),
                      lambda: self.store.increment("counter", "n"),
                      lambda: self.store.set_setting("k", 1),
                      lambda: self.store.remove("user//a"),
                      lambda: self.store.remove_many(["user//b"]),
                      lambda: self.store.remove_by_mesh(MESH_B)):
            await write()
            marker = await self.store.change_marker()
            self.assertNotIn(marker, seen)
            seen.add(marker)

    async def test_get_missing(self) -> None:
        """Getting an unknown id gives None."""
        self.assertIsNone(await self.store.get("user//nobody"))

    async def test_set_get_round_trip(self) -> None:
        """A MeshCentral user record comes back equal, mesh-id link keys intact."""
        doc = user("Admin", siteadmin=0xFFFFFFFF, salt="s", hash="h", quota=None,
                   otpkeys={"keys": [{"p": 1, "k": "abc", "u": True}]}, ratio=0.5,
                   big=2**62, top=2**63 - 1, neg=-(2**63), text="zürich ✓")
        await self.store.set(doc)
        self.assertEqual(await self.store.get("user//admin"), doc)

    async def test_set_replaces_whole_document(self) -> None:
        """set() replaces the stored document; fields not given are gone."""
        await self.store.set(user("bob", email="bob@example.com"))
        await self.store.set({"_id": "user//bob", "type": "user", "domain": "", "name": "bob"})
        self.assertEqual(await self.store.get("user//bob"),
                         {"_id": "user//bob", "type": "user", "domain": "", "name": "bob"})

    async def test_results_are_copies(self) -> None:
        """Changing an argument after set() or a returned dict does not change the store."""
        doc = user("carol")
        await self.store.set(doc)
        doc["links"][MESH_B] = {"rights": 1}
        fetched = await self.store.get("user//carol")
        self.assertNotIn(MESH_B, fetched["links"])
        fetched["name"] = "mallory"
        self.assertEqual((await must_get(self.store, "user//carol"))["name"], "carol")

    async def test_datetimes_are_utc_milliseconds(self) -> None:
        """Datetimes come back UTC-aware at millisecond precision; naive means UTC."""
        aware = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
        naive = datetime(2024, 5, 6, 7, 8, 9, 999999)
        await self.store.set({"_id": "mesh//d", "type": "mesh", "deleted": aware,
                              "list": [naive]})
        doc = await self.store.get("mesh//d")
        self.assertEqual(doc["deleted"], datetime(2024, 5, 6, 5, 8, 9, 123000, tzinfo=UTC))
        self.assertEqual(doc["deleted"].utcoffset(), timedelta(0))
        self.assertEqual(doc["list"], [datetime(2024, 5, 6, 7, 8, 9, 999000, tzinfo=UTC)])

    async def test_tuples_become_lists(self) -> None:
        """Tuples are stored as lists, as JSON and BSON do."""
        await self.store.set({"_id": "x", "t": (1, "a")})
        self.assertEqual((await must_get(self.store, "x"))["t"], [1, "a"])

    async def test_set_rejects_bad_documents(self) -> None:
        """Documents without a str _id or with unstorable values are refused."""
        bad: list[Any] = [
            {"type": "user"},
            {"_id": ""},
            {"_id": 5},
            {"_id": "x", "v": {1: "int key"}},
            {"_id": "x", "v": b"bytes"},
            {"_id": "x", "v": object()},
            {"_id": "x", "v": float("nan")},
            {"_id": "x", "v": 2**64},
            {"_id": "x", "v": "\ud800"},
            ["not", "a", "dict"],
        ]
        for doc in bad:
            with self.assertRaises((TypeError, ValueError)):
                await self.store.set(doc)
        self.assertIsNone(await self.store.get("x"))

    async def test_get_many_keeps_order(self) -> None:
        """get_many returns found documents in the order asked, skipping missing ids."""
        await self.store.set_many([user("a"), user("b"), user("c")])
        found = await self.store.get_many(["user//c", "user//zz", "user//a"])
        self.assertEqual([d["_id"] for d in found], ["user//c", "user//a"])
        self.assertEqual(await self.store.get_many([]), [])

    async def test_get_many_refuses_a_string(self) -> None:
        """A lone string is not taken as a list of one-letter ids."""
        with self.assertRaises(TypeError):
            await self.store.get_many("user//a")

    async def test_remove(self) -> None:
        """remove() says whether it removed something."""
        await self.store.set(user("dave"))
        self.assertTrue(await self.store.remove("user//dave"))
        self.assertFalse(await self.store.remove("user//dave"))
        self.assertIsNone(await self.store.get("user//dave"))

    async def test_remove_many(self) -> None:
        """remove_many() counts what it removed."""
        await self.store.set_many([user("a"), user("b"), user("c")])
        self.assertEqual(await self.store.remove_many(["user//a", "user//b", "user//q"]), 2)
        self.assertEqual([d["_id"] for d in await self.store.find_by_type("user")], ["user//c"])

    async def test_find_by_type_and_domain(self) -> None:
        """find_by_type filters by type, and by domain unless domain is None."""
        await self.store.set_many([user("a"), user("b", domain="other"),
                                   node("n1", MESH_A), {"_id": MESH_A, "type": "mesh",
                                                        "domain": ""}])
        ids = sorted(d["_id"] for d in await self.store.find_by_type("user", ""))
        self.assertEqual(ids, ["user//a"])
        ids = sorted(d["_id"] for d in await self.store.find_by_type("user"))
        self.assertEqual(ids, ["user//a", "user/other/b"])
        self.assertEqual(await self.store.find_by_type("ugrp", ""), [])

    async def test_find_nodes_by_mesh(self) -> None:
        """Devices of the given groups (and domain) are found, nothing else."""
        await self.store.set_many([
            node("n1", MESH_A), node("n2", MESH_B), node("n3", "mesh//other"),
            node("n4", MESH_A, domain="d2"),
            {"_id": "lc" + "node//n1", "meshid": MESH_A, "time": T0},
        ])
        found = await self.store.find_nodes_by_mesh([MESH_A, MESH_B], "")
        self.assertEqual(sorted(d["_id"] for d in found), ["node//n1", "node//n2"])
        found = await self.store.find_nodes_by_mesh([MESH_A])
        self.assertEqual(sorted(d["_id"] for d in found), ["node//n1", "node/d2/n4"])
        self.assertEqual(await self.store.find_nodes_by_mesh([], ""), [])

    async def test_find_by_node(self) -> None:
        """Login tokens are found by their owner's nodeid key."""
        token = {"_id": "logintoken-~t:abc", "type": "logintoken", "domain": "",
                 "nodeid": "logintoken-user//admin", "userid": "user//admin", "name": "ci"}
        other = dict(token, _id="logintoken-~t:def", nodeid="logintoken-user//bob")
        await self.store.set_many([token, other])
        self.assertEqual(await self.store.find_by_node("logintoken", ["logintoken-user//admin"],
                                                       ""), [token])

    async def test_find_users_by_email(self) -> None:
        """Users are found by email within one domain."""
        await self.store.set_many([user("a", email="x@example.com"),
                                   user("b", email="y@example.com"),
                                   user("c", domain="d2", email="x@example.com")])
        found = await self.store.find_users_by_email("x@example.com", "")
        self.assertEqual([d["_id"] for d in found], ["user//a"])

    async def test_count_by_type(self) -> None:
        """count_by_type counts per type and optionally per domain."""
        await self.store.set_many([user("a"), user("b"), user("c", domain="d2"),
                                   node("n", MESH_A)])
        self.assertEqual(await self.store.count_by_type("user"), 3)
        self.assertEqual(await self.store.count_by_type("user", ""), 2)
        self.assertEqual(await self.store.count_by_type("mesh"), 0)

    async def test_remove_by_mesh(self) -> None:
        """remove_by_mesh removes the group's documents but not the group or others."""
        await self.store.set_many([{"_id": MESH_A, "type": "mesh", "domain": ""},
                                   node("n1", MESH_A), node("n2", MESH_A), node("n3", MESH_B)])
        self.assertEqual(await self.store.remove_by_mesh(MESH_A), 2)
        self.assertIsNotNone(await self.store.get(MESH_A))
        self.assertIsNotNone(await self.store.get("node//n3"))

    async def test_increment(self) -> None:
        """increment creates the document and field, then adds; it returns the value."""
        self.assertEqual(await self.store.increment("stats", "logins"), 1)
        self.assertEqual(await self.store.increment("stats", "logins", 5), 6)
        self.assertEqual(await self.store.increment("stats", "logins", -2), 4)
        await self.store.set({"_id": "kept", "name": "x"})
        self.assertEqual(await self.store.increment("kept", "n", 3), 3)
        self.assertEqual(await self.store.get("kept"), {"_id": "kept", "name": "x", "n": 3})

    async def test_increment_is_atomic(self) -> None:
        """Fifty increments issued at once all count."""
        results = await defer.gatherResults(
            [self.store.increment("counter", "n") for _ in range(50)], consumeErrors=True)
        self.assertEqual(sorted(results), list(range(1, 51)))
        self.assertEqual((await must_get(self.store, "counter"))["n"], 50)

    async def test_increment_refuses_non_numbers(self) -> None:
        """Incrementing a text field fails with ValueError and changes nothing."""
        await self.store.set({"_id": "t", "n": "text"})
        with self.assertRaises(ValueError):
            await self.store.increment("t", "n")
        with self.assertRaises(ValueError):
            await self.store.increment("t", "a.b")
        self.assertEqual(await self.store.get("t"), {"_id": "t", "n": "text"})

    async def test_calls_run_in_order(self) -> None:
        """Calls made without waiting take effect in the order they were made."""
        first = self.store.set({"_id": "o", "v": 1})
        second = self.store.set({"_id": "o", "v": 2})
        fetched = self.store.get("o")
        await defer.gatherResults([first, second])
        self.assertEqual((await fetched)["v"], 2)

    async def test_settings(self) -> None:
        """Settings are {_id, value} records; unset ones read as None."""
        self.assertIsNone(await self.store.get_setting("DatabaseIdentifier"))
        await self.store.set_setting("DatabaseIdentifier", "abc123")
        await self.store.set_setting("limits", {"max": [1, 2]})
        self.assertEqual(await self.store.get_setting("DatabaseIdentifier"), "abc123")
        self.assertEqual(await self.store.get_setting("limits"), {"max": [1, 2]})
        self.assertEqual(await self.store.get("DatabaseIdentifier"),
                         {"_id": "DatabaseIdentifier", "value": "abc123"})

    # -- events ------------------------------------------------------------------------

    async def _store_events(self) -> None:
        await self.store.store_event(event(T0, ["*", MESH_A, "node//n1"], n=1, nodeid="node//n1",
                                           userid="user//admin"))
        await self.store.store_event(event(T0 + timedelta(seconds=1), ["*", "server-users"], n=2,
                                           etype="user", action="accountcreate",
                                           userid="user//bob"))
        await self.store.store_event(event(T0 + timedelta(seconds=2), ["*", MESH_B], n=3,
                                           nodeid="node//n2", userid="user//admin"))
        await self.store.store_event(event(T0 + timedelta(seconds=3), ["*", MESH_A], n=4,
                                           domain="d2", nodeid="node//n1"))
        await self.store.store_event(event(T0 + timedelta(seconds=4), ["*", MESH_A, "node//n1"],
                                           n=5, nodeid="node//n1", userid="user//carol"))

    async def test_events_round_trip(self) -> None:
        """A stored event comes back with all its fields, ids and time."""
        stored = event(T0, ["*", MESH_A], nodeid="node//n1", msgArgs=["a", 1],
                       links={MESH_A: {"rights": 1}}, mesh={"links": {"user//x": {}}})
        await self.store.store_event(stored)
        self.assertEqual(await self.store.get_events(["*"], ""), [stored])

    async def test_events_newest_first_with_limit(self) -> None:
        """Events matching any id come newest first, at most limit of them."""
        await self._store_events()
        self.assertEqual(ordinals(await self.store.get_events(["*"], "")), [5, 3, 2, 1])
        self.assertEqual(ordinals(await self.store.get_events([MESH_A, MESH_B], "", limit=2)),
                         [5, 3])
        self.assertEqual(await self.store.get_events(["*"], "", limit=0), [])
        self.assertEqual(await self.store.get_events(["nobody"], ""), [])
        self.assertEqual(await self.store.get_events([], ""), [])

    async def test_events_by_domain(self) -> None:
        """Only events of the asked domain are returned."""
        await self._store_events()
        self.assertEqual(ordinals(await self.store.get_events(["*"], "d2")), [4])

    async def test_events_for_user(self) -> None:
        """user_id adds the events the user caused to those of their ids."""
        await self._store_events()
        found = await self.store.get_events(["server-users"], "", user_id="user//admin")
        self.assertEqual(ordinals(found), [3, 2, 1])

    async def test_events_for_node(self) -> None:
        """node_id limits to the device's events; ids=None skips the target test."""
        await self._store_events()
        self.assertEqual(ordinals(await self.store.get_events(None, "", node_id="node//n1")),
                         [5, 1])
        self.assertEqual(ordinals(await self.store.get_events(None, "", limit=1,
                                                              node_id="node//n1")), [5])
        self.assertEqual(ordinals(await self.store.get_events([MESH_B], "",
                                                              node_id="node//n1")), [])

    async def test_events_by_action(self) -> None:
        """action filters on the event's action."""
        await self._store_events()
        self.assertEqual(ordinals(await self.store.get_events(["*"], "",
                                                              action="accountcreate")), [2])

    async def test_events_same_time_last_stored_first(self) -> None:
        """Events with equal times come back in reverse order of storing."""
        for n in range(1, 6):
            await self.store.store_event(event(T0, ["*"], n=n))
        self.assertEqual(ordinals(await self.store.get_events(["*"], "")), [5, 4, 3, 2, 1])

    async def test_store_event_needs_ids_time_domain(self) -> None:
        """Events without ids, a datetime time or a str domain are refused."""
        for bad in [
            {"time": T0, "domain": ""},
            {"ids": "*", "time": T0, "domain": ""},
            {"ids": ["*"], "time": 1700000000000, "domain": ""},
            {"ids": ["*"], "domain": ""},
            {"ids": ["*"], "time": T0},
        ]:
            with self.assertRaises(TypeError):
                await self.store.store_event(bad)
        self.assertEqual(await self.store.get_events(None, ""), [])

    async def test_events_for_many_ids(self) -> None:
        """Thousands of ids (a user linked to many groups) work, with and without limit."""
        await self._store_events()
        many = [f"mesh//{n}" for n in range(3000)] + [MESH_B, MESH_B]
        self.assertEqual(ordinals(await self.store.get_events(many, "", limit=10)), [3])
        self.assertEqual(ordinals(await self.store.get_events(many, "")), [3])

    async def test_remove_node_events(self) -> None:
        """remove_node_events deletes the device's events in that domain only."""
        await self._store_events()
        self.assertEqual(await self.store.remove_node_events("node//n1", ""), 2)
        self.assertEqual(ordinals(await self.store.get_events(["*"], "")), [3, 2])
        self.assertEqual(ordinals(await self.store.get_events(["*"], "d2")), [4])

    async def test_purge_events(self) -> None:
        """purge_events deletes events strictly older than the given time."""
        await self._store_events()
        self.assertEqual(await self.store.purge_events(T0 + timedelta(seconds=2)), 2)
        self.assertEqual(ordinals(await self.store.get_events(["*"], "")), [5, 3])
        self.assertEqual(ordinals(await self.store.get_events([MESH_A], "")), [5])
        self.assertEqual(await self.store.purge_events(T0), 0)

    async def test_purge_runs_in_batches(self) -> None:
        """A purge larger than one batch removes everything old and counts it all."""
        self.patch(_base, "PURGE_BATCH", 2)
        for n in range(5):
            await self.store.store_event(event(T0 + timedelta(seconds=n), ["*"], n=n))
            await self.store.store_power_event({"time": T0 + timedelta(seconds=n),
                                                "nodeid": "*", "power": n})
        cutoff = T0 + timedelta(seconds=4)
        self.assertEqual(await self.store.purge_events(cutoff), 4)
        self.assertEqual(await self.store.purge_power_events(cutoff), 4)
        self.assertEqual(ordinals(await self.store.get_events(["*"], "")), [4])
        self.assertEqual(len(await self.store.get_power_events("node//x")), 1)

    # -- power timeline ----------------------------------------------------------------

    async def test_power_timeline(self) -> None:
        """A device's power events and the server's come oldest first, from since."""
        await self.store.store_power_event({"time": T0 + timedelta(minutes=2), "nodeid": "node//n1",
                                            "power": 1, "oldPower": 0})
        await self.store.store_power_event({"time": T0, "nodeid": "*", "power": 0, "s": 1})
        await self.store.store_power_event({"time": T0 + timedelta(minutes=1), "nodeid": "node//n2",
                                            "power": 1})
        await self.store.store_power_event({"time": T0 + timedelta(minutes=3), "nodeid": "node//n1",
                                            "power": 0})
        timeline = await self.store.get_power_events("node//n1")
        self.assertEqual([(e["nodeid"], e["power"]) for e in timeline],
                         [("*", 0), ("node//n1", 1), ("node//n1", 0)])
        self.assertEqual(timeline[1], {"time": T0 + timedelta(minutes=2), "nodeid": "node//n1",
                                       "power": 1, "oldPower": 0})
        since = await self.store.get_power_events("node//n1", T0 + timedelta(minutes=2))
        self.assertEqual([e["power"] for e in since], [1, 0])

    async def test_power_events_need_time_and_node(self) -> None:
        """Power events without a datetime time or a nodeid are refused."""
        for bad in [{"nodeid": "*", "power": 0}, {"time": T0, "power": 0},
                    {"time": "now", "nodeid": "*"}]:
            with self.assertRaises((TypeError, ValueError)):
                await self.store.store_power_event(bad)

    async def test_purge_and_remove_power_events(self) -> None:
        """Power events are purged by age and removed per device."""
        for minute, nodeid in [(0, "*"), (1, "node//n1"), (2, "node//n2"), (3, "node//n1")]:
            await self.store.store_power_event({"time": T0 + timedelta(minutes=minute),
                                                "nodeid": nodeid, "power": 1})
        self.assertEqual(await self.store.purge_power_events(T0 + timedelta(minutes=2)), 2)
        self.assertEqual(await self.store.remove_node_power_events("node//n1"), 1)
        self.assertEqual(await self.store.get_power_events("node//n1"), [])
        self.assertEqual(len(await self.store.get_power_events("node//n2")), 1)

    # -- maintenance -------------------------------------------------------------------

    async def test_export_all(self) -> None:
        """export_all returns the three collections with everything in them."""
        await self.store.set_many([user("a"), node("n1", MESH_A)])
        await self.store.store_event(event(T0, ["*"], n=1))
        await self.store.store_power_event({"time": T0, "nodeid": "*", "power": 0})
        exported = await self.store.export_all()
        self.assertEqual(sorted(exported), sorted([MAIN_COLLECTION, EVENTS_COLLECTION,
                                                   POWER_COLLECTION]))
        self.assertEqual(sorted(d["_id"] for d in exported[MAIN_COLLECTION]),
                         ["node//n1", "user//a"])
        self.assertEqual(exported[EVENTS_COLLECTION], [event(T0, ["*"], n=1)])
        self.assertEqual(exported[POWER_COLLECTION], [{"time": T0, "nodeid": "*", "power": 0}])


# -- memory ------------------------------------------------------------------------------


class MemoryStoreTests(StoreContractMixin, unittest.TestCase):
    """The in-memory fake keeps the contract."""

    async def make_store(self) -> Any:
        store = MemoryStore()
        await store.open()
        return store

    async def test_simulated_outage(self) -> None:
        """With unavailable set, calls fail with StoreUnavailable until it is cleared."""
        self.store.unavailable = True
        with self.assertRaises(StoreUnavailable):
            await self.store.set(user("a"))
        self.assertFalse(self.store.is_healthy)
        self.store.unavailable = False
        await self.store.set(user("a"))
        self.assertTrue(self.store.is_healthy)


# -- SQLite ------------------------------------------------------------------------------


class SQLiteStoreTests(StoreContractMixin, unittest.TestCase):
    """The SQLite backend keeps the contract."""

    async def make_store(self) -> Any:
        store = SQLiteStore(self.mktemp(), reactor)
        await store.open()
        self.addCleanup(store.close)
        return store


def _query(store: SQLiteStore, sql: str) -> Any:
    """Run one statement on the store's own connection and thread."""
    return store._run(lambda: store._db.execute(sql).fetchall())


V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES (1);
CREATE TABLE documents (id TEXT PRIMARY KEY NOT NULL, doc TEXT NOT NULL);
CREATE TABLE events (seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX events_time ON events (time);
CREATE TABLE power (seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, nodeid TEXT NOT NULL,
                    doc TEXT NOT NULL);
CREATE INDEX power_nodeid_time ON power (nodeid, time);
CREATE INDEX power_time ON power (time);
"""

DURABILITY_SCRIPT = """
import sys
from datetime import datetime, timezone
from twisted.internet import defer, task
from meshd.store.sqlite import SQLiteStore

async def main(reactor):
    store = SQLiteStore(sys.argv[1], reactor)
    await store.open()
    await store.set({"_id": "user//durable", "type": "user", "domain": "", "name": "durable"})
    await store.store_event({"ids": ["*"], "time": datetime(2025, 1, 1, tzinfo=timezone.utc),
                             "domain": "", "action": "accountcreate"})
    await store.increment("counter", "n", 7)
    sys.stdout.write("ACK\\n")
    sys.stdout.flush()
    await defer.Deferred()  # until killed

task.react(main)
"""


class SQLiteFileTests(unittest.TestCase):
    """The SQLite file: mode, pragmas, migrations, durability and failures."""

    def setUp(self) -> None:
        self.datapath = self.mktemp()
        self.path = os.path.join(self.datapath, DATABASE_FILENAME)

    async def open_store(self) -> SQLiteStore:
        store = SQLiteStore(self.datapath, reactor)
        await store.open()
        self.addCleanup(store.close)
        return store

    async def test_file_is_private_wal_full_sync(self) -> None:
        """meshd.db is created 0600, in WAL mode with synchronous=FULL."""
        store = await self.open_store()
        await store.set(user("a"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.path + "-wal").st_mode), 0o600)
        self.assertEqual(await _query(store, "PRAGMA journal_mode"), [("wal",)])
        self.assertEqual(await _query(store, "PRAGMA synchronous"), [(2,)])
        self.assertEqual(await _query(store, "SELECT version FROM schema_version"),
                         [(SCHEMA_VERSION,)])

    async def test_group_commit(self) -> None:
        """Writes asked together share commits; one that fails is undone alone and
        fails alone; a read asked after them sees them all."""
        store = await self.open_store()
        await store.set({"_id": "text", "n": "not a number"})
        before = store.group_commits
        writes = [store.set(user(f"u{i}")) for i in range(200)]
        bad = store.increment("text", "n")
        writes += [store.set(user(f"v{i}")) for i in range(200)]
        events = [store.store_event({"ids": ["*"], "domain": "", "action": "x", "n": i,
                                     "time": datetime(2024, 1, 1, tzinfo=UTC)})
                  for i in range(50)]
        found = store.find_by_type("user")
        await defer.gatherResults(writes + events)
        with self.assertRaises(ValueError):
            await bad
        self.assertEqual(len(await found), 400)
        self.assertEqual((await must_get(store, "text"))["n"], "not a number")
        self.assertEqual(len(await store.get_events(["*"], "")), 50)
        commits = store.group_commits - before
        self.assertGreaterEqual(commits, 1)
        self.assertLess(commits, 20, "450 writes asked at once share a few commits")

    async def test_change_marker_sees_other_writers(self) -> None:
        """A commit by another connection (meshd-admin while the server runs) moves the
        change marker, so nothing computed before it is reused."""
        store = await self.open_store()
        await store.set(user("a"))
        before = await store.change_marker()
        other = sqlite3.connect(self.path)
        try:
            other.execute("UPDATE documents SET doc = json_set(doc, '$.name', 'b') "
                          "WHERE id = 'user//a'")
            other.commit()
        finally:
            other.close()
        self.assertNotEqual(await store.change_marker(), before)
        self.assertEqual((await must_get(store, "user//a"))["name"], "b")

    async def test_wide_file_mode_is_tightened(self) -> None:
        """An existing database readable by others is set to 0600 on open."""
        os.makedirs(self.datapath)
        store = await self.open_store()
        await store.close()
        os.chmod(self.path, 0o644)
        await self.open_store()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    async def test_data_survives_reopen(self) -> None:
        """Documents, events and power events are still there after close and open."""
        store = await self.open_store()
        await store.set(user("a"))
        await store.store_event(event(T0, ["*"], n=1))
        await store.store_power_event({"time": T0, "nodeid": "*", "power": 0})
        await store.close()
        store = await self.open_store()
        self.assertEqual(await store.get("user//a"), user("a"))
        self.assertEqual(ordinals(await store.get_events(["*"], "")), [1])
        self.assertEqual(len(await store.get_power_events("node//x")), 1)

    async def test_open_store_factory_defaults_to_sqlite(self) -> None:
        """open_store without a MongoDB URL gives an SQLite store in the data folder."""
        store = open_store(self.datapath, reactor=reactor)
        self.assertIsInstance(store, SQLiteStore)
        await store.open()
        self.addCleanup(store.close)
        self.assertTrue(os.path.exists(self.path))

    def _make_v1_file(self) -> None:
        os.makedirs(self.datapath)
        conn = sqlite3.connect(self.path)
        conn.executescript(V1_SCHEMA)
        conn.execute("INSERT INTO documents VALUES (?, ?)",
                     ("user//old", '{"_id":"user//old","type":"user","domain":"",'
                                   '"name":"old","creation":{"$$date":1700000000000}}'))
        conn.execute("INSERT INTO events (time, doc) VALUES (?, ?)",
                     (1700000000000, '{"ids":["*","user//old"],"time":{"$$date":1700000000000},'
                                     '"domain":"","action":"login","userid":"user//old"}'))
        conn.execute("INSERT INTO power (time, nodeid, doc) VALUES (?, ?, ?)",
                     (1700000000000, "*", '{"time":{"$$date":1700000000000},"nodeid":"*",'
                                          '"power":0,"s":1}'))
        conn.commit()
        conn.close()

    async def test_migrates_version_1_file(self) -> None:
        """A version-1 file is backed up, migrated, and its data stays usable."""
        self._make_v1_file()
        store = await self.open_store()
        when = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
        self.assertEqual(await store.get("user//old"),
                         {"_id": "user//old", "type": "user", "domain": "", "name": "old",
                          "creation": when})
        self.assertEqual(len(await store.find_by_type("user", "")), 1)
        self.assertEqual([e["action"] for e in await store.get_events(["user//old"], "")],
                         ["login"])
        self.assertEqual(len(await store.get_power_events("node//x")), 1)
        self.assertEqual(await _query(store, "SELECT version FROM schema_version"),
                         [(SCHEMA_VERSION,)])
        backup = self.path + ".bak-v1"
        self.assertEqual(stat.S_IMODE(os.stat(backup).st_mode), 0o600)
        conn = sqlite3.connect(backup)
        try:
            self.assertEqual(conn.execute("SELECT version FROM schema_version").fetchall(), [(1,)])
            self.assertEqual(conn.execute("SELECT id FROM documents").fetchall(), [("user//old",)])
        finally:
            conn.close()

    async def test_current_file_is_not_backed_up(self) -> None:
        """Opening a file already at the current version makes no backup."""
        store = await self.open_store()
        await store.close()
        await self.open_store()
        self.assertEqual([name for name in os.listdir(self.datapath) if ".bak-" in name], [])

    async def test_newer_schema_is_refused(self) -> None:
        """A file from a newer meshd fails to open with SchemaError and is left alone."""
        os.makedirs(self.datapath)
        conn = sqlite3.connect(self.path)
        conn.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL);"
                           "INSERT INTO schema_version VALUES (99);")
        conn.close()
        store = SQLiteStore(self.datapath, reactor)
        with self.assertRaises(SchemaError):
            await store.open()
        self.assertFalse(store.is_healthy)
        self.assertIsNone(store._pool)
        self.assertEqual([name for name in os.listdir(self.datapath) if ".bak-" in name], [])

    async def test_foreign_database_is_refused(self) -> None:
        """Another program's SQLite file is not taken over."""
        os.makedirs(self.datapath)
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE accounts (id INTEGER)")
        conn.close()
        with self.assertRaises(SchemaError):
            await SQLiteStore(self.datapath, reactor).open()

    async def test_corrupt_file_is_unavailable(self) -> None:
        """A file that is not a database fails to open with StoreUnavailable."""
        os.makedirs(self.datapath)
        with open(self.path, "wb") as garbage:
            garbage.write(b"this is not an SQLite database" * 100)
        store = SQLiteStore(self.datapath, reactor)
        with self.assertRaises(StoreUnavailable) as caught:
            await store.open()
        self.assertIn(self.path, str(caught.exception))
        self.assertIsNone(store._pool)

    async def test_unusable_data_folder_is_unavailable(self) -> None:
        """A data folder that cannot be created fails with StoreUnavailable."""
        with open(self.mktemp(), "w") as blocker:
            blocker_path = blocker.name
        store = SQLiteStore(os.path.join(blocker_path, "data"), reactor)
        with self.assertRaises(StoreUnavailable):
            await store.open()

    async def test_disk_full_is_unavailable_then_recovers(self) -> None:
        """A full database fails writes with StoreUnavailable until there is room again."""
        store = await self.open_store()
        await store.set(user("a"))
        [(pages,)] = await _query(store, "PRAGMA page_count")
        await _query(store, f"PRAGMA max_page_count = {pages}")
        with self.assertRaises(StoreUnavailable) as caught:
            await store.set({"_id": "big", "blob": "x" * 200000})
        self.assertIn("full", caught.exception.reason)
        self.assertFalse(store.is_healthy)
        self.assertEqual(await store.get("user//a"), user("a"))
        self.assertTrue(store.is_healthy)
        await _query(store, "PRAGMA max_page_count = 1073741823")
        await store.set({"_id": "big", "blob": "x" * 200000})
        self.assertEqual(len((await must_get(store, "big"))["blob"]), 200000)

    async def test_read_only_file_is_unavailable(self) -> None:
        """A database file that cannot be written gives StoreUnavailable, not a crash."""
        probe = self.mktemp()
        with open(probe, "w"):
            pass
        os.chmod(probe, 0o400)
        try:
            with open(probe, "w"):
                raise unittest.SkipTest("this user can write read-only files (root?)")
        except PermissionError:
            pass
        store = await self.open_store()
        await store.set(user("a"))
        await store.close()
        os.chmod(self.path, 0o400)
        self.addCleanup(os.chmod, self.path, 0o600)
        store = SQLiteStore(self.datapath, reactor)
        self.addCleanup(store.close)
        try:
            await store.open()
        except StoreUnavailable:
            return
        with self.assertRaises(StoreUnavailable):
            await store.set(user("b"))

    def test_acknowledged_write_survives_kill_9(self) -> None:
        """What a killed process was told was stored is in the file afterwards."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        child = subprocess.Popen([sys.executable, "-c", DURABILITY_SCRIPT, self.datapath],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            assert child.stdout is not None and child.stderr is not None
            ready, _, _ = select.select([child.stdout], [], [], 30)
            line = child.stdout.readline() if ready else b""
            if line != b"ACK\n":
                child.kill()
                _, errors = child.communicate(timeout=10)
                self.fail(f"child did not acknowledge: {line!r} {errors.decode()[-2000:]}")
            os.kill(child.pid, signal.SIGKILL)
            self.assertEqual(child.wait(timeout=10), -signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
            if child.stderr is not None:
                child.stderr.close()
        return defer.ensureDeferred(self._check_durable())  # type: ignore[return-value]

    async def _check_durable(self) -> None:
        store = await self.open_store()
        self.assertEqual((await must_get(store, "user//durable"))["name"], "durable")
        self.assertEqual((await must_get(store, "counter"))["n"], 7)
        self.assertEqual([e["action"] for e in await store.get_events(["*"], "")],
                         ["accountcreate"])


# -- MongoDB -----------------------------------------------------------------------------


class MongoMixin(_TestCaseBase):
    """Connects tests to the test MongoDB server, or skips (fails on CI) without one."""

    server: mongoserver.NxServer | None
    url: str
    database: str

    def connect(self) -> None:
        try:
            self.url, self.server = mongoserver.mongodb_url()
        except mongoserver.MongoServerUnavailable as exc:
            if mongoserver.required():
                raise AssertionError(f"MongoDB test server unavailable on CI: {exc}") from exc
            raise unittest.SkipTest(f"no MongoDB test server: {exc}") from exc
        self.database = mongoserver.fresh_database_name()
        self.addCleanup(self.drop_database)

    def raw_client(self) -> pymongo.MongoClient[dict[str, Any]]:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=3000, tz_aware=True)
        self.addCleanup(client.close)
        return client

    def drop_database(self) -> None:
        if self.server is not None and self.server.process is None:
            self.server.start()
        client: pymongo.MongoClient[dict[str, Any]]
        with pymongo.MongoClient(self.url, serverSelectionTimeoutMS=3000) as client:
            client.drop_database(self.database)

    async def open_mongo_store(self, **options: Any) -> MongoStore:
        settings: dict[str, Any] = {"server_selection_timeout_ms": 1500,
                                    "events_expire_seconds": None, "power_expire_seconds": None}
        settings.update(options)
        store = MongoStore(self.url, reactor, self.database, **settings)
        await store.open()
        self.addCleanup(store.close)
        return store


class MongoStoreTests(MongoMixin, StoreContractMixin, unittest.TestCase):
    """The MongoDB backend keeps the contract."""

    async def make_store(self) -> Any:
        self.connect()
        return await self.open_mongo_store()


class MongoCompatibilityTests(MongoMixin, unittest.TestCase):
    """Records on MongoDB are laid out as MeshCentral lays them out."""

    def setUp(self) -> None:
        self.connect()

    async def test_link_keys_are_escaped_in_the_database(self) -> None:
        """Mesh ids in links are stored with MeshCentral's %24/%2E escapes."""
        store = await self.open_mongo_store()
        await store.set(user("a"))
        raw = self.raw_client()[self.database][MAIN_COLLECTION].find_one({"_id": "user//a"})
        assert raw is not None
        self.assertEqual(list(raw["links"]), [MESH_A.replace("$", "%24").replace(".", "%2E")])
        self.assertEqual(await store.get("user//a"), user("a"))

    async def test_reads_records_written_by_meshcentral(self) -> None:
        """Escaped keys, BSON dates and ObjectIds written by MeshCentral read back plain."""
        store = await self.open_mongo_store()
        database = self.raw_client()[self.database]
        escaped = MESH_A.replace("$", "%24").replace(".", "%2E")
        database[MAIN_COLLECTION].insert_one(
            {"_id": MESH_A, "type": "mesh", "domain": "", "name": "g", "creation": 1700000000000,
             "links": {"user//admin": {"name": "admin", "rights": 4294967295}}})
        database[MAIN_COLLECTION].insert_one(dict(user("m"), links={escaped: {"rights": 1}}))
        database[EVENTS_COLLECTION].insert_one(
            {"_id": ObjectId(), "etype": "mesh", "action": "createmesh", "ids": ["*", escaped],
             "domain": "", "time": T0, "meshid": MESH_A, "links": {escaped: {"rights": 1}}})
        self.assertEqual((await must_get(store, "user//m"))["links"], {MESH_A: {"rights": 1}})
        [found] = await store.get_events(["*"], "")
        self.assertNotIn("_id", found)
        self.assertEqual(found["time"], T0)
        self.assertEqual(found["links"], {MESH_A: {"rights": 1}})
        self.assertEqual(len(await store.find_by_type("mesh", "")), 1)

    async def test_events_are_stored_with_bson_dates(self) -> None:
        """Event times are BSON dates, as MeshCentral's expiry index needs."""
        store = await self.open_mongo_store()
        await store.store_event(event(T0, ["*"]))
        raw = self.raw_client()[self.database][EVENTS_COLLECTION].find_one({})
        assert raw is not None
        self.assertIsInstance(raw["time"], datetime)
        self.assertEqual(raw["time"], T0)

    async def test_meshcentral_indexes(self) -> None:
        """Open creates MeshCentral's indexes on the three collections."""
        await self.open_mongo_store(events_expire_seconds=1728000, power_expire_seconds=864000)
        database = self.raw_client()[self.database]

        def keys(collection: str) -> set[tuple[str, ...]]:
            # Field names only: nx-27017 reports every index key as ascending.
            info = database[collection].index_information()
            return {tuple(field for field, _ in index["key"]) for index in info.values()}

        self.assertLessEqual({("type", "domain", "meshid"), ("email",), ("meshid",),
                              ("intelamt.uuid",)}, keys(MAIN_COLLECTION))
        self.assertLessEqual({("ids", "time"), ("domain", "nodeid", "time"), ("time",),
                              ("userid", "action")}, keys(EVENTS_COLLECTION))
        self.assertLessEqual({("nodeid", "time"), ("time",)}, keys(POWER_COLLECTION))

class MongoConfigurationTests(unittest.TestCase):
    """Building a MongoDB store needs no server and shows no secret."""

    def test_open_store_factory_with_url(self) -> None:
        """open_store with a MongoDB URL gives an unopened MongoDB store on that database."""
        store = open_store("/nonexistent", "mongodb://127.0.0.1:1/", reactor, mongodb_name="mc")
        self.assertIsInstance(store, MongoStore)
        self.assertIn("database mc", store.location)
        self.assertFalse(store.is_healthy)

    def test_password_is_redacted(self) -> None:
        """The URL shown in logs and errors hides the password."""
        self.assertEqual(redact_url("mongodb://meshd:s3cret@db.example:27017/?tls=true"),
                         "mongodb://meshd:***@db.example:27017/?tls=true")
        store = MongoStore("mongodb://meshd:s3cret@127.0.0.1:1/", reactor)
        self.assertNotIn("s3cret", store.location)


class MongoOutageTests(MongoMixin, unittest.TestCase):
    """A MongoDB server that goes away gives StoreUnavailable, and is used again when
    it comes back."""

    def setUp(self) -> None:
        self.connect()

    async def test_unreachable_server_at_open(self) -> None:
        """Opening against a port with no server fails with StoreUnavailable."""
        port = mongoserver._free_port()
        store = MongoStore(f"mongodb://127.0.0.1:{port}/", reactor, self.database,
                           server_selection_timeout_ms=300)
        with self.assertRaises(StoreUnavailable) as caught:
            await store.open()
        self.assertIn(str(port), str(caught.exception))
        self.assertIsNone(store._pool)

    async def test_server_stops_and_comes_back(self) -> None:
        """Calls fail with StoreUnavailable while the server is down and work after."""
        if self.server is None:
            raise unittest.SkipTest(f"{mongoserver.ENV_URL} is set: not stopping that server")
        store = await self.open_mongo_store()
        await store.set(user("a"))
        self.server.stop()
        with self.assertRaises(StoreUnavailable):
            await store.get("user//a")
        self.assertFalse(store.is_healthy)
        with self.assertRaises(StoreUnavailable):
            await store.set(user("b"))
        self.server.start()
        for _ in range(20):
            try:
                doc = await store.get("user//a")
                break
            except StoreUnavailable:
                await task.deferLater(reactor, 0.25, lambda: None)
        else:
            self.fail("the store did not recover after the server restarted")
        self.assertEqual(doc, user("a"))
        self.assertTrue(store.is_healthy)
        await store.set(user("b"))
        self.assertEqual(len(await store.find_by_type("user", "")), 2)
