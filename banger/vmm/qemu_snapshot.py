"""QEMU warm snapshots: a paused guest's device state saved to a file (its RAM is the
memory-backend-file beside it, see below), and loaded into a VMM started with
``-incoming defer`` (docs/snapshots.md).

Both directions are QMP migration over a file descriptor the daemon opens and
passes with ``getfd`` (QEMU 7.2 has no ``file:`` URI, and an ``exec:`` URI would
hand a path to a shell). The file is opened without following symlinks; the
caller names a private temporary path and renames it once ``save`` returned.

With ``x-ignore-shared`` on both sides, RAM in a shared memory-backend-file (a
template's, ``VMSpec.memory_file``) is not streamed: the file already is that
memory, and a clone maps it copy-on-write. The stream then holds device state only
(~100 KB instead of ~95 MB), as in Kata Containers' VM templating.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from banger.core.errors import HostToolError, SnapshotDamaged, SnapshotUnusable
from banger.host.files import open_nofollow
from banger.vmm.base import open_snapshot_file

SAVE_TIMEOUT = 120.0
LOAD_TIMEOUT = 60.0
_POLL = 0.02
_FD_NAME = "banger-snapshot"
# What QEMU logs (then it exits) when an incoming stream is bad: corrupt, truncated, another
# version's, or a RAM layout other than the clone's.
LOAD_FAILED = "load of migration failed"


class _MigrationFailed(HostToolError):
    """QEMU says the migration failed (``query-migrate``'s status), with its reason."""


async def _pass_fd(qmp: QMPClient, fd: int) -> None:
    qmp.send_fd_scm(fd)
    await qmp.execute("getfd", {"fdname": _FD_NAME})


async def _ignore_shared_ram(qmp: QMPClient) -> None:
    await qmp.execute("migrate-set-capabilities", {
        "capabilities": [{"capability": "x-ignore-shared", "state": True}]})


async def _wait_migration(qmp: QMPClient, timeout: float, what: str) -> dict[str, Any]:
    """Poll ``query-migrate`` until it completed; raise with QEMU's reason when it failed."""
    deadline = time.monotonic() + timeout
    while True:
        info = await qmp.execute("query-migrate")
        assert isinstance(info, dict)
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise _MigrationFailed(f"QEMU could not {what}: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            raise HostToolError(f"QEMU did not {what} within {timeout:.0f} s")
        await asyncio.sleep(_POLL)


async def save(qmp: QMPClient, dest: Path, *, timeout: float = SAVE_TIMEOUT) -> int:
    """Pause the guest and write its state to the new file ``dest``; return its size.

    The guest stays paused (the caller ends the VMM); ``dest`` is fsynced.
    """
    fd = open_nofollow(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        await qmp.execute("stop")
        await _ignore_shared_ram(qmp)
        await _pass_fd(qmp, fd)
        await qmp.execute("migrate", {"uri": f"fd:{_FD_NAME}"})
        await _wait_migration(qmp, timeout, "save the guest's state")
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


async def load(qmp: QMPClient, src: Path, *, timeout: float = LOAD_TIMEOUT) -> None:
    """Load ``src`` into a VMM waiting with ``-incoming defer``; the guest stays paused
    (the template was paused when saved) until ``resume``.

    Raises ``SnapshotDamaged`` when QEMU refuses the stream, ``SnapshotUnusable`` when it
    did not finish in time. A lost QMP connection (QEMU exits on a bad stream) is the
    caller's to judge from QEMU's log (``LOAD_FAILED``).
    """
    fd = open_snapshot_file(src, "state")
    try:
        await _ignore_shared_ram(qmp)
        await _pass_fd(qmp, fd)
        await qmp.execute("migrate-incoming", {"uri": f"fd:{_FD_NAME}"})
        await _wait_migration(qmp, timeout, "load the saved state")
    except _MigrationFailed as exc:
        raise SnapshotDamaged(exc.message) from exc
    except HostToolError as exc:  # the timeout: a loaded host, not a bad file
        raise SnapshotUnusable(exc.message) from exc
    finally:
        os.close(fd)


async def pause(qmp: QMPClient) -> None:
    """Stop a clone's vCPUs (a warm pool member, between its identity and its claim)."""
    await qmp.execute("stop")


async def resume(qmp: QMPClient) -> None:
    """Run a loaded clone (a warm pool keeps it paused until a create claims it)."""
    await qmp.execute("cont")


async def announce_disk_size(qmp: QMPClient, drive: str, size: int) -> None:
    """Resize ``drive`` to its file's size: the guest gets a config change and rereads it."""
    await qmp.execute("block_resize", {"device": drive, "size": size})
