"""Processes banger starts and watches: its own modules' argv, liveness, usage, signals."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def python_module_argv(module: str, *args: str) -> list[str]:
    """The argv that runs one of banger's own modules in this interpreter (pure).

    ``-I`` (isolated mode) keeps the working directory, ``PYTHONPATH`` and the
    user's site-packages off ``sys.path``: a directory holding its own
    ``banger/`` package (a cloned repo, an unpacked tarball) must never
    shadow ours. Plain ``-m`` would put the working directory first.
    """
    return [sys.executable, "-I", "-m", module, *args]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcUsage:
    """What a process has used so far: CPU time (user + system) and resident memory."""

    cpu_ticks: int
    rss_bytes: int


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from field 3 (state) on, or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after its last ')'.
    return data[data.rindex(")") + 2 :].split()


PF_EXITING = 0x4  # include/linux/sched.h: the task is inside do_exit


def read_stat(pid: int) -> tuple[str, int] | None:
    """Return (state letter, start time in ticks) of ``pid``, or None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (fields[0], int(fields[19]))


def is_exiting(pid: int, started: int) -> bool:
    """True while the process that started at ``started`` is inside its exit: the kernel
    still shows it running (and it still holds its files, its flocks) after it let go
    of its memory, so its cmdline already reads empty (CI once saw a killed VMM in that
    window taken for a stranger)."""
    fields = _stat_fields(pid)
    return fields is not None and int(fields[19]) == started \
        and bool(int(fields[6]) & PF_EXITING) and fields[0] not in ("Z", "X")


def usage(pid: int, started: int) -> ProcUsage | None:
    """CPU ticks and RSS of ``pid`` if it is still the process that started at ``started``."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X") or int(fields[19]) != started:
        return None
    # utime, stime are fields 14 and 15; rss (pages) is field 24.
    return ProcUsage(int(fields[11]) + int(fields[12]), int(fields[21]) * PAGE_SIZE)


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None when it is gone."""
    stat = read_stat(pid)
    return None if stat is None else stat[1]


def pid_alive(pid: int, started: int | None = None) -> bool:
    """True while ``pid`` exists, is no zombie and (given ``started``) is still that process."""
    stat = read_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return started is None or stat[1] == started


def send_signal(pid: int, sig: signal.Signals) -> bool:
    """Signal ``pid``; False when it is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


LOWEST_PRIORITY = 19


def restore_ignored(signals: Iterable[signal.Signals]) -> list[signal.Signals]:
    """Set each of ``signals`` this process inherited *ignored* back to its default (SIGINT
    to Python's ``KeyboardInterrupt``); return those. An ignored signal stays ignored
    across ``exec``: a daemon started in the background of a non-interactive shell
    (SIGINT, SIGQUIT ignored) or under ``nohup`` (SIGHUP) would hand that on to every
    VMM it starts, and ``banger vm kill --signal INT`` would do nothing."""
    restored = []
    for sig in sorted(signals):
        if signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)
            restored.append(sig)
    return restored


def lower_priority(pid: int) -> bool:
    """Every thread of ``pid`` to nice 19 (Linux sets a nice value per thread, and a VMM's
    vCPU threads exist already); False when a thread could not be changed (not ours)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    ok = True
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), LOWEST_PRIORITY)
        except (OSError, ValueError):
            ok = False
    return ok
