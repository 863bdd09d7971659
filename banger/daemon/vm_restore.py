"""A clone's start from a warm snapshot: load the saved state, then give the guest its identity.

The VMM was launched as a clone (``-incoming defer``). The control channel is
opened before the state loads, so the agent (blocked in a read in the saved
memory) sees the host connected throughout. Then the clone's own work disk size
is announced, and one ``identity`` request carries hostname, address, MAC, the
wall clock, fresh host entropy and that size; the agent answers ``ok`` once all
of it is applied (docs/snapshots.md). Anything else is a ``GuestError``.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import stat
import time
from pathlib import Path

from banger.core.errors import BangerError, GuestError, SnapshotUnusable
from banger.core.vmspec import VMSpec, clone_identity
from banger.host.files import open_nofollow
from banger.vmm.base import Backend, Handle, SnapshotCapable
from banger.vmm.channel import Channel

STATE, RAM = "state", "ram"
IDENTITY_TIMEOUT = 20.0


def clone_spec(spec: VMSpec, snapshot: Path) -> VMSpec:
    """``spec`` as a clone of ``snapshot``, whose memory file must be the guest's whole RAM.

    Checked before the VMM opens it: it would create a missing file (a clone of zeroes
    that never answers) and follow a symbolic link.
    """
    ram = snapshot / RAM
    try:
        fd = open_nofollow(ram, os.O_RDONLY)
    except (OSError, BangerError) as exc:
        raise SnapshotUnusable(f"cannot open the saved memory {ram.name}: {exc}") from exc
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != spec.memory_mib << 20:
        raise SnapshotUnusable(
            f"the saved memory is {st.st_size} bytes, not the guest's {spec.memory_mib} MiB")
    return dataclasses.replace(spec, snapshot_role="clone", memory_file=ram)


async def restore_clone(backend: Backend, handle: Handle, spec: VMSpec, snapshot: Path) -> None:
    assert isinstance(backend, SnapshotCapable)
    channel = await Channel.open(spec.agent_socket)
    try:
        await backend.restore_state(handle, snapshot / STATE)
        size = spec.work_disk.stat().st_size
        await backend.announce_work_disk(handle, size)
        words = [*clone_identity(spec), f"banger.time={time.time():.6f}",
                 f"banger.seed={secrets.token_hex(32)}", f"banger.work_sectors={size // 512}"]
        reply = await channel.request("identity " + " ".join(words), timeout=IDENTITY_TIMEOUT)
    finally:
        await channel.close()
    if not reply.startswith("ok"):
        raise GuestError(f"the restored guest could not take its identity: {reply[:120]}")
