"""Tests for meshd.store.expire: retention settings and the purge timer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from twisted.internet import task
from twisted.trial import unittest

from meshd.store.expire import (
    DEFAULT_EVENTS_RETENTION,
    DEFAULT_POWER_RETENTION,
    ExpireService,
    retention_from_db_expire,
)
from meshd.store.memory import MemoryStore

UTC = timezone.utc
NOW = datetime(2025, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


class RetentionSettingsTests(unittest.TestCase):
    """settings.dbExpire is read as MeshCentral reads it."""

    def test_defaults(self) -> None:
        """Without settings, events keep 20 days and power events 10 days."""
        self.assertEqual(retention_from_db_expire(None), (timedelta(days=20), timedelta(days=10)))
        self.assertEqual(retention_from_db_expire({}),
                         (DEFAULT_EVENTS_RETENTION, DEFAULT_POWER_RETENTION))

    def test_seconds_and_any_case(self) -> None:
        """Values are seconds; key case does not matter; statsevents is ignored."""
        self.assertEqual(
            retention_from_db_expire({"events": 3600, "powerEvents": 60.5, "statsevents": 1}),
            (timedelta(hours=1), timedelta(seconds=60.5)),
        )

    def test_bad_values(self) -> None:
        """Non-numbers and non-positive numbers are refused by name."""
        for bad in ({"events": "20d"}, {"powerevents": 0}, {"events": True}, {"events": -5}):
            with self.assertRaises(ValueError):
                retention_from_db_expire(bad)


class ExpireServiceTests(unittest.TestCase):
    """The timer purges old events and power events, and survives failures."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.store.open()
        self.clock = task.Clock()
        self.clock.advance(NOW.timestamp())
        self.service = ExpireService(self.store, self.clock, interval=3600)

    def add(self, age: timedelta, n: int) -> None:
        when = NOW - age
        self.store.store_event({"ids": ["*"], "time": when, "domain": "", "n": n})
        self.store.store_power_event({"time": when, "nodeid": "*", "power": 0, "n": n})

    def remaining(self) -> tuple[list[Any], list[Any]]:
        events = self.successResultOf(self.store.get_events(["*"], ""))
        power = self.successResultOf(self.store.get_power_events("node//x"))
        return sorted(e["n"] for e in events), sorted(e["n"] for e in power)

    def test_purges_at_start_by_retention(self) -> None:
        """Starting purges events past 20 days and power events past 10 days."""
        self.add(25 * DAY, 1)
        self.add(15 * DAY, 2)
        self.add(DAY, 3)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual(self.remaining(), ([2, 3], [3]))

    def test_purges_every_interval(self) -> None:
        """Each tick purges what has aged past retention since the last one."""
        self.add(20 * DAY - timedelta(minutes=30), 1)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual(self.remaining(), ([1], []))
        self.clock.advance(3600)
        self.assertEqual(self.remaining(), ([], []))

    def test_custom_retention(self) -> None:
        """Retention periods given to the service are used."""
        service = ExpireService(self.store, self.clock, events_retention=2 * DAY,
                                power_retention=DAY * 30)
        self.add(3 * DAY, 1)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(self.remaining(), ([], [1]))

    def test_outage_does_not_stop_the_timer(self) -> None:
        """A purge during an outage is logged and the next tick purges."""
        self.add(30 * DAY, 1)
        self.store.unavailable = True
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.store.unavailable = False
        self.assertEqual(self.remaining(), ([1], [1]))
        self.clock.advance(3600)
        self.assertEqual(self.remaining(), ([], []))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_stop_cancels_the_timer(self) -> None:
        """After stopService no call is left scheduled."""
        self.service.startService()
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
