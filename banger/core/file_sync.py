"""``[[file_sync]]`` entries: what the owner's home gives the guest's ``/root`` at every start.

Checked once, when the config is read: ``host`` is ``~/...`` or an absolute
path strictly inside the owner's home, ``guest`` an absolute path strictly
inside ``/root`` whose every component is a plain name, ``mode`` an octal
string. Both paths are normalised lexically (``~/a/../b`` is ``~/b``), and
what is normalised is what is later opened, so ``..`` cannot step out.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.core.errors import InvalidInput
from banger.core.validate import safe_relative_path

GUEST_HOME = "/root"
_KEYS = ("host", "guest", "mode")
_MODE_RE = re.compile(r"0?[0-7]{3}", re.ASCII)
_HINT = (
    'each [[file_sync]] entry is host = "~/path in your home", guest = "/root/path", '
    'and optionally mode = "0600" (see docs/config.md)'
)


@dataclass(frozen=True)
class FileSyncEntry:
    """One checked entry: an absolute host path inside the home, a guest path under /root."""

    host: Path
    guest: str
    mode: int | None = None

    @property
    def work_path(self) -> str:
        """``guest`` as a path on the work disk, which the guest mounts at ``/root``."""
        return self.guest.removeprefix(GUEST_HOME)


def _fail(index: int, key: str, why: str, value: object) -> InvalidInput:
    return InvalidInput(
        f"[[file_sync]] entry {index + 1}: '{key}' {why} (got {value!r})", hint=_HINT
    )


def _text(index: int, key: str, value: object) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise _fail(index, key, "must be a non-empty string", value)
    return value


def _host_path(index: int, value: object, home: Path) -> Path:
    text = _text(index, "host", value)
    if text.startswith("~/"):
        text = f"{home}/{text[2:]}"
    elif not text.startswith("/"):
        raise _fail(index, "host", "must start with ~/ (your home) or /", value)
    path = posixpath.normpath(text)
    root = posixpath.normpath(home)
    if path == root or posixpath.commonpath([root, path]) != root:
        raise _fail(index, "host", f"must be a path inside your home {root}", value)
    return Path(path)


def _guest_path(index: int, value: object) -> str:
    text = _text(index, "guest", value)
    path = posixpath.normpath(text) if text.startswith("/") else ""
    if not path.startswith(f"{GUEST_HOME}/"):
        raise _fail(index, "guest", f"must be an absolute path inside {GUEST_HOME}/", value)
    try:
        safe_relative_path(path.removeprefix(f"{GUEST_HOME}/"), where="file_sync")
    except InvalidInput as exc:
        raise _fail(index, "guest", f"is not a plain path ({exc.message})", value) from None
    return path


def _mode(index: int, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _MODE_RE.fullmatch(value):
        raise _fail(index, "mode", 'must be an octal string such as "0600" or "0644"', value)
    mode = int(value, 8)
    if not mode & 0o400:
        raise _fail(index, "mode", "must let the owner read the file (0400)", value)
    return mode


def parse_file_sync(value: Any, home: Path) -> tuple[FileSyncEntry, ...]:
    """The ``file_sync`` config value (a list of tables) checked into entries, or InvalidInput."""
    if not isinstance(value, list | tuple):
        raise InvalidInput(
            f"'file_sync' must be a list of [[file_sync]] tables (got {value!r})", hint=_HINT
        )
    entries = []
    for index, item in enumerate(value):
        if isinstance(item, FileSyncEntry):  # already checked (a Settings rebuilt from one)
            entries.append(item)
            continue
        if not isinstance(item, dict):
            raise _fail(index, "file_sync", "must be a table", item)
        unknown = sorted(set(item) - set(_KEYS))
        if unknown:
            raise _fail(index, unknown[0], "is not a file_sync key (host, guest, mode)", item)
        if "host" not in item or "guest" not in item:
            missing = "host" if "host" not in item else "guest"
            raise _fail(index, missing, "is missing", item)
        entries.append(FileSyncEntry(
            host=_host_path(index, item["host"], home),
            guest=_guest_path(index, item["guest"]),
            mode=_mode(index, item.get("mode")),
        ))
    return tuple(entries)
