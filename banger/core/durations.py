"""Durations in settings: ``90`` (seconds), ``90s``, ``30m``, ``2h``, ``1h30m``, ``1d``."""

from __future__ import annotations

import re

DURATION_MAX = 366 * 86400.0
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_DURATION_RE = re.compile(
    r"(?:(?P<d>[0-9]{1,4})d)?(?:(?P<h>[0-9]{1,5})h)?(?:(?P<m>[0-9]{1,6})m)?"
    r"(?:(?P<s>[0-9]{1,8}(?:\.[0-9]{1,3})?)s?)?",
    re.ASCII,
)
_RULE = "use seconds (90) or a duration such as 90s, 30m, 2h, 1h30m, 1d"


def duration_seconds(value: object) -> float:
    """Seconds in ``value``: a positive number, or text in the grammar above (no signs,
    spaces or exponents); at most 366 days. ValueError says what is wrong."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value and (m := _DURATION_RE.fullmatch(value)):
        seconds = sum(float(m[unit]) * size for unit, size in _UNITS if m[unit])
    else:
        raise ValueError(_RULE)
    if not 0 < seconds <= DURATION_MAX:  # NaN fails this too
        raise ValueError("must be above 0 and at most 366d")
    return seconds


def format_duration(seconds: float) -> str:
    """``1h30m``, ``45s``, ``2d``: whole seconds in the largest units, zeros left out."""
    left = max(0, round(seconds))
    parts = []
    for unit, size in _UNITS:
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
