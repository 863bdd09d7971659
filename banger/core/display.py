"""Text from elsewhere (a guest, an image, the daemon's errors) made safe for a terminal.

Control characters (ESC starts colour, cursor and title sequences), format
characters (bidi overrides, zero-width) and line/paragraph separators are
shown as escapes: a string someone else wrote must not drive the terminal,
or reorder or hide what is shown around it.
"""

from __future__ import annotations

import unicodedata

# Cs: a lone surrogate (from JSON) would make the write itself fail.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def escape_text(text: str, *, keep: str = "") -> str:
    """``text`` with hidden characters (except those in ``keep``) as ``\\xNN``/``\\uNNNN``."""
    return "".join(
        _escape(c) if c not in keep and unicodedata.category(c) in _HIDDEN else c for c in text
    )


def display_path(path: bytes) -> str:
    """``path`` (a name from untrusted data) for a terminal: invalid UTF-8 escaped too."""
    return escape_text(path.decode("utf-8", "backslashreplace"))


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
