"""Child processes for tests of process identity and signalling."""

from __future__ import annotations

import subprocess
import time

import pytest

from banger.host import proc as host_proc
from banger.host import proc_identity


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` and wait (bounded) until /proc shows its new argv.

    Popen returns once the exec is past its point of no return, a moment
    before the kernel publishes the new argv in /proc/<pid>/cmdline.
    """
    child = subprocess.Popen(argv)
    deadline = time.monotonic() + 5
    while proc_identity.cmdline(child.pid) != argv and time.monotonic() < deadline:
        time.sleep(0.001)
    return child


def seem_exiting(monkeypatch: pytest.MonkeyPatch, pid: int) -> None:
    """Make ``pid`` look as a process inside its exit does: the kernel's PF_EXITING flag
    in /proc/<pid>/stat and an empty cmdline (its memory already let go), while it
    really still runs: a window of microseconds, held open for a test."""
    real_fields = host_proc._stat_fields

    def exiting(of: int) -> list[str] | None:
        fields = real_fields(of)
        if of == pid and fields is not None:
            fields[6] = str(int(fields[6]) | host_proc.PF_EXITING)
        return fields

    monkeypatch.setattr(host_proc, "_stat_fields", exiting)
    monkeypatch.setattr(proc_identity, "cmdline", lambda of: None)
