"""ext4 images through e2fsprogs, without mounting and without root.

Every use of ``mkfs.ext4``, ``e2fsck``, ``resize2fs`` and ``debugfs`` is
here. ``mkfs.ext4 -d`` fills a new image from a directory; ``debugfs -w -f -``
applies batched metadata edits (ownership, modes, files) to an image the
daemon user owns; ``debugfs -R`` answers one read-only request.

debugfs exits 0 whatever happens, so its stderr is the only report. One
policy for every run: an image debugfs cannot open is a ``HostToolError``;
in a batch every other error line is one too, unless the caller named it as
expected (``ok_errors``); a single request returns its output, empty when the
path is missing, for the caller to judge.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import HostToolError, InvalidInput
from banger.host.files import open_nofollow
from banger.host.run import require_tool, run

# Lazy init keeps mkfs of a multi-GiB image sub-second.
LAZY_INIT = "lazy_itable_init=1,lazy_journal_init=1"
_PACKAGE = "e2fsprogs"
_OPEN_FAILED = ("while trying to open", "Filesystem not open")


def require_e2fsprogs() -> None:
    """Raise HostToolError (with the package to install) unless e2fsprogs is installed."""
    for tool in ("mkfs.ext4", "debugfs", "e2fsck", "resize2fs"):
        require_tool(tool, _PACKAGE)


def make_ext4(
    image: Path,
    size_bytes: int,
    *,
    source_dir: Path | None = None,
    label: str | None = None,
    root_owner: tuple[int, int] = (0, 0),
) -> None:
    """Create a sparse ext4 image of ``size_bytes``, optionally filled from ``source_dir``."""
    mkfs = require_tool("mkfs.ext4", _PACKAGE)
    image.parent.mkdir(parents=True, exist_ok=True)
    fd = open_nofollow(image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as f:
        f.truncate(size_bytes)
    argv = [mkfs, "-F", "-q", "-E", f"{LAZY_INIT},root_owner={root_owner[0]}:{root_owner[1]}"]
    if label:
        argv += ["-L", label]
    if source_dir is not None:
        argv += ["-d", os.fspath(source_dir)]
    argv.append(os.fspath(image))
    try:
        run(argv, timeout=600)
    except BaseException:
        image.unlink(missing_ok=True)
        raise


def check_ext4(image: Path, *, what: str = "ext4 image") -> None:
    """Refuse ``image`` unless ``e2fsck -fn`` finds it clean (read-only: nothing is fixed)."""
    e2fsck = require_tool("e2fsck", _PACKAGE)
    proc = run([e2fsck, "-fn", os.fspath(image)], timeout=1800, check=False)
    if proc.returncode == 0:
        return
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace").splitlines()
    problems = [
        line.strip() for line in out
        if line.strip() and not line.startswith(("Pass ", "e2fsck ", os.fspath(image)))
    ]
    raise InvalidInput(
        f"corrupt {what}: {problems[0] if problems else f'e2fsck exit status {proc.returncode}'}",
        hint="repair it with e2fsck -f (on a copy), or export the image again",
    )


def grow_ext4(image: Path, size_bytes: int) -> None:
    """Grow the file and the filesystem in ``image`` to ``size_bytes``."""
    e2fsck = require_tool("e2fsck", _PACKAGE)
    resize2fs = require_tool("resize2fs", _PACKAGE)
    # resize2fs refuses a filesystem that was mounted since its last check;
    # 0 (clean) and 1 (errors fixed) both leave it safe to resize.
    proc = run([e2fsck, "-f", "-p", os.fspath(image)], timeout=600, check=False)
    if proc.returncode not in (0, 1):
        raise HostToolError(
            f"{image.name} has filesystem errors e2fsck cannot fix (status {proc.returncode})",
            hint=f"inspect it with: e2fsck -f {image}",
        )
    with open(image, "r+b") as f:
        f.truncate(size_bytes)
    run([resize2fs, os.fspath(image)], timeout=600)


def debugfs_quote(path: str) -> str:
    """Quote ``path`` for a debugfs script line, refusing what debugfs cannot encode."""
    if any(c in path for c in '"\\\n\r\t\0') or not path.isprintable():
        raise InvalidInput(
            f"path {path!r} cannot be encoded for debugfs",
            hint="rename the entry: quotes, backslashes and control characters are not supported",
        )
    return f'"{path}"' if " " in path else path


def debugfs_errors(stderr: str) -> list[str]:
    """The error lines of a debugfs run (it exits 0 even when commands fail)."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith("debugfs ") and not line.startswith("\t")
    ]


def _debugfs(
    image: Path, args: list[str], *, script: bytes | None, timeout: float
) -> tuple[bytes, list[str]]:
    """Run debugfs on ``image``: its stdout and error lines; HostToolError if it cannot open it."""
    debugfs = require_tool("debugfs", _PACKAGE)
    proc = run([debugfs, *args, os.fspath(image)], input=script, timeout=timeout)
    errors = debugfs_errors(proc.stderr.decode("utf-8", "replace"))
    opened = [e for e in errors if any(m in e for m in _OPEN_FAILED)]
    if opened:
        raise HostToolError(f"debugfs cannot open {image.name}: {opened[0]}",
                            hint=f"check the image with: e2fsck -fn {image}")
    return proc.stdout, errors


def debugfs_request(image: Path, request: str, *, timeout: float = 60) -> bytes:
    """The output of one read-only debugfs ``request`` (already quoted); empty when it failed."""
    return _debugfs(image, ["-R", request], script=None, timeout=timeout)[0]


def debugfs_script(
    image: Path,
    commands: Iterable[str],
    *,
    writable: bool = True,
    ok_errors: Sequence[str] = (),
    timeout: float = 1800,
) -> tuple[str, list[str]]:
    """Run debugfs ``commands`` on ``image`` in one run: its output and the error lines
    not matching ``ok_errors``, for a caller that judges them itself."""
    script = "".join(f"{c}\n" for c in commands).encode()
    args = [*(["-w"] if writable else []), "-f", "-"]
    out, errors = _debugfs(image, args, script=script, timeout=timeout)
    return out.decode("utf-8", "replace"), [
        e for e in errors if not any(ok in e for ok in ok_errors)
    ]


def debugfs_batch(
    image: Path,
    commands: Iterable[str],
    *,
    writable: bool = True,
    ok_errors: Sequence[str] = (),
    timeout: float = 1800,
) -> str:
    """Run debugfs ``commands`` (one per line, already quoted) on ``image`` in one run.

    Any error line debugfs prints raises HostToolError, unless it contains one
    of ``ok_errors`` (e.g. ``"already exists"`` for a mkdir that may repeat).
    """
    out, failed = debugfs_script(
        image, commands, writable=writable, ok_errors=ok_errors, timeout=timeout
    )
    if failed:
        raise HostToolError(
            f"debugfs could not edit {image.name}: {failed[0]}",
            hint="this is a bug in banger; please report it with the daemon log",
        )
    return out


_STAT_TYPE = re.compile(rb"Inode: \d+\s+Type: (\S+)")


def inode_type(image: Path, path: str) -> str | None:
    """What ``path`` in ``image`` is, as debugfs names it (``directory``, ``regular``,
    ``symlink``...; a final symlink is not followed); None when there is nothing there."""
    m = _STAT_TYPE.match(debugfs_request(image, f"stat {debugfs_quote(path)}"))
    return m[1].decode("ascii", "replace") if m else None


def mkdir_commands(image: Path, dirs: Sequence[str]) -> tuple[list[str], list[str]]:
    """debugfs ``mkdir`` lines (absolute paths, cwd ``/``) for those of ``dirs`` missing in
    ``image``, and the dirs that cannot be had because something else is in the way.

    ``dirs`` lists every parent before its children (``/`` excepted). A failed
    debugfs 1.47 ``mkdir`` (the name taken, or its parent not a directory)
    still allocates the new directory and leaves it orphaned (e2fsck:
    "Unconnected directory inode"), so a ``mkdir`` is only emitted for a name
    that is free inside a real directory: each path is looked up, a file or
    symlink where a directory should be blocks it and all below it, and below
    a missing directory everything is missing too (no lookup).
    """
    present, made = {"/"}, set()
    lines: list[str] = []
    blocked: list[str] = []
    for d in dirs:
        parent = d.rpartition("/")[0] or "/"
        if parent in made:
            kind = None  # missing, as its parent was
        elif parent in present:
            kind = inode_type(image, d)
        else:
            kind = "below a blocked path"
        if kind is None:
            made.add(d)
            lines.append(f"mkdir {debugfs_quote(d)}")
        elif kind == "directory":
            present.add(d)
        else:
            blocked.append(d)
    return lines, blocked


# What replace_file_commands' ``rm`` says when there was nothing to replace.
REPLACE_OK_ERRORS = ("File not found by ext2_lookup",)


def replace_file_commands(src: Path, dest: str) -> list[str]:
    """debugfs lines (cwd ``/``) that replace ``dest`` in the image with host file ``src``,
    owned by root. ``write`` copies ``src``'s permission bits, so the caller sets the mode
    on ``src``: no ``sif mode`` that could retype an inode already at ``dest``."""
    d = debugfs_quote(dest)
    return [
        f"rm {d}",
        f"write {debugfs_quote(os.fspath(src))} {d}",
        f"sif {d} uid 0",
        f"sif {d} gid 0",
    ]


def read_ext4_file(image: Path, path: str) -> bytes:
    """The contents of ``path`` inside ``image`` (empty when there is no such file)."""
    return debugfs_request(image, f"cat {debugfs_quote(path)}")


@dataclass(frozen=True)
class FreeSpace:
    """What a filesystem has left (superblock counts)."""

    block_size: int
    blocks: int
    inodes: int

    @property
    def bytes(self) -> int:
        return self.blocks * self.block_size


def free_space(image: Path) -> FreeSpace:
    """The free blocks and inodes of the filesystem in ``image``, and its block size."""
    out = debugfs_request(image, "stats").decode("utf-8", "replace")
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    try:
        return FreeSpace(block_size=int(fields["Block size"]), blocks=int(fields["Free blocks"]),
                         inodes=int(fields["Free inodes"]))
    except (KeyError, ValueError):
        raise HostToolError(f"debugfs cannot read the free space of {image.name}",
                            hint=f"check the image with: e2fsck -fn {image}") from None
