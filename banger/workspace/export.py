"""Reading what a guest's export sent back: untrusted bytes, parsed strictly, shown escaped."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from banger.core.errors import GuestError

_LENGTH = re.compile(rb"[0-9]{1,12}")
_STATUS = re.compile(rb"[ACDMRTUX][0-9]{0,3}")
# Format characters (bidi overrides, zero-width) and line/paragraph separators too:
# a name the guest made must not reorder or hide what the terminal shows around it.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp"})


@dataclass(frozen=True)
class Change:
    status: str
    path: bytes
    old_path: bytes | None = None


def _refuse(why: str) -> GuestError:
    return GuestError(f"the guest's export is malformed: {why}",
                      hint="the guest's git or shell may be broken; see: banger vm ssh VM")


def parse_export(out: bytes) -> tuple[list[Change], bytes]:
    """Split the export script's output into the changed files and the patch."""
    head, newline, rest = out.partition(b"\n")
    if not newline or not _LENGTH.fullmatch(head):
        raise _refuse("no length line")
    length = int(head)
    if length > len(rest):
        raise _refuse("the file list is cut short")
    return parse_name_status(rest[:length]), rest[length:]


def parse_name_status(data: bytes) -> list[Change]:
    """``git diff --name-status -z`` output: STATUS NUL PATH NUL (two paths for R and C)."""
    fields = data.split(b"\0")
    if fields and fields[-1] == b"":
        fields.pop()
    changes: list[Change] = []
    i = 0
    while i < len(fields):
        status = fields[i]
        if not _STATUS.fullmatch(status):
            raise _refuse(f"unknown status {status[:12]!r}")
        two = status[:1] in (b"R", b"C")
        paths = fields[i + 1:i + (3 if two else 2)]
        if len(paths) < (2 if two else 1) or b"" in paths:
            raise _refuse("a status without its path")
        if two:
            changes.append(Change(status.decode(), fields[i + 2], fields[i + 1]))
        else:
            changes.append(Change(status.decode(), fields[i + 1]))
        i += 3 if two else 2
    return changes


def display_path(path: bytes) -> str:
    """``path`` for a terminal: invalid UTF-8 and control characters as escapes."""
    text = path.decode("utf-8", "backslashreplace")
    return "".join(_escape(c) if unicodedata.category(c) in _HIDDEN else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
