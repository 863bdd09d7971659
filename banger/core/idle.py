"""Auto-stop (``auto_stop_stale_after``): when is a running VM stale? (pure)

A VM is in use while someone runs a shell or command in it over SSH, while it has
a banger session, and for the setting's length after the last API request that
named it (any ``banger vm ... VM``), after it started, and after the daemon
started (a restarted daemon has no memory of earlier requests).
"""

from __future__ import annotations

from banger.core.durations import format_duration


def idle_verdict(*, now: float, last_use: float, sessions: int | None,
                 after: float) -> str | None:
    """Why a running VM should be stopped now, or None to leave it running.

    ``last_use`` is the latest of: its start, the daemon's start, the last request
    naming it, the last time it was seen with a session. ``sessions`` is how many
    SSH and banger sessions it has now; None (the guest did not say) never stops it.
    """
    if sessions is None or sessions > 0 or now - last_use < after:
        return None
    return (f"stopped automatically: no SSH session, banger session or CLI use "
            f"for {format_duration(now - last_use)} (auto_stop_stale_after = "
            f"{format_duration(after)})")
