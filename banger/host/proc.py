"""Processes banger starts and watches: detached spawns, liveness, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def python_module_argv(module: str, *args: str) -> list[str]:
    """The argv that runs one of banger's own modules in this interpreter (pure).

    ``-I`` (isolated mode) keeps the working directory, ``PYTHONPATH`` and the
    user's site-packages off ``sys.path``: a directory holding its own
    ``banger/`` package (a cloned repo, an unpacked tarball) must never
    shadow ours. Plain ``-m`` would put the working directory first.
    """
    return [sys.executable, "-I", "-m", module, *args]


def spawn_detached(argv: Sequence[str], *, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session at ``/``, stdio to ``log_path``; it outlives us.

    The environment is passed through on purpose: ``BANGER_*`` settings must
    reach the child (unlike ``host.run.run``, which cleans it). ``log_path``'s
    directory must exist (the caller makes it private).
    """
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with open(fd, "ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd="/",
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
