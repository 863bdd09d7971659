"""A staged workspace written straight into a new VM's work disk, before it boots.

``vm run PATH`` knows the workspace before the guest exists: one debugfs
batch on the host puts the tree (and its ``.git``) on the work disk, so the
guest spends no CPU unpacking it (under TCG, guest CPU is the scarce thing:
docs/performance.md). Files keep their whole-second mtime, as the shipped
index expects; everything is owned by root. Names debugfs cannot encode
(quotes, backslashes, control characters, non-UTF-8) make this path decline,
and the workspace travels over SSH after boot instead.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import Conflict, InvalidInput
from banger.core.validate import approx_size
from banger.host import ext4
from banger.workspace.stage import Entry, Staged, walk_tree

_WORK_ROOT = "/root"  # the work disk is mounted there


@dataclass(frozen=True)
class Written:
    files: int
    bytes: int


class _Batch:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.files = 0
        self.bytes = 0
        self.stored = 0  # what the disk must hold, .git included

    def entry(self, root: Path, entry: Entry, dest: str, *, keep_mode: bool,
              count: bool) -> None:
        src = os.path.join(os.fsencode(root), entry.path)
        st = os.lstat(src)
        d = ext4.debugfs_quote(dest)
        if entry.kind == "dir":
            self.lines.append(f"mkdir {d}")
            if keep_mode:
                self.lines.append(f"sif {d} mode 0{stat.S_IFDIR | _perm(st.st_mode):o}")
            return
        if count:
            self.files += 1
        if entry.kind == "link":
            target = os.fsdecode(os.readlink(src))
            self.lines.append(f"symlink {d} {ext4.debugfs_quote(target)}")
            return
        if not stat.S_ISREG(st.st_mode):
            raise Conflict(f"{os.fsdecode(src)!r} changed while the workspace was prepared",
                           hint="run it again once the tree is quiet")
        mode = _perm(st.st_mode) if keep_mode else (0o755 if entry.kind == "exec" else 0o644)
        self.lines += [
            f"write {ext4.debugfs_quote(os.fsdecode(src))} {d}",
            f"sif {d} mode 0{stat.S_IFREG | mode:o}",
            f"sif {d} mtime @{int(st.st_mtime)}",
        ]
        self.stored += st.st_size
        if count:
            self.bytes += st.st_size


def _perm(mode: int) -> int:
    return stat.S_IMODE(mode) & 0o1777  # no set-id bits into the guest


def _with_parents(entries: list[Entry]) -> list[Entry]:
    """``entries`` with a directory entry before the first path under it."""
    seen: set[bytes] = {e.path for e in entries if e.kind == "dir"}
    out: list[Entry] = []
    for entry in entries:
        parts = entry.path.split(b"/")
        for i in range(1, len(parts)):
            parent = b"/".join(parts[:i])
            if parent not in seen:
                seen.add(parent)
                out.append(Entry(parent, "dir"))
        out.append(entry)
    return out


def _disk_path(guest_path: str) -> str:
    return guest_path[len(_WORK_ROOT):]


def base_dir_of(guest_path: str) -> str:
    """Where a full_copy workspace's baseline repository lives (the prepare script's rule)."""
    parent, _, name = guest_path.rpartition("/")
    return f"{parent}/.{name}.banger-base.git"


def _commands(staged: Staged, guest_path: str) -> _Batch:
    batch = _Batch()
    top = _disk_path(guest_path)
    keep = staged.base_dir is not None
    for entry in _with_parents(staged.entries):
        batch.entry(staged.source, entry, f"{top}/{os.fsdecode(entry.path)}", keep_mode=keep,
                    count=True)
    base = _disk_path(base_dir_of(guest_path))
    for extra, dest in ((staged.git_dir, f"{top}/.git"), (staged.base_dir, base)):
        if extra is None:
            continue
        batch.lines.append(f"mkdir {ext4.debugfs_quote(dest)}")
        for entry in walk_tree(extra):
            batch.entry(extra, entry, f"{dest}/{os.fsdecode(entry.path)}", keep_mode=False,
                        count=False)
    return batch


def write_workspace(work_disk: Path, staged: Staged, guest_path: str) -> Written | None:
    """Write ``staged`` at ``guest_path`` into the unused ``work_disk``; None to decline."""
    try:
        batch = _commands(staged, guest_path)
    except InvalidInput:
        return None  # a name debugfs cannot carry: the SSH path can
    parents = [_disk_path(guest_path)]
    while parents[0].count("/") > 1:
        parents.insert(0, parents[0].rpartition("/")[0])
    if ext4.inode_type(work_disk, parents[-1]) is not None:
        raise Conflict(f"the image's work seed already holds {guest_path}",
                       hint="use another workspace_guest_path, or an image without it")
    mkdirs, blocked = ext4.mkdir_commands(work_disk, parents)
    if blocked:
        raise Conflict(f"the image's work seed has a file where {guest_path} needs a directory",
                       hint="use another workspace_guest_path")
    free = ext4.free_bytes(work_disk)
    if batch.stored > free:
        raise InvalidInput(
            f"the workspace needs {approx_size(batch.stored)} but the work disk has "
            f"{approx_size(free)} free",
            hint="ask for a larger --disk, or ship less (no --include-untracked)",
        )
    ext4.debugfs_batch(work_disk, ["cd /", *mkdirs, *batch.lines])
    return Written(files=batch.files, bytes=batch.bytes)
