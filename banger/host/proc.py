"""Processes banger starts and watches: detached spawns, liveness, signals."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path


def spawn_detached(argv: Sequence[str], *, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, stdio to ``log_path``; it outlives us.

    The environment is passed through on purpose: ``BANGER_*`` settings must
    reach the child (unlike ``host.run.run``, which cleans it).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def send_signal(pid: int, sig: signal.Signals) -> bool:
    """Signal ``pid``; False when it is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True
