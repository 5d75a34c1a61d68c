"""Tests for meshd.events and meshd.presence (local implementations)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from meshd.events import LocalEventBus, publish_and_store
from meshd.presence import CONN_AGENT, CONN_CIRA, Connection, LocalPresence
from meshd.store.memory import MemoryStore


class EventBusTests(TestCase):
    def test_delivery_by_target(self) -> None:
        """An event reaches subscribers whose ids intersect its targets, once each."""
        bus = LocalEventBus()
        got: dict[str, list[Any]] = {"admin": [], "user": [], "other": []}
        bus.subscribe(["*", "user//admin"], got["admin"].append)
        bus.subscribe(["user//bob", "mesh//m1"], got["user"].append)
        bus.subscribe(["mesh//m2"], got["other"].append)
        bus.publish(["*", "mesh//m1", "user//bob"], {"action": "x"})
        self.assertEqual((len(got["admin"]), len(got["user"]), len(got["other"])), (1, 1, 0))

    def test_cancel_and_update(self) -> None:
        """A cancelled subscription hears nothing; an updated one hears its new ids."""
        bus = LocalEventBus()
        got: list[Any] = []
        sub = bus.subscribe(["a"], got.append)
        sub.update(["b"])
        bus.publish(["a"], {"n": 1})
        bus.publish(["b"], {"n": 2})
        sub.cancel()
        bus.publish(["b"], {"n": 3})
        self.assertEqual(got, [{"n": 2}])

    def test_failing_listener_isolated(self) -> None:
        """A listener that raises does not stop delivery to the others."""
        bus = LocalEventBus()
        got: list[Any] = []

        def broken(event: Any) -> None:
            raise RuntimeError("boom")

        bus.subscribe(["a"], broken)
        bus.subscribe(["a"], got.append)
        bus.publish(["a"], {"n": 1})
        self.assertEqual(got, [{"n": 1}])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_publish_and_store(self) -> None:
        """Logged events are stored with their targets and time; nolog events are not."""
        store = MemoryStore()
        store.open()
        bus = LocalEventBus()
        await publish_and_store(bus, store, ["*", "node//n"], {"action": "a", "nodeid": "node//n",
                                                               "node": {"big": 1}}, lambda: 100.0)
        self.assertIsNone(self.successResultOf(
            publish_and_store(bus, store, ["*"], {"action": "b", "nolog": 1}, lambda: 100.0)))
        [event] = await store.get_events(["*"], "")
        self.assertEqual(event["action"], "a")
        self.assertEqual(event["ids"], ["*", "node//n"])
        self.assertNotIn("node", event)


class PresenceTests(TestCase):
    def test_connections_and_bits(self) -> None:
        """conn is the OR of a node's connection kinds; a newer one replaces the older."""
        changes: list[tuple[str, int]] = []
        presence = LocalPresence(lambda node, conn: changes.append((node, conn)))
        first = Connection("node//a", CONN_AGENT, "s1", 1.0)
        second = Connection("node//a", CONN_AGENT, "s1", 2.0)
        cira = Connection("node//a", CONN_CIRA, "s1", 3.0)
        self.assertIsNone(presence.add(first))
        self.assertIs(presence.add(second), first)
        presence.add(cira)
        self.assertEqual(presence.state("node//a"), CONN_AGENT | CONN_CIRA)
        self.assertFalse(presence.remove(first))  # already replaced: no change
        self.assertTrue(presence.remove(second))
        self.assertTrue(presence.remove(cira))
        self.assertEqual(presence.state("node//a"), 0)
        self.assertEqual(presence.online(), [])
        self.assertEqual(changes[-1], ("node//a", 0))
