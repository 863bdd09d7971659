"""The signals banger sends a VM's VMM: one allowlist for the CLI, the daemon and the host seam."""

from __future__ import annotations

import signal

from banger.core.errors import InvalidInput

VMM_SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "ABRT")
ALLOWED_SIGNALS = frozenset(signal.Signals[f"SIG{name}"] for name in VMM_SIGNALS)
_RULE = f"use one of: {' '.join(VMM_SIGNALS)}"


def parse_vmm_signal(name: str) -> signal.Signals:
    """``KILL``, ``sigkill``, ``SIGKILL`` -> SIGKILL; any other name is InvalidInput."""
    bare = name.upper().removeprefix("SIG")
    if bare not in VMM_SIGNALS:
        raise InvalidInput(f"unknown signal {name!r}", hint=_RULE)
    return signal.Signals[f"SIG{bare}"]


def validate_signal(sig: object) -> signal.Signals:
    """Return ``sig`` if it is an allowlisted ``signal.Signals`` member (never a bare number)."""
    if not isinstance(sig, signal.Signals) or sig not in ALLOWED_SIGNALS:
        raise InvalidInput(f"refusing to send signal {str(sig)[:40]!r} to a VMM", hint=_RULE)
    return sig
