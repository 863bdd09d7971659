"""The signals ``vm kill`` may send a VMM: one list for the CLI's choices and the daemon's check."""

from __future__ import annotations

import signal

from banger.core.errors import InvalidInput

VMM_SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "ABRT")


def parse_vmm_signal(name: str) -> signal.Signals:
    """``KILL``, ``sigkill``, ``SIGKILL`` -> SIGKILL; any other name is InvalidInput."""
    bare = name.upper().removeprefix("SIG")
    if bare not in VMM_SIGNALS:
        raise InvalidInput(f"unknown signal {name!r}", hint=f"use one of: {' '.join(VMM_SIGNALS)}")
    return signal.Signals[f"SIG{bare}"]
