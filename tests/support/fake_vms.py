"""The VM services in-process on a fake backend: a real store, real settings, real disks.

``FakeVMs`` wires ``VMService`` and ``VMCreator`` as ``daemon/state.py`` does, but
with a ``FakeBackend`` (no VM), a ``FakeGuest`` (no SSH) and user-mode networking
(no netlink, no root). Verbs run as operations in a real ``OperationRegistry``;
every state change the store makes is recorded in ``transitions``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from banger.api.models import Operation, VMCreateRequest
from banger.config import Settings
from banger.core.states import NetMode, VMState
from banger.daemon.image_service import ImageService
from banger.daemon.kernel_service import KernelService
from banger.daemon.operations import OperationRegistry, Work
from banger.daemon.vm_create import VMCreator
from banger.daemon.vm_network import VMNetwork
from banger.daemon.vm_runtime import VMRuntime
from banger.daemon.vm_service import VMService
from banger.daemon.workspace_service import WorkspaceService
from banger.host import net
from banger.host.privileged import CheckedHostOps
from banger.images.manifest import ROOTFS_NAME
from banger.store import ImageRecord, KernelRecord, Store, VMRecord
from banger.vmm.traits import BackendTraits
from tests.support.fake_backend import Call, FakeBackend, FakeGuest, RecordingNetwork
from tests.support.fake_host_ops import RecordingHostOps

IMAGE_ID = "img000000001"
T = TypeVar("T")


@dataclass(frozen=True)
class Transition:
    vm: str
    frm: VMState
    to: VMState
    reason: str


@dataclass
class FakeVMs:
    settings: Settings
    store: Store
    backend: FakeBackend
    guest: FakeGuest
    network: RecordingNetwork
    transitions: list[Transition] = field(default_factory=list)
    registry: OperationRegistry = field(
        default_factory=lambda: OperationRegistry(ttl_seconds=3600)
    )

    def __post_init__(self) -> None:
        self._runner = asyncio.Runner()
        self._services: list[VMService] = []
        self.service = self.new_service()
        self.workspaces = WorkspaceService(self.service.rt)
        self.creator = VMCreator(self.service, self._images(), self.workspaces)
        original = self.store.vms.transition

        def recording(seen: VMRecord, to: VMState, *, reason: str, **fields: Any) -> VMRecord:
            moved = original(seen, to, reason=reason, **fields)
            self.transitions.append(Transition(seen.name, seen.state, to, reason))
            return moved

        self.store.vms.transition = recording  # type: ignore[method-assign]

    @property
    def calls(self) -> list[Call]:
        return self.backend.calls

    def new_service(self) -> VMService:
        """A VMService as a (re)started daemon builds it, on this store and fake backend."""
        rt = VMRuntime(self.settings, self.store, self.network,  # type: ignore[arg-type]
                       self.backend, self.guest)
        self._services.append(VMService(rt))
        return self._services[-1]

    def drive(self, scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``scenario`` on the services' event loop (one per test, like the daemon's)."""
        return self._runner.run(scenario())

    def close(self) -> None:
        """Stop every service's watchers (as the daemon's shutdown does) and the loop."""

        async def close_all() -> None:
            await self.creator.keeper.aclose()
            for service in self._services:
                await service.watcher.close()

        self._runner.run(close_all())
        self._runner.close()

    def _images(self) -> ImageService:
        paths = self.settings.paths
        kernels = KernelService(self.store, paths.kernels, paths.cache_dir)
        return ImageService(self.store, kernels, paths.images, paths.cache_dir)

    async def run(self, work: Work, kind: str = "test") -> Operation:
        """Run ``work`` as an operation to its end."""
        op = self.registry.begin(kind, work)
        return await self.registry.join(op.id)

    async def create(self, name: str, *, start: bool = True, disk: str = "8M") -> Operation:
        req = VMCreateRequest(name=name, image="img", vcpu=1, memory_mib=128, disk=disk,
                              start=start)
        _, work = await self.creator.create(req)
        return await self.run(work, "vm.create")

    def path(self, name: str) -> list[tuple[VMState, VMState, str]]:
        """The state changes of VM ``name`` so far, in order, with their reasons."""
        return [(t.frm, t.to, t.reason) for t in self.transitions if t.vm == name]

    def vm(self, name: str) -> VMRecord:
        return self.store.vms.get(name)

    def leftovers(self) -> list[Path]:
        """Every VM directory on disk (state and runtime)."""
        paths = self.settings.paths
        return [d for top in (paths.vms, paths.runtime_dir / "vms") if top.is_dir()
                for d in top.iterdir()]

    async def until(self, name: str, state: VMState, timeout: float = 10) -> VMRecord:
        """Wait for VM ``name`` to reach ``state`` (the watcher works in the background)."""
        async with asyncio.timeout(timeout):
            while (vm := self.store.vms.get(name)).state is not state:
                await asyncio.sleep(0.005)
        return vm


@contextmanager
def fake_vms(
    tmp_path: Path, traits: BackendTraits | None = None, *, fake: FakeBackend | None = None,
    host_ops: RecordingHostOps | None = None, **settings_values: Any,
) -> Iterator[FakeVMs]:
    """The VM services on a fake backend (``fake``, else one with QEMU's traits unless
    given), in ``tmp_path``, with any other ``Settings`` values given. User-mode
    networking, or with ``host_ops`` TAP networking whose host operations it records.

    Every fake VMM is killed at the end.
    """
    # A short runtime dir: socket paths must fit sun_path whatever the test's name.
    runtime = Path(tempfile.mkdtemp(prefix="bfake-"))
    settings = Settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
                        runtime_dir=runtime, **settings_values)
    store = Store.open(settings.paths.state_dir / "state.db")
    kernel_dir = settings.paths.kernels / "k"
    store.kernels.add(KernelRecord("k", "6.1", "test", kernel_dir))
    image_dir = settings.paths.images / IMAGE_ID
    image_dir.mkdir(parents=True)
    with open(image_dir / ROOTFS_NAME, "wb") as rootfs:
        rootfs.truncate(1 << 20)
    store.images.add(ImageRecord(IMAGE_ID, "img", "test", image_dir, kernel_name="k"))
    backend = fake or (FakeBackend() if traits is None else FakeBackend.with_traits(traits))
    inner = VMNetwork(store, settings.bridge_name, settings.bridge_cidr,
                      net.owner_alias(os.getuid(), str(settings.paths.state_dir)),
                      frozenset({NetMode.TAP if host_ops else NetMode.USER}),
                      CheckedHostOps(host_ops or RecordingHostOps()))
    vms = FakeVMs(settings, store, backend, FakeGuest(backend),
                  RecordingNetwork(inner, backend.calls))
    try:
        yield vms
    finally:
        vms.close()
        backend.close()
        store.close()
        shutil.rmtree(runtime, ignore_errors=True)
