"""Arithmetic on the figures ``vm stats`` and ``top`` show (pure)."""

from __future__ import annotations


def cpu_percent(ticks_before: int, ticks_after: int, seconds: float, hz: int) -> float | None:
    """CPU time used between two samples as a percentage of one CPU (like ``top``: a VMM
    busy on two CPUs shows 200); None when the samples cannot be compared."""
    if seconds <= 0 or hz <= 0 or ticks_after < ticks_before:
        return None
    return round((ticks_after - ticks_before) / hz / seconds * 100, 1)


def fraction(part: int | float, whole: int | float) -> float:
    """``part / whole`` clamped to 0..1 (0 for an empty whole): a bar's fill."""
    if whole <= 0:
        return 0.0
    return min(1.0, max(0.0, part / whole))
