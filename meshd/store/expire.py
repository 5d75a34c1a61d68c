"""Retention: a timer service that deletes old events and power events.

MeshCentral keeps events 20 days and the power timeline 10 days, configurable as
``settings.dbExpire: {"events": <seconds>, "powerevents": <seconds>}`` (its third key,
``statsevents``, is for server statistics, which meshd does not store). MongoDB's TTL
indexes do the same for the MongoDB backend; this service is what expires SQLite rows,
and is harmless next to the TTL indexes.

Start it after the store is open (it purges once at start, then every ``interval``).
A purge that fails is logged and retried at the next tick; it never stops the timer.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from meshd.store.interface import IStore, StoreUnavailable

DEFAULT_EVENTS_RETENTION = timedelta(days=20)
DEFAULT_POWER_RETENTION = timedelta(days=10)
DEFAULT_INTERVAL_SECONDS = 3600.0


def retention_from_db_expire(
    db_expire: Mapping[str, Any] | None,
) -> tuple[timedelta, timedelta]:
    """(events, power events) retention from MeshCentral's ``settings.dbExpire``.

    Keys are matched without regard to case (MeshCentral lowercases its settings);
    values are seconds. Missing keys keep the defaults.
    """
    events, power = DEFAULT_EVENTS_RETENTION, DEFAULT_POWER_RETENTION
    for key, value in (db_expire or {}).items():
        name = str(key).lower()
        if name not in ("events", "powerevents"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"settings.dbExpire.{key} must be a positive number of seconds")
        if name == "events":
            events = timedelta(seconds=value)
        else:
            power = timedelta(seconds=value)
    return events, power


class ExpireService(TimerService):
    """Every ``interval`` seconds, purge what is older than the retention periods."""

    _log = Logger()

    def __init__(
        self,
        store: IStore,
        clock: IReactorTime,
        events_retention: timedelta = DEFAULT_EVENTS_RETENTION,
        power_retention: timedelta = DEFAULT_POWER_RETENTION,
        interval: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        super().__init__(interval, self.purge)  # type: ignore[no-untyped-call,unused-ignore]
        self.clock = clock
        self._store = store
        self._clock = clock
        self.events_retention = events_retention
        self.power_retention = power_retention

    def purge(self) -> Deferred[None]:
        """Purge once; the Deferred fires when done and never fails."""
        return Deferred.fromCoroutine(self._purge())

    async def _purge(self) -> None:
        now = datetime.fromtimestamp(self._clock.seconds(), timezone.utc)
        try:
            events = await self._store.purge_events(now - self.events_retention)
            power = await self._store.purge_power_events(now - self.power_retention)
        except StoreUnavailable as exc:
            self._log.warn("expiry skipped, the store is unavailable: {reason}", reason=exc.reason)
            return
        except Exception:
            self._log.failure("expiry failed")
            return
        if events or power:
            self._log.info("expired {events} events and {power} power events",
                           events=events, power=power)
