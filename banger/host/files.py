"""File primitives every store of artifacts needs: sparse sha256, atomic writes, no-follow opens."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from banger.core.errors import Conflict

_CHUNK = 4 << 20
_ZEROS = bytes(_CHUNK)


def sha256_file(path: Path) -> str:
    """sha256 of a (multi-GiB, sparse) file: holes are hashed as zeros without being read."""
    h = hashlib.sha256()
    zeros = memoryview(_ZEROS)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < size:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                data_at = size
            while pos < data_at:
                n = min(_CHUNK, data_at - pos)
                h.update(zeros[:n])
                pos += n
            if pos >= size:
                break
            hole_at = os.lseek(fd, pos, os.SEEK_HOLE)
            f.seek(pos)
            while pos < hole_at:
                n = f.readinto(view[: min(_CHUNK, hole_at - pos)])
                if not n:
                    return h.hexdigest()  # the file shrank under us
                h.update(view[:n])
                pos += n
    return h.hexdigest()


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symlink at ``path`` (never writes or reads through one)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise Conflict(
            f"refusing to open {path}: it is a symbolic link, not banger's file",
            hint=f"something replaced it; look at it (ls -l {path}), remove it, and retry",
        ) from None


def reset_file(path: Path) -> None:
    """Create ``path`` empty (0600) or empty it; refuse a symlink there (its target untouched)."""
    os.close(open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``path`` so that readers see the old or the new content, never a torn one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
