"""What every VM service shares: settings, store, network, the backend, per-VM locks.

A VM's mutable facts (state, TAP, pid) live in its store row; everything else
(its files, its launch spec, its running VMM) is derived from the row here.
The ``Backend`` is injected (``daemon/state.py`` builds it), and so is the
``Guest`` (default: over SSH), so a test can hand in its own of each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog

from banger.api.models import VMInfo
from banger.config import Settings
from banger.core.errors import BangerError, Unavailable
from banger.core.states import VMState
from banger.core.vmspec import NetSpec, VMSpec
from banger.daemon.background import Listeners
from banger.daemon.vm_guest import Guest, SSHGuest
from banger.daemon.vm_layout import VMFiles, build_spec
from banger.daemon.vm_network import VMNetwork
from banger.host import ssh
from banger.host.files import make_state_scratch
from banger.host.ssh import GuestTarget
from banger.store.db import Store
from banger.store.records import ImageRecord, KernelRecord, VMRecord
from banger.vmm.base import Backend, Handle

log = structlog.get_logger("banger.daemon.vm_runtime")


class VMRuntime:
    def __init__(
        self, settings: Settings, store: Store, network: VMNetwork, backend: Backend,
        guest: Guest | None = None,
    ) -> None:
        self.settings = settings
        self.paths = settings.paths
        self.store = store
        self.network = network
        self.backend = backend
        self.guest: Guest = guest or SSHGuest(settings.paths.ssh_key)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._running_changes = Listeners("a VM started or stopped running")
        self._snapshot_releases = Listeners("a VM let go of its warm snapshot")

    def on_running_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a VM starts or stops running (or is deleted)."""
        self._running_changes.add(listener)

    def on_snapshot_released(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` once a VM's root is no longer backed by a warm snapshot: the VM
        was deleted, or its disks were made again on the image (a restore that failed)."""
        self._snapshot_releases.add(listener)

    def running_changed(self) -> None:
        self._running_changes.notify()

    def snapshot_released(self) -> None:
        self._snapshot_releases.notify()

    def deleted(self, vm: VMRecord) -> None:
        """``vm`` is gone: it stopped running too, and let go of its snapshot if it had one."""
        self.running_changed()
        if vm.snapshot_id is not None:
            self.snapshot_released()

    def scratch(self, prefix: str) -> Path:
        """A new private scratch dir in ``state_dir/tmp`` (what a killed daemon left there is
        swept at the next start); the caller removes it."""
        return make_state_scratch(self.paths.state_dir, prefix)

    def files(self, vm: VMRecord) -> VMFiles:
        return VMFiles.of(self.paths, vm.id, self.backend.traits.root_format)

    def info(self, vm: VMRecord) -> VMInfo:
        """The wire view of ``vm`` (its SSH endpoint only while it runs)."""
        image = self.store.images.find_key(vm.image_id) if vm.image_id else None
        running = vm.state is VMState.RUNNING
        host, port = self.network.ssh_endpoint(vm) if running else (None, None)
        return VMInfo(
            id=vm.id, name=vm.name, state=vm.state, backend=vm.backend, image_id=vm.image_id,
            image_name=image.name if image else None, kernel_name=vm.kernel_name,
            vcpu=vm.vcpu, memory_mib=vm.memory_mib, disk_bytes=vm.disk_bytes,
            net_mode=vm.net_mode, guest_ip=vm.guest_ip, ssh_host=host, ssh_port=port,
            tap_name=vm.tap_name, pid=vm.pid, last_error=vm.last_error,
            state_reason=vm.state_reason, state_changed_at=vm.state_changed_at,
            created_at=vm.created_at, started_at=vm.started_at, workspace=vm.workspace,
            nat=vm.nat, ports=list(vm.published), started_from=vm.started_from,
        )  # fmt: skip

    def guest_target(self, vm: VMRecord) -> GuestTarget:
        """Where the running ``vm``'s sshd is, with the files that reach it."""
        host, port = self.network.ssh_endpoint(vm)
        files = self.files(vm)
        return GuestTarget(host=host, port=port, key=self.paths.ssh_key,
                           known_hosts=files.known_hosts,
                           control_path=ssh.control_path_for(files.run_dir))

    def lock(self, vm_id: str) -> asyncio.Lock:
        """The lock that serialises every verb on one VM."""
        return self._locks[vm_id]

    @contextlib.asynccontextmanager
    async def locked(self, ref: str) -> AsyncIterator[VMRecord]:
        """The VM's row, fresh, while holding its lock (one verb at a time per VM)."""
        vm = self.store.vms.get(ref)
        async with self._locks[vm.id]:
            yield self.store.vms.get_key(vm.id)

    def kernel(self, image: ImageRecord, vm: VMRecord | None = None) -> KernelRecord:
        """The kernel a VM boots: its own, else its image's, else the default one."""
        name = (vm.kernel_name if vm else None) or image.kernel_name
        if name is not None:
            return self.store.kernels.get(name)
        kernel = self.store.kernels.get_default()
        if kernel is None:
            raise Unavailable("no kernel", hint="pull one: banger kernel pull debian-cloud")
        return kernel

    def spec(self, vm: VMRecord, net: NetSpec | None = None) -> VMSpec:
        """The backend's view of ``vm`` for one boot."""
        assert vm.image_id is not None
        image = self.store.images.get_key(vm.image_id)
        backend = self.backend
        kernel = self.kernel(image, vm)
        return build_spec(vm, self.files(vm), image, kernel, net, backend.traits, backend.accel)

    def handle(self, vm: VMRecord) -> Handle | None:
        """The VM's running VMM, if it provably runs."""
        try:
            spec = self.spec(vm)
        except BangerError:
            return None
        return self.backend.adopt(spec.pidfile, spec)
