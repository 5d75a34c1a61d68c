"""Failed-login limits (MeshCentral's ``settings.maxInvalidLogin``), without I/O.

Failures are counted per key (an IP address, a user id) in a sliding window of
``window`` seconds; after ``count`` failures the key is blocked for ``cool_off``
seconds.  The table is bounded: when full, the entries that expire first are dropped,
so a flood of addresses cannot exhaust memory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class FailureLimiter:
    def __init__(self, count: int, window: float, cool_off: float,
                 max_keys: int = 100_000) -> None:
        self.count = count
        self.window = window
        self.cool_off = cool_off
        self.max_keys = max_keys
        self._entries: dict[str, _Entry] = {}

    def blocked_for(self, key: str, now: float) -> float:
        """Seconds ``key`` must still wait (0 when it may try)."""
        if self.count <= 0:
            return 0.0
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        return max(0.0, entry.blocked_until - now)

    def failure(self, key: str, now: float) -> None:
        if self.count <= 0:
            return
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_keys:
                self._prune(now)
            entry = self._entries[key] = _Entry()
        failures = entry.failures
        failures.append(now)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) >= self.count:
            entry.blocked_until = now + self.cool_off
            failures.clear()

    def success(self, key: str) -> None:
        self._entries.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k, e in self._entries.items()
                    if e.blocked_until <= now and (not e.failures
                                                   or e.failures[-1] <= now - self.window)]:
            del self._entries[key]
        if len(self._entries) >= self.max_keys:
            # Still full of live entries: drop the oldest tenth.
            def last_seen(item: tuple[str, _Entry]) -> float:
                entry = item[1]
                return max(entry.blocked_until, entry.failures[-1] if entry.failures else 0.0)
            oldest = sorted(self._entries.items(), key=last_seen)[: max(1, self.max_keys // 10)]
            for key, _entry in oldest:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
