"""The pure parts of stats and auto-stop: CPU %, bars, durations, the idle verdict, which
requests count as use."""

from __future__ import annotations

import pytest

from banger.cli.usage_view import bar
from banger.config import Settings
from banger.core.durations import duration_seconds, format_duration
from banger.core.errors import InvalidInput
from banger.core.idle import idle_verdict
from banger.core.usage import cpu_percent, fraction
from banger.daemon.vm_idle import named_vm, sweep_interval


def test_cpu_percent_is_of_one_cpu_and_refuses_samples_it_cannot_compare() -> None:
    assert cpu_percent(100, 150, 0.5, 100) == 100.0  # 50 ticks of 10 ms in half a second
    assert cpu_percent(0, 400, 2.0, 100) == 200.0  # two CPUs busy
    assert cpu_percent(100, 100, 1.0, 100) == 0.0
    assert cpu_percent(150, 100, 1.0, 100) is None  # a new process behind the same pid
    assert cpu_percent(0, 10, 0.0, 100) is None and cpu_percent(0, 10, 1.0, 0) is None


def test_bars_are_ascii_and_clamped() -> None:
    assert bar(5, 10, width=10) == "[#####-----]  50%"
    assert bar(30, 10, width=4) == "[####] 100%"  # over-committed vCPUs: full, not beyond
    assert bar(1, 0, width=4) == "[----]   0%"  # an unknown whole
    assert fraction(-3, 10) == 0.0


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), (90, 90), (2.5, 2.5), ("90s", 90), ("30m", 1800), ("2h", 7200),
    ("1h30m", 5400), ("1d", 86400), ("1d2h3m4s", 93784), ("0.5", 0.5),
])
def test_durations(text: object, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("hostile", [
    "", "0", "0s", "-5", "+5", "5 m", " 5m", "5M", "1e3", "nan", "inf", "5m30h", "\u0665m",
    "99999d", True, None, [], float("nan"), float("inf"), -1,
])
def test_hostile_durations_are_refused(hostile: object) -> None:
    with pytest.raises(ValueError):
        duration_seconds(hostile)


def test_format_duration_uses_the_largest_units() -> None:
    assert [format_duration(s) for s in (0, 45, 90, 3600, 5400.4, 93784)] == [
        "0s", "45s", "1m30s", "1h", "1h30m", "1d2h3m4s"]


def test_auto_stop_setting_is_off_by_default_and_names_the_key_when_bad() -> None:
    assert Settings().auto_stop_stale_after is None
    assert Settings(auto_stop_stale_after="off").auto_stop_stale_after is None
    assert Settings(auto_stop_stale_after="0").auto_stop_stale_after is None
    assert Settings(auto_stop_stale_after="30m").auto_stop_stale_after == 1800
    with pytest.raises(InvalidInput, match="auto_stop_stale_after.*or off"):
        Settings(auto_stop_stale_after="-30m")


def test_the_idle_verdict() -> None:
    def verdict(idle_for: float, sessions: int | None) -> str | None:
        return idle_verdict(now=1000.0, last_use=1000.0 - idle_for, sessions=sessions, after=60)

    assert verdict(59.9, 0) is None  # not long enough
    assert verdict(3600, 1) is None  # someone is in over SSH
    assert verdict(3600, None) is None  # the guest did not say: never a stop on a guess
    why = verdict(90, 0)
    assert why == ("stopped automatically: no SSH session, banger session or CLI use for "
                   "1m30s (auto_stop_stale_after = 1m)")


@pytest.mark.parametrize(("path", "vm"), [
    ("/v1/vms/box", "box"), ("/v1/vms/box/ssh", "box"), ("/v1/vms/box/workspace", "box"),
    ("/v1/vms/box/stats", None), ("/v1/vms/box/health", None),  # looking is not using
    ("/v1/vms", None), ("/v1/top", None), ("/v1/vms/Box!/ssh", None), ("/v2/vms/box", None),
    ("/v1/images/box", None),
])
def test_which_requests_count_as_use(path: str, vm: str | None) -> None:
    assert named_vm(path) == vm


def test_the_sweep_looks_every_tenth_of_the_setting_within_bounds() -> None:
    assert [sweep_interval(s) for s in (3, 60, 1800, 86400)] == [1.0, 6.0, 60.0, 60.0]
