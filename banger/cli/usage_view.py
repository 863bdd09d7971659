"""Figures of ``vm stats`` and ``top`` as short plain-ASCII cells (``-`` when unknown)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from banger.core.durations import format_duration
from banger.core.usage import fraction
from banger.core.validate import approx_size

if TYPE_CHECKING:
    from banger.api.models import GuestUsage, HostUsage

NONE = "-"


def size(n: int | None) -> str:
    return NONE if n is None else approx_size(n)


def percent(value: float | None) -> str:
    return NONE if value is None else f"{value:.1f}%"


def uptime(guest: GuestUsage | None) -> str:
    if guest is None or guest.uptime_seconds is None:
        return NONE
    return format_duration(guest.uptime_seconds)


def load(guest: GuestUsage | None) -> str:
    return NONE if guest is None or guest.load is None else " ".join(f"{v:.2f}" for v in guest.load)


def memory(guest: GuestUsage | None) -> str:
    """``used/total`` of the guest's memory."""
    if guest is None or guest.mem_used_bytes is None:
        return NONE
    return f"{size(guest.mem_used_bytes)}/{size(guest.mem_total_bytes)}"


def disk(guest: GuestUsage | None, mount: str) -> str:
    """``used/total`` of one guest filesystem."""
    found = [d for d in guest.disks if d.mount == mount] if guest is not None else []
    return f"{size(found[0].used_bytes)}/{size(found[0].total_bytes)}" if found else NONE


def network(host: HostUsage) -> str:
    """What the guest sent/received through its TAP."""
    if host.tap_rx_bytes is None or host.tap_tx_bytes is None:
        return NONE
    return f"{size(host.tap_rx_bytes)}/{size(host.tap_tx_bytes)}"


def sessions(guest: GuestUsage | None) -> str:
    return NONE if guest is None or guest.ssh_sessions is None else str(guest.ssh_sessions)


def bar(part: float, whole: float, width: int = 30) -> str:
    """``[#######-------]  47%``: ASCII, so it reads without colour (NO_COLOR, any terminal)."""
    filled = round(fraction(part, whole) * width)
    return f"[{'#' * filled}{'-' * (width - filled)}] {round(fraction(part, whole) * 100):3d}%"
