"""The one tar a prepare sends to the guest: ``tree/`` (the workspace), for full_copy ``base.git/``.

Names are bytes end to end (GNU format, surrogateescape), so spaces,
newlines and non-UTF-8 names survive. Symlinks travel as symlinks: a file is
opened with ``O_NOFOLLOW``, so a link to ``~/.ssh/id_ed25519`` sends the
link, never the key. Everything lands owned by root; files keep their
whole-second mtime, which the shipped index relies on.
"""

from __future__ import annotations

import os
import stat
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from banger.workspace.stage import Entry, Staged, changed, guest_mode, parents_of, walk_tree


@dataclass(frozen=True)
class PayloadSummary:
    files: int  # workspace files and links (not directories, not git's own)
    bytes: int  # their sizes
    archive_bytes: int
    entries: int = 0  # every member (git's own and directories too): the inodes it takes


class _Writer:
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.dirs: set[bytes] = set()
        self.now = int(time.time())

    def _info(self, name: bytes, kind: bytes, mode: int, mtime: float) -> tarfile.TarInfo:
        info = tarfile.TarInfo(os.fsdecode(name))
        info.type = kind
        info.mode, info.mtime = mode, int(mtime)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def parents(self, name: bytes) -> None:
        """Directory entries (0755) for every parent of ``name`` not written yet."""
        for d in parents_of(name):
            if d not in self.dirs:
                self.dirs.add(d)
                self.tar.addfile(self._info(d, tarfile.DIRTYPE, 0o755, self.now))

    def add(self, prefix: bytes, root: Path, entry: Entry, *, keep_mode: bool) -> int:
        """Write one entry read from ``root``; the bytes it carries."""
        name = prefix + entry.path
        self.parents(name)
        path = os.path.join(os.fsencode(root), entry.path)
        if entry.kind == "dir":
            if name not in self.dirs:
                self.dirs.add(name)
                try:
                    st = os.lstat(path)
                except OSError as exc:
                    raise changed(path, exc) from None
                mode = guest_mode("dir", st.st_mode, keep_mode=keep_mode)
                self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, st.st_mtime))
            return 0
        if entry.kind == "link":
            return self._link(name, path)
        return self._file(name, path, entry, keep_mode=keep_mode)

    def _link(self, name: bytes, path: bytes) -> int:
        try:
            target = os.readlink(path)
            st = os.lstat(path)
        except OSError as exc:
            raise changed(path, exc) from None
        info = self._info(name, tarfile.SYMTYPE, 0o777, st.st_mtime)
        info.linkname = os.fsdecode(target)
        self.tar.addfile(info)
        return 0

    def _file(self, name: bytes, path: bytes, entry: Entry, *, keep_mode: bool) -> int:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise changed(path, exc) from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise changed(path, None)
            mode = guest_mode(entry.kind, st.st_mode, keep_mode=keep_mode)
            info = self._info(name, tarfile.REGTYPE, mode, st.st_mtime)
            info.size = st.st_size
            try:
                self.tar.addfile(info, f)
            except OSError as exc:  # it shrank while being read
                raise changed(path, exc) from None
            return st.st_size


def write_payload(staged: Staged, out: Path) -> PayloadSummary:
    """Write the tar for ``staged`` to ``out``."""
    files = size = 0
    keep_mode = staged.base_dir is not None  # full_copy keeps the tree's own modes
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        writer = _Writer(tar)
        writer.parents(b"tree/x")
        for entry in staged.entries:
            size += writer.add(b"tree/", staged.source, entry, keep_mode=keep_mode)
            files += entry.kind != "dir"
        for extra, prefix in ((staged.git_dir, b"tree/.git/"), (staged.base_dir, b"base.git/")):
            if extra is not None:
                writer.parents(prefix + b"x")
                for entry in walk_tree(extra):
                    writer.add(prefix, extra, entry, keep_mode=False)
        entries = len(tar.getmembers())
    return PayloadSummary(files=files, bytes=size, archive_bytes=out.stat().st_size,
                          entries=entries)
