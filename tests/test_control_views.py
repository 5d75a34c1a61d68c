"""Tests for the shallow client views (meshd.control.views), the shared ``nodes`` listing
(meshd.control.actions.devices.Coalescer) and the frame encoder."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from meshd.control import views
from meshd.control.actions.devices import Coalescer
from tests.test_control_session import Base


class ViewTests(SynchronousTestCase):
    def test_safe_node_leaves_record_alone(self) -> None:
        """Secrets become 1 and live fields go, in a copy; the record keeps every value."""
        node = {"_id": "node//a", "name": "n", "intelamt": {"user": "admin", "pass": "p",
                                                             "mpspass": "m"},
                "pmt": "secret", "ssh": {"u": 1}, "rdp": {"u": 2}, "conn": 1, "pwr": 1,
                "links": {"user//bob": {"rights": 1}}}
        before = copy.deepcopy(node)
        view = views.safe_node(node)
        self.assertEqual(node, before)
        self.assertEqual(view["intelamt"], {"user": "admin", "pass": 1, "mpspass": 1})
        self.assertEqual(view["pmt"], 1)
        for gone in ("ssh", "rdp", "conn", "pwr"):
            self.assertNotIn(gone, view)

    def test_safe_mesh_and_user_leave_records_alone(self) -> None:
        mesh = {"_id": "mesh//m", "amt": {"password": "x", "type": 2}, "kvm": {"pass": "y"},
                "deleted": 1}
        user = {"_id": "user//u", "hash": "h", "salt": "s", "otpsecret": "S",
                "otpkeys": {"keys": []}, "otphkeys": [1, 2], "links": {"mesh//m": {}}}
        before = copy.deepcopy((mesh, user))
        self.assertEqual(views.safe_mesh(mesh), {"_id": "mesh//m", "amt": {
            "password": 1, "type": 2}, "kvm": {"pass": 1}})
        self.assertEqual(views.safe_user(user), {"_id": "user//u", "otpsecret": 1,
                                                 "otpkeys": 1, "otphkeys": 2,
                                                 "links": {"mesh//m": {}}})
        self.assertEqual((mesh, user), before)

    def test_dumps_matches_json(self) -> None:
        """The fast encoder writes what the standard one does (times as ISO, sets as
        lists, non-string keys and huge integers handled)."""
        when = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
        values: list[Any] = [{"a": when, "s": {1}, "t": (1, 2), "u": "é\u2028\x01/"}, {1: 2},
                             {"x": 2 ** 70}, {"f": 1.5, "n": None, "b": True}, []]
        for value in values:
            self.assertEqual(views.dumps(value), views._dumps_std(value), value)
        self.assertEqual(views.dumps({"a": when}), '{"a":"2024-01-02T03:04:05.678Z"}')


class CoalescerTests(SynchronousTestCase):
    def test_callers_during_a_run_share_the_next_run(self) -> None:
        """The first caller starts a run; callers arriving during it wait for the next
        run (started when it ends) and share it; idle is signalled at the end."""
        runs: list[Deferred[Any]] = []
        idle: list[Coalescer] = []

        async def work() -> Any:
            d: Deferred[Any] = Deferred()
            runs.append(d)
            return await d

        coalescer = Coalescer(work, idle.append)
        first = coalescer.run()
        second, third = coalescer.run(), coalescer.run()
        self.assertEqual(len(runs), 1)
        runs[0].callback("one")
        self.assertEqual(self.successResultOf(first), "one")
        self.assertNoResult(second)
        self.assertEqual(len(runs), 2)
        runs[1].callback("two")
        self.assertEqual((self.successResultOf(second), self.successResultOf(third)),
                         ("two", "two"))
        self.assertEqual(idle, [coalescer])

    def test_failure_reaches_every_waiter(self) -> None:
        async def work() -> Any:
            raise ValueError("store down")

        coalescer = Coalescer(work, lambda c: None)
        self.failureResultOf(coalescer.run(), ValueError)
        self.failureResultOf(coalescer.run(), ValueError)


class NodesListingTests(Base):
    def test_listing_leaves_store_records_alone(self) -> None:
        """Naming device links and adding live state change views, never the stored
        records (which the memory store keeps as its own dicts)."""
        world = self.world
        mesh_id = world.add_mesh("g", self.admin_id)
        node_id = world.add_node(mesh_id, "pc")
        bob = world.add_user("bob", realname="Bob B")
        world.link(bob, node_id, 8)
        world.connect_agent(node_id)
        stored = copy.deepcopy(world.doc(node_id))
        answer = self.admin.reply("nodes", tag="t")
        self.assertEqual(list(answer), ["action", "responseid", "nodes", "tag"])
        self.assertEqual((answer["responseid"], answer["tag"]), ("r", "t"))
        [view] = answer["nodes"][mesh_id]
        self.assertEqual(view["links"][bob], {"rights": 8, "name": "Bob B"})
        self.assertEqual((view["conn"], view["pwr"]), (1, 1))
        self.assertEqual(world.doc(node_id), stored)
        self.assertEqual(self.world.hub.listings, {})

    def test_listing_sees_a_change_made_before_the_request(self) -> None:
        world = self.world
        mesh_id = world.add_mesh("g", self.admin_id)
        self.assertEqual(self.admin.reply("nodes")["nodes"], {})
        world.add_node(mesh_id, "later")
        names = [n["name"] for n in self.admin.reply("nodes")["nodes"][mesh_id]]
        self.assertEqual(names, ["later"])
