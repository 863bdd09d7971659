"""Reading what a guest's export sent back: untrusted bytes, parsed strictly (shown escaped:
``core.display``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from banger.core.errors import GuestError

_LENGTH = re.compile(rb"[0-9]{1,12}")
_LENGTH_LINE_MAX = 13  # 12 digits and the newline
MAX_CHANGES = 100_000  # past this a list is a guest's build output (or an attack), not an edit
_STATUS = re.compile(rb"[ACDMRTUX][0-9]{0,3}")


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
    changes, start = split_export(out)
    return changes, out[start:]


def split_export(out: bytes) -> tuple[list[Change], int]:
    """The changed files of the export script's output, and where its patch starts.

    The patch is left in place (it may be hundreds of MiB): the caller reads it from ``out``.
    """
    newline = out.find(b"\n", 0, _LENGTH_LINE_MAX)
    if newline < 0 or not _LENGTH.fullmatch(out[:newline]):
        raise _refuse("no length line")
    start = newline + 1
    length = int(out[:newline])
    if length > len(out) - start:
        raise _refuse("the file list is cut short")
    return parse_name_status(out[start:start + length]), start + length


def _too_many() -> GuestError:
    return GuestError(f"the guest's export lists more than {MAX_CHANGES} changed files",
                      hint="remove or .gitignore what the guest generated, then export again; "
                           "see: banger vm ssh VM")


def parse_name_status(data: bytes) -> list[Change]:
    """``git diff --name-status -z`` output: STATUS NUL PATH NUL (two paths for R and C).

    At most ``MAX_CHANGES`` entries: the count is checked before the split.
    """
    if data.count(b"\0") > 3 * MAX_CHANGES:
        raise _too_many()
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
    if len(changes) > MAX_CHANGES:
        raise _too_many()
    return changes
