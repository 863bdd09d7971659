"""core.wait: bounded polling with backoff, sync and async alike."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from banger.core import wait
from banger.core.wait import poll_until


def _countdown(n: int, value: str = "ready") -> Callable[[], str | None]:
    calls = iter(range(n, -1, -1))
    return lambda: value if next(calls) == 0 else None


def test_poll_until_returns_the_first_truthy_result() -> None:
    assert poll_until(_countdown(3), timeout=5, interval=0.001) == "ready"


def test_poll_until_gives_up_with_none_at_the_deadline() -> None:
    start = time.monotonic()
    assert poll_until(lambda: 0, timeout=0.2, interval=0.01) is None
    assert 0.2 <= time.monotonic() - start < 2


def test_a_zero_timeout_still_checks_once() -> None:
    calls: list[int] = []
    assert poll_until(lambda: calls.append(1), timeout=0) is None
    assert calls == [1]


def test_pauses_double_up_to_the_cap_and_stop_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    monkeypatch.setattr(wait.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(wait.time, "sleep", sleep)
    assert poll_until(lambda: None, timeout=1.0, interval=0.1, max_interval=0.25) is None
    assert slept == [0.1, 0.2, 0.25, 0.25, 0.2]
