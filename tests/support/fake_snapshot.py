"""A fake backend that keeps warm snapshots, with a fake guest agent on each VM's channel.

``SnapshotFakeBackend`` is ``FakeBackend`` plus ``SnapshotCapable``: its "state"
is a small file (and ``ram`` a sparse one), and a template or clone gets a real Unix socket at its
``agent_socket``, served by a fake agent speaking the agent's protocol
(docs/snapshots.md). ``transport`` picks the channel: ``chardev`` (QEMU's: the
host connects when it likes, the agent answers) or ``vsock`` (Firecracker's
hybrid vsock: ``CONNECT 52`` is answered ``OK <port>`` only while the guest
runs, nothing is answered while it is paused, and a state load resets every
connection, as Firecracker does). ``agent`` picks how a clone's agent
answers ``identity``: ``ok``, ``error`` (a refusal), ``silent`` (reads the
request and never answers, like a guest hung in the middle of applying it) or
``old`` (an agent from before the warm pool: it never holds).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from banger.api.models import Operation, VMCreateRequest
from banger.core.errors import BangerError, SnapshotDamaged
from banger.core.manifests import ImageManifest
from banger.core.vmspec import VMSpec
from banger.images.manifest import ROOTFS_NAME
from banger.store import ImageRecord
from banger.vmm.base import Handle, SnapshotCapable, StopOutcome
from banger.vmm.channel import Channel
from tests.support.fake_backend import FakeBackend
from tests.support.fake_host_ops import RecordingHostOps
from tests.support.fake_vms import FakeVMs, fake_vms

STATE_BYTES = b"fake guest state\n"
AgentMode = Literal["ok", "error", "silent", "old"]
Transport = Literal["chardev", "vsock"]
VSOCK_PORT = 52


class SnapshotFakeBackend(FakeBackend):
    """``FakeBackend`` that saves and restores (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.agent: AgentMode = "ok"
        self.save_delay = 0.0  # seconds a save takes (a race needs it to take a while)
        self.save_error: BangerError | None = None  # what the next saves raise
        self.restore_error: BangerError | None = None  # what the next restores raise
        self.version = "fake-vmm 1.0"
        self.transport: Transport = "chardev"
        self._agents: dict[str, asyncio.Server] = {}
        self._running: dict[str, asyncio.Event] = {}  # the guest runs (vsock answers)
        self._conns: dict[str, set[asyncio.StreamWriter]] = {}

    def vmm_version(self) -> str:
        return self.version

    async def launch(self, spec: VMSpec) -> Handle:
        handle = await super().launch(spec)
        if spec.snapshot_role == "template" and spec.memory_file is not None:
            with spec.memory_file.open("wb") as ram:  # as QEMU makes it: sparse, the RAM's size
                ram.truncate(spec.memory_mib << 20)
        if spec.snapshot_role is not None:
            self._running[spec.vm_id] = running = asyncio.Event()
            if spec.snapshot_role == "template":
                running.set()  # it boots; a clone waits for its state and a resume
            self._conns[spec.vm_id] = set()
            self._agents[spec.vm_id] = await asyncio.start_unix_server(
                functools.partial(self._serve_agent, spec.vm_id), path=str(spec.agent_socket))
        return handle

    async def agent_channel(self, spec: VMSpec) -> Channel:
        if self.transport == "vsock":
            return Channel.vsock(spec.agent_socket, VSOCK_PORT)
        return await Channel.open(spec.agent_socket)

    async def shutdown(self, handle: Handle, *, graceful: bool, timeout: float) -> StopOutcome:
        agent = self._agents.pop(handle.vm_id, None)
        if agent is not None:
            agent.close()
        for writer in self._conns.pop(handle.vm_id, set()):
            writer.close()
        self._running.pop(handle.vm_id, None)
        return await super().shutdown(handle, graceful=graceful, timeout=timeout)

    async def save_state(self, handle: Handle, dest: Path) -> int:
        self._record("save_state", handle.vm_id)
        await asyncio.sleep(self.save_delay)
        if self.save_error is not None:
            raise self.save_error
        dest.write_bytes(STATE_BYTES)
        return len(STATE_BYTES)

    async def restore_state(self, handle: Handle, src: Path) -> None:
        self._record("restore_state", handle.vm_id)
        if self.restore_error is not None:
            raise self.restore_error
        if src.read_bytes() != STATE_BYTES:  # as QEMU: "load of migration failed"
            raise SnapshotDamaged("the fake VMM refused the saved state")
        if self.transport == "vsock":  # Firecracker resets vsock connections on a load
            for writer in self._conns.get(handle.vm_id, set()):
                writer.close()

    async def resume(self, handle: Handle) -> None:
        self._record("resume", handle.vm_id)
        if (running := self._running.get(handle.vm_id)) is not None:
            running.set()

    async def pause(self, handle: Handle) -> None:
        self._record("pause", handle.vm_id)
        if (running := self._running.get(handle.vm_id)) is not None:
            running.clear()

    async def _accept_vsock(self, vm_id: str, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> bool:
        """Firecracker's side of the handshake: ``OK <port>`` once the guest runs."""
        if await reader.readline() != f"CONNECT {VSOCK_PORT}\n".encode():
            return False
        await self._running[vm_id].wait()
        self._record("agent connect", vm_id)
        self._conns[vm_id].add(writer)
        writer.write(b"OK 1073741824\n")
        await writer.drain()
        return True

    async def announce_work_disk(self, handle: Handle, size: int) -> None:
        self._record("announce_work_disk", handle.vm_id, size)

    async def _serve_agent(self, vm_id: str, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        try:
            if self.transport == "vsock" and not await self._accept_vsock(vm_id, reader, writer):
                return
            while line := await reader.readline():
                if self.transport == "vsock":
                    await self._running[vm_id].wait()  # a paused guest answers nothing
                request = line.decode().split(" ", 1)[0].strip()
                self._record(f"agent {request}", None, line.decode().strip())
                reply = {"ping": "pong", "quiesce": "quiesced"}.get(request)
                if request == "identity":
                    if self.agent == "silent":
                        await reader.read()  # until the host hangs up
                        return
                    ok = self.agent in ("ok", "old")
                    reply = "ok machine-id=0123" if ok else "error RNG reseed"
                    if self.agent == "ok" and "banger.hold=1" in line.decode():
                        reply += " held"
                elif request == "name":
                    reply = "ok" if self.agent == "ok" else "error clock"
                writer.write(f"{reply or 'error unknown request'}\n".encode())
                await writer.drain()
        finally:
            writer.close()


_CONFORMS: SnapshotCapable = SnapshotFakeBackend()

LEAN_ID = "img00000lean"


@contextmanager
def lean_vms(tmp_path: Path, *, kernel_name: str | None = "k", **settings: Any
             ) -> Iterator[tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]]:
    """``fake_vms`` on a ``SnapshotFakeBackend`` with image ``lean`` (lean init: it can have
    snapshots) booting kernel ``kernel_name`` (None: the default kernel, ``k``)."""
    backend = SnapshotFakeBackend()
    with fake_vms(tmp_path, fake=backend, **settings) as vms:
        image_dir = vms.settings.paths.images / LEAN_ID
        image_dir.mkdir(parents=True)
        with open(image_dir / ROOTFS_NAME, "wb") as rootfs:
            rootfs.truncate(1 << 20)
        manifest = ImageManifest(id=LEAN_ID, name="lean", source="test", kernel_name="k")
        image = vms.store.images.add(ImageRecord(LEAN_ID, "lean", "test", image_dir,
                                                 kernel_name=kernel_name, manifest=manifest))
        vms.store.kernels.set_default("k")
        yield vms, backend, image


@contextmanager
def pooled_lean_vms(tmp_path: Path, transport: Transport = "chardev",
                    host_ops: RecordingHostOps | None = None, **settings: Any,
                    ) -> Iterator[tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]]:
    """``lean_vms`` with ``warm_pool = 1`` of a small default shape (1 vCPU, 128 MiB, 8 MiB
    disk), ``lean`` the default image, the channel over ``transport``, TAP networking
    through ``host_ops`` if given, any other ``Settings`` values given; the pool is closed
    at the end."""
    with lean_vms(tmp_path, warm_pool=1, default_vcpu=1, default_memory_mib=128,
                  default_disk="8M", host_ops=host_ops, **settings) as (vms, backend, image):
        backend.transport = transport
        vms.store.images.set_default("lean")
        try:
            yield vms, backend, image
        finally:
            vms.drive(vms.creator.pool.close)


async def until(what: Callable[[], bool], timeout: float = 10) -> None:
    """Return once ``what()`` holds; TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not what():
            await asyncio.sleep(0.01)


async def create_lean(vms: FakeVMs, name: str, **fields: Any) -> Operation:
    """``vm create`` of image ``lean`` in the small shape (1 vCPU, 128 MiB, an 8 MiB disk)
    unless ``fields`` say otherwise; its operation, whatever its end."""
    req = VMCreateRequest(**{"name": name, "image": "lean", "vcpu": 1, "memory_mib": 128,
                             "disk": "8M", **fields})
    _, work = await vms.creator.create(req)
    return await vms.run(work, "vm.create")


async def settle(vms: FakeVMs, timeout: float = 10) -> None:
    """Until no background snapshot build or sweep is queued or running."""
    await until(lambda: not vms.creator.keeper.busy, timeout)


def warm_small(vms: FakeVMs, image: ImageRecord) -> str:
    """``image warm`` of the small shape, and the sweep its lookup queued (the image's
    first); the snapshot's id."""
    snap_id = vms.drive(lambda: vms.creator.snapshots.warm(image, 1, 128))
    vms.drive(lambda: settle(vms))
    return snap_id
