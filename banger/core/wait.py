"""Bounded waits: a deadline and a short backoff, never a bare sleep loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Backoff:
    """Pauses that double from ``interval`` up to ``max_interval``, cut short at the deadline."""

    def __init__(
        self, timeout: float, interval: float = 0.02, max_interval: float = 0.25
    ) -> None:
        self.deadline = time.monotonic() + timeout
        self.delay = interval
        self.max_interval = max_interval

    def next_pause(self) -> float | None:
        """How long to sleep before the next try; None once the deadline has passed."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return None
        pause = min(self.delay, remaining)
        self.delay = min(self.delay * 2, self.max_interval)
        return pause


def poll_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.02,
    max_interval: float = 0.25,
) -> T | None:
    """Call ``check`` until it returns something truthy or ``timeout`` passes."""
    backoff = Backoff(timeout, interval, max_interval)
    while not (result := check()):
        if (pause := backoff.next_pause()) is None:
            return None
        time.sleep(pause)
    return result

