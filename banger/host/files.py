"""File primitives every store of artifacts needs.

A sparse-aware sha256, atomic writes, JSON records (manifests) read and
written one way, one scratch directory per state dir
(``state_dir/tmp``: staging and extract dirs, lock files; swept at daemon
start, so a killed daemon leaves nothing behind), per-name locks that do not
pile up, and reads of untrusted trees that never leave their root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from banger.core.cancel import pause
from banger.core.errors import Forbidden, InvalidInput, StoreError
from banger.core.validate import first_validation_error, safe_relative_path

M = TypeVar("M", bound=BaseModel)

_CHUNK = 4 << 20
_ZEROS = bytes(_CHUNK)
SCRATCH_DIR = "tmp"
_LOCK_POLL_S = 0.1


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


_WALK_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def walk_nofollow(parts: list[str], dir_fd: int | None = None, *, directory: bool = False) -> int:
    """An ``O_PATH`` fd on ``parts`` below ``dir_fd`` (default ``/``), each component opened
    ``O_NOFOLLOW`` from its parent's fd: a symlink anywhere, a missing component or a
    non-directory in the middle raise ``OSError``. The leaf is a directory when
    ``directory``, never a symlink; the caller closes the fd."""
    fd = os.open("/" if dir_fd is None else ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = os.open(part, _WALK_FLAGS | (os.O_DIRECTORY if directory or not last else 0),
                          dir_fd=fd)
            os.close(fd)
            fd = nxt
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.ELOOP, "a symbolic link", "/".join(parts))
        return fd
    except BaseException:
        os.close(fd)
        raise


def path_parts(path: Path | str) -> list[str]:
    """The components of absolute ``path`` (``/a/b`` -> ``["a", "b"]``)."""
    return [p for p in str(path).split("/") if p]


def open_root_only_dir(path: Path, *, create: bool) -> int:
    """An ``O_RDONLY`` fd on dir ``path`` where every component from ``/`` down is a dir
    (never a symlink) of root's that no group or other may write, so nobody but root can
    rename, replace or plant anything on the way; missing components are made 0755 when
    ``create``. ``Forbidden`` otherwise (``FileNotFoundError`` when missing and not
    ``create``); the caller closes the fd."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in ["", *path_parts(path)]:
            made = False
            if part:
                made = create and _mkdir_at(fd, part)
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    raise
                except OSError:  # a symlink (ELOOP) or a file (ENOTDIR)
                    raise _not_root_only(path, part) from None
                os.close(fd)
                fd = nxt
            if made:
                os.fchmod(fd, 0o755)  # through the fd: others may traverse, never write
            st = os.fstat(fd)
            if st.st_uid != 0 or st.st_mode & 0o022:
                raise _not_root_only(path, part or "/")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _mkdir_at(dir_fd: int, name: str) -> bool:
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)  # 0700 until it is checked and chmodded
    except FileExistsError:
        return False
    return True


def _not_root_only(path: Path, part: str) -> Forbidden:
    return Forbidden(f"refusing {path}: {part!r} on the way is not a dir of root's only root "
                     "writes", hint=f"fix the owner and mode of every dir in {path} "
                                    "(chown root:root, chmod go-w), or pick another path")


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symlink at ``path`` (never writes or reads through one)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise Forbidden(
            f"refusing to open {path}: it is a symbolic link, not banger's file",
            hint=f"something replaced it; look at it (ls -l {path}), remove it, and retry",
        ) from None


def reset_file(path: Path) -> None:
    """Create ``path`` empty (0600) or empty it; refuse a symlink there (its target untouched)."""
    os.close(open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))


def fsync_file(path: Path) -> os.stat_result:
    """Flush ``path`` (not through a symbolic link) to disk; return its stat."""
    fd = open_nofollow(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``path`` so that readers see the old or the new content, never a torn one."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> Path:
    """:func:`atomic_write_text` for bytes; the new file gets ``mode``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_model(path: Path, model: BaseModel) -> Path:
    """Write ``model`` as indented, key-sorted JSON to ``path`` atomically."""
    text = json.dumps(model.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    return atomic_write_text(path, text)


def read_model(path: Path, model: type[M], what: str, *, hint: str) -> M:
    """Read ``path`` as ``model``; one StoreError naming ``what`` and the file when it is
    missing, unreadable or damaged. A symlink there is refused, never followed."""
    try:
        with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as f:
            raw = f.read()
    except FileNotFoundError as exc:
        raise StoreError(f"{what} {path} is missing", hint=hint) from exc
    except OSError as exc:
        raise StoreError(f"{what} {path} is unreadable: {exc.strerror}", hint=hint) from exc
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise StoreError(
            f"{what} {path} is malformed: {first_validation_error(exc)}", hint=hint
        ) from None


def remove_tree(path: Path) -> None:
    """``rm -rf path``, also through directories a flattened image left without write bits."""

    def onerror(func: Callable[..., object], p: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=onerror)


def scratch_root(store_dir: Path) -> Path:
    """The private scratch dir beside ``store_dir`` (``images/``, ``kernels/``): ``../tmp``."""
    return _scratch_in(store_dir.parent)


def _scratch_in(state_dir: Path) -> Path:
    root = state_dir / SCRATCH_DIR
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def make_scratch(store_dir: Path, prefix: str) -> Path:
    """A new private dir under :func:`scratch_root`, on the same filesystem as ``store_dir``."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root(store_dir)))


def make_state_scratch(state_dir: Path, prefix: str) -> Path:
    """A new private dir in ``state_dir/tmp`` (which ``sweep_scratch`` empties)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_scratch_in(state_dir)))


def sweep_scratch(state_dir: Path) -> int:
    """Remove everything a killed process left in ``state_dir/tmp``; return how many.

    Only call it while no other process can be using the dir (the daemon
    holds its instance lock).
    """
    root = state_dir / SCRATCH_DIR
    if not root.is_dir() or root.is_symlink():
        return 0
    leftovers = list(root.iterdir())
    for p in leftovers:
        remove_tree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    return len(leftovers)


def flock_wait(fd: int, mode: int, *, wait_s: float | None = None) -> bool:
    """Take ``flock`` ``mode`` on ``fd``; False when ``wait_s`` ran out first.

    Waits by polling with :func:`~banger.core.cancel.pause`, so a cancelled
    operation stops waiting (``Cancelled``) instead of blocking in the kernel.
    """
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            pause(_LOCK_POLL_S)


@contextlib.contextmanager
def name_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on file ``path``, removed on release so lock files never pile up.

    A waiter that got the lock on a file the previous holder already unlinked
    retries on the new file; waiting polls, so a cancelled operation stops waiting.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    while True:
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
        try:
            flock_wait(fd, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def resolve_inside(root: Path, rel: str, *, where: str) -> Path:
    """``root/rel`` with symlinks resolved, refused unless it stays inside ``root``.

    ``rel`` comes from untrusted data (a package, an image): each component
    is checked first, then symlinks are followed only as far as they stay in ``root``.
    """
    hint = "the package or directory must hold its own files, not links to the host's"
    safe_relative_path(rel, where=where, hint=hint)
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, real]) != real_root:
        raise InvalidInput(f"{where}: {rel!r} resolves outside {root}", hint=hint)
    return Path(real)


def read_inside(root: Path, rel: str, *, where: str) -> bytes:
    """The bytes of regular file ``rel`` inside ``root`` (see :func:`resolve_inside`)."""
    path = resolve_inside(root, rel, where=where)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            raise InvalidInput(f"{where}: {rel!r} is missing from {root}") from exc
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InvalidInput(f"{where}: {rel!r} in {root} is not a regular file")
        return f.read()


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as an owner-only (0600) file, never through a symlink."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def log_tail(path: Path, limit: int = 4096) -> str:
    """The last ``limit`` bytes of a log file, or '' when it cannot be read."""
    try:
        with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode("utf-8", "replace").strip()
    except (OSError, Forbidden):
        return ""
