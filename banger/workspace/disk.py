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
from banger.workspace.stage import Entry, Staged, changed, guest_mode, parents_of, walk_tree

_WORK_ROOT = "/root"  # the work disk is mounted there


@dataclass(frozen=True)
class Written:
    files: int
    bytes: int


# ext4 keeps a symlink target shorter than this in the inode (a "fast" symlink).
_FAST_SYMLINK = 60
# Directory blocks of a hashed (htree) directory are 3/4 full on average after splits.
_DIR_SLACK = 4 / 3


class _Batch:
    """The debugfs lines for a workspace, and the blocks and inodes they take."""

    def __init__(self, block_size: int) -> None:
        self.lines: list[str] = []
        self.files = 0
        self.bytes = 0
        self.block_size = block_size
        self.blocks = 0  # what the disk must hold, .git included
        self.inodes = 0
        self.dirents: dict[str, int] = {}  # bytes of directory entries, per directory

    def new_inode(self, dest: str, size: int) -> None:
        """Count an inode at ``dest`` holding ``size`` bytes of data, and its directory entry."""
        self.inodes += 1
        self.blocks += -(-size // self.block_size)
        parent, _, name = dest.rpartition("/")
        self.dirents[parent] = self.dirents.get(parent, 0) + (8 + len(name.encode()) + 3) // 4 * 4

    def directory_blocks(self) -> int:
        """Blocks past the first that big directories take (their entries and an index)."""
        extra = 0
        for size in self.dirents.values():
            n = -(-int(size * _DIR_SLACK) // self.block_size)
            extra += n if n > 1 else 0  # n - 1 more blocks, and the index block
        return extra

    def entry(self, root: Path, entry: Entry, dest: str, *, keep_mode: bool,
              count: bool) -> None:
        src = os.path.join(os.fsencode(root), entry.path)
        try:
            st = os.lstat(src)
            target = os.readlink(src) if entry.kind == "link" else None
        except OSError as exc:
            raise changed(src, exc) from None
        d = ext4.debugfs_quote(dest)
        if entry.kind == "dir":
            self.new_inode(dest, self.block_size)
            self.lines.append(f"mkdir {d}")
            if keep_mode:
                mode = guest_mode("dir", st.st_mode, keep_mode=True)
                self.lines.append(f"sif {d} mode 0{stat.S_IFDIR | mode:o}")
            return
        self.files += count
        if target is not None:
            self.new_inode(dest, len(target) if len(target) >= _FAST_SYMLINK else 0)
            self.lines.append(f"symlink {d} {ext4.debugfs_quote(os.fsdecode(target))}")
            return
        if not stat.S_ISREG(st.st_mode):
            raise changed(src)
        mode = guest_mode(entry.kind, st.st_mode, keep_mode=keep_mode)
        self.lines += [
            f"write {ext4.debugfs_quote(os.fsdecode(src))} {d}",
            f"sif {d} mode 0{stat.S_IFREG | mode:o}",
            f"sif {d} mtime @{int(st.st_mtime)}",
        ]
        self.new_inode(dest, st.st_size)
        self.bytes += st.st_size if count else 0


def _with_parents(entries: list[Entry]) -> list[Entry]:
    """``entries`` with a directory entry before the first path under it."""
    seen: set[bytes] = {e.path for e in entries if e.kind == "dir"}
    out: list[Entry] = []
    for entry in entries:
        for parent in parents_of(entry.path):
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


def _commands(staged: Staged, guest_path: str, block_size: int) -> _Batch:
    batch = _Batch(block_size)
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
        batch.new_inode(dest, block_size)
        for entry in walk_tree(extra):
            batch.entry(extra, entry, f"{dest}/{os.fsdecode(entry.path)}", keep_mode=False,
                        count=False)
    return batch


def write_workspace(work_disk: Path, staged: Staged, guest_path: str) -> Written | None:
    """Write ``staged`` at ``guest_path`` into the unused ``work_disk``; None to decline."""
    free = ext4.free_space(work_disk)
    try:
        batch = _commands(staged, guest_path, free.block_size)
    except InvalidInput:
        return None  # a name debugfs cannot carry: the SSH path can
    top = _disk_path(guest_path)
    if ext4.inode_type(work_disk, top) is not None:
        raise Conflict(f"the image's work seed already holds {guest_path}",
                       hint="use another workspace_guest_path, or an image without it")
    mkdirs, blocked = ext4.mkdir_commands(work_disk, [*parents_of(top), top])
    if blocked:
        raise Conflict(f"the image's work seed has a file where {guest_path} needs a directory",
                       hint="use another workspace_guest_path")
    for line in mkdirs:  # the workspace's top and the parents it lacks
        batch.new_inode(line.removeprefix("mkdir "), free.block_size)
    _check_room(batch, free)
    ext4.debugfs_batch(work_disk, ["cd /", *mkdirs, *batch.lines])
    return Written(files=batch.files, bytes=batch.bytes)


def _check_room(batch: _Batch, free: ext4.FreeSpace) -> None:
    """InvalidInput naming both sizes unless the disk has the blocks and inodes ``batch`` takes."""
    blocks = batch.blocks + batch.directory_blocks()
    hint = "ask for a larger --disk, or ship less (no --include-untracked)"
    if blocks > free.blocks:
        raise InvalidInput(
            f"the workspace needs {approx_size(blocks * free.block_size)} but the work disk has "
            f"{approx_size(free.bytes)} free", hint=hint)
    if batch.inodes > free.inodes:
        raise InvalidInput(
            f"the workspace needs {batch.inodes} inodes (files, links and directories) but the "
            f"work disk has {free.inodes} free", hint=hint + "; a larger disk has more inodes")
