"""Bounded waits: a deadline and a short backoff, never a bare sleep loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.02,
    max_interval: float = 0.25,
) -> T | None:
    """Call ``check`` until it returns something truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        result = check()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, max_interval)


async def apoll_until(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    interval: float = 0.02,
    max_interval: float = 0.25,
) -> T | None:
    """The async twin of :func:`poll_until`."""
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        result = await check()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, max_interval)
