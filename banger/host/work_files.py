"""``[[file_sync]]``: copy files from the owner's home into a VM's ``/root``.

One plan (``plan_file_sync``), two writers: at every start, before the VMM
opens the work disk, one debugfs run (``sync_files``); into a running guest (a
claimed warm pool member), one tar (``write_sync_payload``) that a fixed guest
script (``core/file_sync_script.py``) puts in place, saying what it left out
(``apply_guest_report``). The host side is read without following links: each
entry's last component is opened with O_NOFOLLOW, and a synced directory is
walked with ``openat`` from its own descriptors, so a symlink anywhere in it is
skipped (logged, "file_sync skipped symlink") and its target never read. Each
file is copied into a private staging dir with its final mode, and the writer
copies that.

Nothing here fails a start for one entry: a missing host path, a symlink,
a name debugfs cannot encode, or a guest path banger owns is a warning and
the rest still lands. What the guest did to /root (a directory where a file
goes) is reported the same way.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from banger.core.errors import Forbidden, InvalidInput
from banger.core.file_sync import FileSyncEntry
from banger.host.disks import HOST_KEY_DIR
from banger.host.ext4 import (
    REPLACE_OK_ERRORS,
    debugfs_quote,
    debugfs_script,
    mkdir_commands,
    replace_file_commands,
)
from banger.host.files import open_nofollow

log = logging.getLogger("banger.host.work_files")

# Work-disk paths banger itself writes: file_sync never replaces them (a synced
# ~/.ssh must not lock banger out of its own VM).
BANGER_OWNED = ("/.ssh/authorized_keys", f"/{HOST_KEY_DIR}")
_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO never blocks the start


@dataclass
class SyncPlan:
    """What one start writes: directories to make (parents first) and staged files."""

    staging: Path
    dirs: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)  # work-disk path -> staged copy
    skipped: list[str] = field(default_factory=list)
    copies: int = 0
    _dir_set: set[str] = field(default_factory=set, init=False, repr=False)  # ``dirs``, to look up

    def skip(self, entry: FileSyncEntry, path: Path, why: str) -> None:
        """Log (a warning) and record one thing left out, naming the entry."""
        message = f"file_sync skipped {why}: {path} (entry {entry.host} -> {entry.guest})"
        log.warning("%s", message)
        self.skipped.append(message)

    def staged(self) -> Path:
        """A new file name in the staging dir."""
        self.copies += 1
        return self.staging / str(self.copies)

    def drop_below(self, blocked: Sequence[str]) -> None:
        """Leave out every file under ``blocked`` (the guest put a non-directory there)."""
        for d in blocked:
            self._dropped(f"file_sync skipped /root{d}: it is not a directory on the work disk")
        walls = set(blocked)
        for dest in [f for f in self.files if any(d in walls for d in _parents(f))]:
            del self.files[dest]

    def drop_files(self, blocked: Sequence[str]) -> None:
        """Leave out the files ``blocked`` (the guest has a directory there)."""
        for dest in blocked:
            if self.files.pop(dest, None) is not None:
                self._dropped(f"file_sync skipped /root{dest}: a directory is in its place")

    def _dropped(self, message: str) -> None:
        log.warning("%s", message)
        self.skipped.append(message)

    def add_dir(self, dest: str) -> None:
        if dest not in self._dir_set:
            self._dir_set.add(dest)
            self.dirs.append(dest)

    def has_dir(self, dest: str) -> bool:
        return dest in self._dir_set

    def add_parents(self, dest: str) -> None:
        for parent in _parents(dest):
            self.add_dir(parent)


def _parents(dest: str) -> list[str]:
    """``/a/b/c`` -> ``/a``, ``/a/b``: the directories above a work-disk path."""
    parts = dest.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _owned_by_banger(dest: str) -> bool:
    return any(dest == p or dest.startswith(f"{p}/") for p in BANGER_OWNED)


def _checked_dest(plan: SyncPlan, entry: FileSyncEntry, source: Path, dest: str) -> bool:
    """Whether ``dest`` may be written: debugfs can name it and banger does not own it."""
    try:
        debugfs_quote(dest)
    except InvalidInput:
        plan.skip(entry, source, "a name debugfs cannot encode (a quote, backslash or "
                                 "control character)")
        return False
    if _owned_by_banger(dest):
        plan.skip(entry, source, f"a path banger owns (/root{dest})")
        return False
    return True


def _stage_file(plan: SyncPlan, entry: FileSyncEntry, fd: int, source: Path, dest: str) -> None:
    """Copy the open regular file ``fd`` into staging with its final mode; queue it for ``dest``."""
    if not _checked_dest(plan, entry, source, dest):
        return
    mode = entry.mode if entry.mode is not None else stat.S_IMODE(os.fstat(fd).st_mode) & 0o777
    staged = plan.staged()
    with open(fd, "rb", closefd=False) as src, open(staged, "xb") as out:
        shutil.copyfileobj(src, out)
    staged.chmod(mode)  # debugfs write copies it
    plan.files[dest] = staged


def _walk(plan: SyncPlan, entry: FileSyncEntry, top_fd: int, source: Path, dest: str) -> None:
    """Queue the tree under directory ``top_fd`` (closed here): files and directories, no links."""
    stack = [(top_fd, source, dest)]
    try:
        while stack:
            dir_fd, dir_src, dir_dest = stack.pop()
            try:
                with os.scandir(dir_fd) as it:
                    names = sorted(e.name for e in it)
                for name in names:
                    try:
                        _walk_one(plan, entry, dir_fd, dir_src / name, f"{dir_dest}/{name}", stack)
                    except OSError as exc:  # gone or unreadable since it was listed
                        plan.skip(entry, dir_src / name, f"an unreadable entry ({exc.strerror})")
            finally:
                os.close(dir_fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _walk_one(
    plan: SyncPlan, entry: FileSyncEntry, dir_fd: int, source: Path, dest: str,
    stack: list[tuple[int, Path, str]],
) -> None:
    name = source.name
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        plan.skip(entry, source, "symlink (would escape the requested tree)")
    elif stat.S_ISDIR(st.st_mode):
        if _checked_dest(plan, entry, source, dest):
            fd = os.open(name, _READ | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            plan.add_dir(dest)
            stack.append((fd, source, dest))
    elif stat.S_ISREG(st.st_mode):
        fd = os.open(name, _READ | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):  # still the file lstat saw
                _stage_file(plan, entry, fd, source, dest)
        finally:
            os.close(fd)
    else:
        plan.skip(entry, source, "a special file (not a regular file or directory)")


def _open_top(plan: SyncPlan, entry: FileSyncEntry, home: Path) -> int | None:
    """The entry's host path opened without following a link, or None (logged) to skip it.

    The owner named the path, but a symlink there is still refused: following
    it could read outside the home, which is the one rule file_sync keeps."""
    real_home = os.path.realpath(home)
    real_parent = os.path.realpath(entry.host.parent)
    if os.path.commonpath([real_home, real_parent]) != real_home:
        plan.skip(entry, entry.host, f"a path whose directory resolves to {real_parent}, "
                                     f"outside your home {real_home}")
        return None
    try:
        return open_nofollow(Path(real_parent, entry.host.name), _READ)
    except FileNotFoundError:
        plan.skip(entry, entry.host, "a missing path")
    except Forbidden:
        plan.skip(entry, entry.host, "a top-level symlink (name its target instead)")
    except OSError as exc:
        plan.skip(entry, entry.host, f"an unreadable path ({exc.strerror})")
    return None


def plan_file_sync(entries: Sequence[FileSyncEntry], home: Path, staging: Path) -> SyncPlan:
    """Read every entry from the host into ``staging``; what to write, and what was skipped."""
    plan = SyncPlan(staging)
    for entry in entries:
        fd = _open_top(plan, entry, home)
        if fd is None:
            continue
        st = os.fstat(fd)
        dest = entry.work_path
        if stat.S_ISDIR(st.st_mode) and _checked_dest(plan, entry, entry.host, dest):
            plan.add_parents(dest)
            plan.add_dir(dest)
            _walk(plan, entry, fd, entry.host, dest)  # closes fd
            continue
        try:
            if stat.S_ISREG(st.st_mode):
                plan.add_parents(dest)
                _stage_file(plan, entry, fd, entry.host, dest)
            elif not stat.S_ISDIR(st.st_mode):
                plan.skip(entry, entry.host, "a special file (not a regular file or directory)")
        finally:
            os.close(fd)
    # Entries that collide (a file where another entry's tree has a directory): the
    # directory wins, for both writers, as it did in debugfs (its mkdir runs first).
    plan.drop_files([f for f in plan.files if plan.has_dir(f)])
    return plan


def file_sync_commands(mkdirs: Sequence[str], files: dict[str, Path]) -> list[str]:
    """debugfs lines: the ``mkdir`` lines (new directories are root-owned 0755), then
    replace each file."""
    cmds = ["cd /", *mkdirs]
    for dest, src in files.items():
        cmds += replace_file_commands(src, dest)
    return cmds


def sync_files(image: Path, entries: Sequence[FileSyncEntry], home: Path) -> SyncPlan:
    """Copy ``entries`` into the work disk ``image`` (not in use) in one debugfs run."""
    staging = Path(tempfile.mkdtemp(prefix=f".{image.name}.sync.", dir=image.parent))
    try:
        plan = plan_file_sync(entries, home, staging)
        if plan.dirs or plan.files:
            mkdirs, blocked = mkdir_commands(image, plan.dirs)
            plan.drop_below(blocked)
            commands = file_sync_commands(mkdirs, plan.files)
            _, errors = debugfs_script(image, commands, ok_errors=REPLACE_OK_ERRORS)
            for line in errors:  # what the guest left in the way, a full disk
                log.warning("file_sync into %s: debugfs: %s", image.name, line)
                plan.skipped.append(f"file_sync: debugfs: {line}")
        return plan
    finally:
        shutil.rmtree(staging, ignore_errors=True)


PAYLOAD_DIRS, PAYLOAD_FILES, PAYLOAD_TREE = "dirs", "files", "tree"


def _root_owned(name: str, mode: int, size: int = 0, *, kind: bytes = tarfile.REGTYPE
                ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, size
    info.uid = info.gid = 0
    info.mtime = int(time.time())  # written now, as debugfs stamps what it writes
    info.uname = info.gname = "root"
    return info


def _listing(tar: tarfile.TarFile, name: str, paths: Sequence[str]) -> None:
    # One path a line: the plan holds no name with a newline (``_checked_dest``).
    data = b"".join(os.fsencode(p.lstrip("/")) + b"\n" for p in paths)
    tar.addfile(_root_owned(name, 0o600, len(data)), io.BytesIO(data))


def write_sync_payload(plan: SyncPlan, out: Path) -> None:
    """``plan`` as the tar the guest's file_sync script reads (``core/file_sync_script.py``):
    the lists of directories and files, and ``tree/`` holding them, root-owned, directories
    0755 (the mode debugfs gives a new one), each file with its staged mode."""
    with tarfile.open(out, "x", format=tarfile.PAX_FORMAT) as tar:
        _listing(tar, PAYLOAD_DIRS, plan.dirs)
        _listing(tar, PAYLOAD_FILES, list(plan.files))
        for d in plan.dirs:
            tar.addfile(_root_owned(f"{PAYLOAD_TREE}{d}", 0o755, kind=tarfile.DIRTYPE))
        for dest, staged in plan.files.items():
            st = staged.stat()
            with open(staged, "rb") as f:
                tar.addfile(_root_owned(f"{PAYLOAD_TREE}{dest}", stat.S_IMODE(st.st_mode),
                                        st.st_size), f)


def apply_guest_report(plan: SyncPlan, report: bytes) -> None:
    """Drop from ``plan`` (logged, as the debugfs writer does) what the guest's script said
    it left out: ``dir PATH`` / ``file PATH`` lines. The guest is not trusted: a line that
    names nothing of the plan is ignored."""
    dirs: dict[str, None] = {}  # ordered sets: each once, in the guest's order
    files: dict[str, None] = {}
    for line in report.split(b"\n"):
        kind, _, rel = line.partition(b" ")
        dest = "/" + os.fsdecode(rel)
        if kind == b"dir" and plan.has_dir(dest):
            dirs[dest] = None
        elif kind == b"file" and dest in plan.files:
            files[dest] = None
    plan.drop_below(list(dirs))
    plan.drop_files(list(files))  # those under a reported dir are gone already


def pack_file_sync(entries: Sequence[FileSyncEntry], home: Path, scratch: Path,
                   payload: Path) -> SyncPlan:
    """Read every entry from the host (staged under ``scratch``) into the tar ``payload``
    for a running guest; what it holds, and what was skipped."""
    plan = plan_file_sync(entries, home, scratch)
    write_sync_payload(plan, payload)
    return plan
