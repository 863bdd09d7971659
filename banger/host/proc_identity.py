"""Process identity through /proc: is this pid still the VMM we started?

A pid alone is not an identity (pids are reused), so a VMM is named by its
pid, its start time (field 22 of /proc/<pid>/stat, in clock ticks since
boot) and strings its command line must contain (its control socket path);
before a signal, its pidfile must also name it back (``pidfile_names``).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from banger.core.errors import Forbidden
from banger.host.files import open_nofollow
from banger.host.proc import is_exiting, read_stat, start_time

__all__ = ["read_stat", "start_time"]  # kept here too: a VMM's identity is read through this module


def cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid``, or None when it is gone, a zombie, or in the middle of an
    ``execve`` (the kernel shows an empty cmdline for both)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:
        return None
    return [os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0")]


def reap(pid: int) -> None:
    """Collect ``pid`` if it is an exited child of ours; a no-op for anything else."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def is_running(pid: int, started: int, markers: Iterable[str]) -> bool:
    """True when ``pid`` runs, started at ``started`` and its argv contains every marker.
    A process already inside its exit is not running: it is going whatever anyone does,
    and its argv can no longer be read (``wait_until_gone`` still waits for it)."""
    reap(pid)
    stat = read_stat(pid)
    if stat is None or stat[0] in ("Z", "X") or stat[1] != started or is_exiting(pid, started):
        return False
    wanted = tuple(markers)
    if not wanted:  # no cmdline read: it is empty for a moment while the process execs
        return True
    argv = cmdline(pid)
    return argv is not None and all(any(m in arg for arg in argv) for m in wanted)


def _parse_pid(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _pid_in(fd: int) -> int | None:
    """The pid in the file open for reading at ``fd`` (closed here); None unless it is a
    regular file holding a pid."""
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return _parse_pid(f.read(32).decode("ascii", "replace"))


def read_pid_fd(fd: int) -> int | None:
    """The pid in the file behind ``fd`` (``O_PATH`` too: reopened through
    ``/proc/self/fd``, never by name), as ``read_pidfile``."""
    try:
        return _pid_in(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK
                               | os.O_CLOEXEC))
    except OSError:
        return None


def read_pidfile(path: Path) -> int | None:
    """The pid in ``path``, or None when it is missing, unreadable or not a pid, and
    when it is not a regular file: a symlink (never followed) or a FIFO names no one."""
    try:
        return _pid_in(open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK))
    except (OSError, Forbidden):
        return None


def pidfile_names(path: Path, pid: int) -> bool:
    """True when ``path`` is a regular file (not a symlink) holding exactly ``pid``."""
    return read_pidfile(path) == pid


async def wait_until_gone(
    pid: int, started: int, markers: Iterable[str], *, timeout: float
) -> bool:
    """Wait up to ``timeout`` seconds for the process to exit; True when it did.

    Event-driven through a pidfd (readable once the process exits), so no
    polling; a pidfd is opened before the identity is re-checked, which closes
    the window in which the pid could be reused. A process already inside its exit
    is waited for too: it still holds its files (a VMM its TAP) until it is a zombie.
    """
    markers = tuple(markers)

    def still_there() -> bool:  # running, or inside its exit
        return is_running(pid, started, markers) or is_exiting(pid, started)

    if not still_there():
        return True
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        if not still_there():
            return True
        loop = asyncio.get_running_loop()
        exited = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, on_exit)
        try:
            await asyncio.wait_for(exited, timeout)
        except TimeoutError:
            return not still_there()
        finally:
            loop.remove_reader(fd)
        reap(pid)
        return True
    finally:
        os.close(fd)
