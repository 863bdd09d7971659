"""A clone's start from a warm snapshot: load the saved state, then give the guest its identity.

The VMM was launched as a clone, waiting for its state. The backend's control
channel (``agent_channel``) is taken before the state loads: a backend whose
channel must be connected then connects it, one whose connections a load resets
connects at the first request, once the clone runs. The state loads paused; then
the clone runs, its own work disk size is announced, and one ``identity`` request
carries hostname, address, MAC, the wall clock, fresh host entropy and that
size; the agent answers ``ok`` once all of it is applied (docs/snapshots.md).
Anything else is a ``GuestError``.

A warm pool member (``vm_pool.py``) takes its identity when it is filled, held:
its agent stays, the guest is paused again, and a claim runs it and gives it
only its name and the wall clock (``give_name``).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import stat
import time
from pathlib import Path

from banger.core.errors import GuestError, SnapshotDamaged
from banger.core.vmspec import VMSpec, clone_identity, hostname_arg
from banger.vmm.base import Backend, Handle, SnapshotCapable, open_snapshot_file
from banger.vmm.channel import Channel

STATE, RAM = "state", "ram"
IDENTITY_TIMEOUT = 20.0


def clone_spec(spec: VMSpec, snapshot: Path) -> VMSpec:
    """``spec`` as a clone of ``snapshot``, whose memory file must be the guest's whole RAM.

    Checked before the VMM opens it: it would create a missing file (a clone of zeroes
    that never answers) and follow a symbolic link.
    """
    ram = snapshot / RAM
    fd = open_snapshot_file(ram, "memory")
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != spec.memory_mib << 20:
        raise SnapshotDamaged(
            f"the saved memory is {st.st_size} bytes, not the guest's {spec.memory_mib} MiB")
    return dataclasses.replace(spec, snapshot_role="clone", memory_file=ram)


async def restore_clone(backend: Backend, handle: Handle, spec: VMSpec, snapshot: Path) -> None:
    channel = await load_clone(backend, handle, spec, snapshot)
    try:
        await give_identity(backend, handle, spec, channel)
    finally:
        await channel.close()


async def load_clone(backend: Backend, handle: Handle, spec: VMSpec, snapshot: Path) -> Channel:
    """Load the saved state into the clone's VMM (paused); return its control channel."""
    assert isinstance(backend, SnapshotCapable)
    channel = await backend.agent_channel(spec)
    try:
        await backend.restore_state(handle, snapshot / STATE)
    except BaseException:
        await channel.close()
        raise
    return channel


async def give_identity(backend: Backend, handle: Handle, spec: VMSpec, channel: Channel, *,
                        hold: bool = False) -> None:
    """Run the loaded clone and have its agent apply ``spec``'s identity. With ``hold`` (a warm
    pool member) the agent stays for one ``give_name``."""
    assert isinstance(backend, SnapshotCapable)
    await backend.resume(handle)
    size = spec.work_disk.stat().st_size
    await backend.announce_work_disk(handle, size)
    words = [*clone_identity(spec), f"banger.time={time.time():.6f}",
             f"banger.seed={secrets.token_hex(32)}", f"banger.work_sectors={size // 512}",
             *(["banger.hold=1"] if hold else [])]
    reply = await channel.request("identity " + " ".join(words), timeout=IDENTITY_TIMEOUT)
    if not reply.startswith("ok"):
        raise GuestError(f"the restored guest could not take its identity: {reply[:120]}")
    if hold and not reply.endswith(" held"):
        raise GuestError("the image's guest agent cannot hold a warm pool VM (it predates it)",
                         hint="rebuild or re-import the image, then banger image warm")


async def give_name(backend: Backend, handle: Handle, name: str, channel: Channel) -> None:
    """Run a held clone (paused since ``give_identity``) and give it the hostname ``name``
    and the wall clock (it stood still while paused)."""
    assert isinstance(backend, SnapshotCapable)
    await backend.resume(handle)
    line = f"name {hostname_arg(name)} banger.time={time.time():.6f}"
    reply = await channel.request(line, timeout=IDENTITY_TIMEOUT)
    if reply != "ok":
        raise GuestError(f"the warm pool's guest could not take its name: {reply[:120]}")
