"""Apply recorded uid/gid/mode (and device nodes) to an ext4 image in one debugfs run.

``mkfs.ext4 -d`` copies the staging tree with the daemon user's uids and the
on-disk modes; this pass rewrites every inode to what the image's tar headers
said, so a setuid-root binary is uid 0 and mode 04755 even for a non-root daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from banger.host.ext4 import debugfs_batch, debugfs_quote
from banger.images.flatten import NODE_KINDS, Entry, EntryKind

Progress = Callable[[str], None]

_NODE_ARGS = {EntryKind.CHAR: "c", EntryKind.BLOCK: "b", EntryKind.FIFO: "p"}


def _abs(path: str) -> str:
    return "/" + path


def _mknod_lines(entry: Entry) -> list[str]:
    # debugfs's mknod takes a bare name in the cwd: "mknod /a/b" would make an
    # entry literally named "/a/b" in the root, so cd into the parent first.
    parent, _, base = entry.path.rpartition("/")
    args = _NODE_ARGS[entry.kind]
    if entry.kind != EntryKind.FIFO:
        args += f" {entry.major} {entry.minor}"
    return [f"cd {debugfs_quote(_abs(parent))}", f"mknod {debugfs_quote(base)} {args}", "cd /"]


def ownership_script(entries: Iterable[Entry]) -> list[str]:
    """The debugfs commands that give every entry its uid, gid and full ``i_mode``."""
    lines: list[str] = []
    for entry in sorted(entries, key=lambda e: e.path):
        if entry.kind in NODE_KINDS:
            lines += _mknod_lines(entry)
        path = debugfs_quote(_abs(entry.path))
        # set_inode_field mode writes the whole i_mode word: the type bits must be in it.
        lines += [
            f"sif {path} uid {entry.uid}",
            f"sif {path} gid {entry.gid}",
            f"sif {path} mode 0{entry.full_mode:o}",
        ]
    return lines


def apply_ownership(
    image: Path, entries: Iterable[Entry], *, progress: Progress | None = None
) -> int:
    """Apply ``entries``' metadata to ``image``; return the number of debugfs commands."""
    lines = ownership_script(entries)
    if progress:
        progress(f"ownership: {len(lines)} debugfs commands")
    debugfs_batch(image, lines)
    return len(lines)
