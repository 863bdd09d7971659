"""``~/.ssh/config``'s one ``Include`` line for banger, added and removed byte-exactly.

The line goes first in the file: an ``Include`` after a ``Host`` line would
only apply inside that block, and OpenSSH takes the first value it reads, so
banger's ``Host *.vm`` settings win over the user's ``Host *`` defaults. The
user's own lines are never changed. A config that is a symbolic link (a
dotfiles checkout) is edited where it points, and stays a link.
"""

from __future__ import annotations

import os
from pathlib import Path

from banger.host.files import atomic_write_bytes

MARKER = b"# banger: `ssh NAME.vm` for banger's VMs (remove with: banger ssh-config --uninstall)"


def include_lines(managed: Path) -> bytes:
    return MARKER + b"\nInclude " + os.fsencode(managed) + b"\n"


def with_include(text: bytes, managed: Path) -> bytes:
    """``text`` with banger's lines first (unchanged when it has them there)."""
    block = include_lines(managed)
    return text if text.startswith(block) else block + without_include(text)


def without_include(text: bytes) -> bytes:
    """``text`` without banger's lines, wherever they are; everything else byte for byte."""
    out: list[bytes] = []
    after_marker = False
    for line in text.splitlines(keepends=True):
        if after_marker and line.startswith(b"Include "):
            after_marker = False
            continue
        after_marker = line.rstrip(b"\r\n") == MARKER
        if not after_marker:
            out.append(line)
    return b"".join(out)


def install(user_config: Path, managed: Path) -> bool:
    """Add the include to ``user_config`` (made 0600, in a 0700 dir, if missing); changed?"""
    target = Path(os.path.realpath(user_config))
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = target.read_bytes() if target.exists() else b""
    return _replace(target, old, with_include(old, managed))


def uninstall(user_config: Path) -> bool:
    """Remove banger's lines from ``user_config``; changed?"""
    target = Path(os.path.realpath(user_config))
    if not target.exists():
        return False
    old = target.read_bytes()
    return _replace(target, old, without_include(old))


def _replace(target: Path, old: bytes, new: bytes) -> bool:
    if new == old:
        return False
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o600
    atomic_write_bytes(target, new, mode)
    return True
