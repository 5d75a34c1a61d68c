"""Reconnect delays, as the real agent schedules them (spec: agent-protocol.md §1).

The first retry waits a random 0.5–2 s; each later delay is a random value between the last
delay and twice it, capped at a random 4–6 minutes. The schedule resets only when a connection
got far enough to send its AgentInfo (command 3), so a server that refuses the agent (wrong
ServerID, wrong TLS hash, handshake errors) is retried ever more slowly, while a server that
dropped an authenticated agent is rejoined quickly.

Pure: the random source is injected; the service in :mod:`agentsrc.client` does the waiting.
"""

from __future__ import annotations

import random
from typing import Callable, Optional

__all__ = ["Backoff", "FIRST_DELAY", "CAP"]

FIRST_DELAY = (0.5, 2.0)
"""Range of the first delay, seconds."""
CAP = (240.0, 360.0)
"""Range of the cap, seconds (4–6 minutes)."""

Uniform = Callable[[float, float], float]


class Backoff:
    """A jittered, growing delay sequence."""

    def __init__(self, uniform: Optional[Uniform] = None) -> None:
        self._uniform: Uniform = uniform if uniform is not None else random.SystemRandom().uniform
        self._last: Optional[float] = None

    @property
    def last(self) -> Optional[float]:
        """The delay last returned (``None`` after a reset)."""
        return self._last

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        if self._last is None:
            delay = self._uniform(*FIRST_DELAY)
        else:
            delay = min(self._uniform(self._last, 2 * self._last), self._uniform(*CAP))
        self._last = delay
        return delay

    def reset(self) -> None:
        """Start again from the first delay (AgentInfo was sent)."""
        self._last = None
