"""Child processes for tests of process identity and signalling."""

from __future__ import annotations

import subprocess
import time

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
