"""VM lifecycle: start, stop, kill, delete, set, reconcile, and watching for guests that exit.

Creation (reserve -> disks -> boot) lives in ``vm_create.py``; both share the
per-VM locks and the boot sequence here. A VM's mutable facts (state, TAP,
pid) live in its store row; everything else is derived from its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import structlog

from banger.api.models import SSHTarget, VMInfo
from banger.config import Settings
from banger.core.errors import BangerError, Conflict, GuestError, InvalidInput
from banger.core.states import VMState
from banger.core.validate import format_size, parse_size, validate_memory_mib, validate_vcpu
from banger.core.vmspec import Accel, NetSpec, VMSpec
from banger.daemon.background import BackgroundTasks
from banger.daemon.operations import OperationContext, Work
from banger.daemon.vm_layout import VMFiles, build_spec
from banger.daemon.vm_network import VMNetwork
from banger.host import disks, ssh
from banger.host.probes import memory_available_mib
from banger.store.codec import utcnow
from banger.store.db import Store
from banger.store.records import VMRecord
from banger.vmm.base import Backend, Handle

log = structlog.get_logger("banger.daemon.vm_service")

GRACEFUL_STOP_TIMEOUT = 10.0
ACPI_STOP_TIMEOUT = 3.0
SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "ABRT")
ACTIVE = (VMState.STARTING, VMState.RUNNING, VMState.STOPPING)
VerbAct = Callable[[OperationContext, VMRecord], Awaitable[VMRecord]]


def vm_info(vm: VMRecord, network: VMNetwork, image_name: str | None = None) -> VMInfo:
    host, port = (network.ssh_endpoint(vm) if vm.state is VMState.RUNNING else (None, None))
    return VMInfo(
        id=vm.id, name=vm.name, state=vm.state, backend=vm.backend, image_id=vm.image_id,
        image_name=image_name, kernel_name=vm.kernel_name, vcpu=vm.vcpu,
        memory_mib=vm.memory_mib, disk_bytes=vm.disk_bytes, net_mode=vm.net_mode,
        guest_ip=vm.guest_ip, ssh_host=host, ssh_port=port, tap_name=vm.tap_name, pid=vm.pid,
        last_error=vm.last_error, created_at=vm.created_at, started_at=vm.started_at,
    )


def check_host_room(
    state_dir: Path,
    *,
    vcpu: int | None = None,
    memory_mib: int | None = None,
    disk_bytes: int | None = None,
    disk_in_use: int = 0,
) -> None:
    """Refuse sizes this host cannot give (``create`` and ``set`` alike).

    ``disk_in_use`` is what the disk already takes (``set`` grows an existing one).
    """
    cpus = os.cpu_count() or 1
    if vcpu is not None and vcpu > cpus:
        raise InvalidInput(
            f"--vcpu {vcpu} is more than this host's {cpus} CPUs",
            hint=f"use --vcpu {cpus} or fewer",
        )
    available = memory_available_mib()
    if memory_mib is not None and available is not None and memory_mib > available:
        raise InvalidInput(
            f"--memory {memory_mib} MiB is more than the {available} MiB this host has free",
            hint="ask for less memory, or stop other VMs",
        )
    free = shutil.disk_usage(state_dir).free
    if disk_bytes is not None and disk_bytes - disk_in_use > free:
        raise InvalidInput(
            f"--disk {format_size(disk_bytes)} is more than the {free // 2**20} MiB free "
            f"under {state_dir}",
            hint="ask for a smaller --disk, or free some space (banger vm prune)",
        )


class VMService:
    def __init__(
        self, settings: Settings, store: Store, network: VMNetwork, backend: Backend, accel: Accel
    ) -> None:
        self.settings = settings
        self.paths = settings.paths
        self.store = store
        self.network = network
        self.backend = backend
        self.accel = accel
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._tasks = BackgroundTasks()

    # -- helpers ------------------------------------------------------------------------

    def files(self, vm: VMRecord) -> VMFiles:
        return VMFiles.of(self.paths, vm.id)

    def info(self, vm: VMRecord) -> VMInfo:
        image = self.store.images.find_key(vm.image_id) if vm.image_id else None
        return vm_info(vm, self.network, image.name if image else None)

    @contextlib.asynccontextmanager
    async def locked(self, ref: str) -> AsyncIterator[VMRecord]:
        """The VM's row, fresh, while holding its lock (one verb at a time per VM)."""
        vm = self.store.vms.get(ref)
        async with self._locks[vm.id]:
            yield self.store.vms.get_key(vm.id)

    def lock(self, vm_id: str) -> asyncio.Lock:
        """The lock that serialises every verb on one VM."""
        return self._locks[vm_id]

    def spec(self, vm: VMRecord, net: NetSpec | None = None) -> VMSpec:
        assert vm.image_id is not None
        image = self.store.images.get_key(vm.image_id)
        kernel = self.store.kernels.get(vm.kernel_name or image.kernel_name or "")
        return build_spec(vm, self.files(vm), image, kernel, net, self.accel)

    def handle(self, vm: VMRecord) -> Handle | None:
        """The VM's running VMM, if it provably runs."""
        try:
            spec = self.spec(vm)
        except BangerError:
            return None
        return self.backend.adopt(spec.pidfile, spec)

    # -- booting ------------------------------------------------------------------------

    async def boot(
        self, ctx: OperationContext, vm: VMRecord, undo: contextlib.AsyncExitStack
    ) -> VMRecord:
        """Stages network, boot and ssh; every acquired resource registers its undo."""
        files = self.files(vm)
        with ctx.stage("network"):
            net, tap, port = await self.network.attach(vm)
            undo.push_async_callback(self.network.detach, tap)
            vm = self.store.vms.update(
                vm.id, state=VMState.STARTING, last_error=None, tap_name=tap, ssh_port=port
            )
            host, port = self.network.ssh_endpoint(vm)
            ssh.write_known_hosts(files.known_hosts, host, port, files.host_key_pub.read_bytes())
        with ctx.stage("boot"):
            spec = self.spec(vm, net)
            handle = await self.backend.launch(spec)
            undo.push_async_callback(self.backend.shutdown, handle, graceful=False, timeout=0)
            vm = self.store.vms.update(vm.id, pid=handle.pid)
        with ctx.stage("ssh"):
            await self._wait_ssh(vm, host, port, handle)
            vm = self.store.vms.update(vm.id, state=VMState.RUNNING, started_at=utcnow())
        self.watch(vm, handle)
        return vm

    async def _wait_ssh(self, vm: VMRecord, host: str, port: int, handle: Handle) -> None:
        """Until sshd accepts our key; leaves the shared SSH connection up where possible."""
        files = self.files(vm)
        deadline = time.monotonic() + self.settings.ssh_ready_timeout
        control = ssh.control_path_for(files.run_dir)
        if control is None:
            await ssh.wait_for_ssh(host, port, self.paths.ssh_key, known_hosts=files.known_hosts,
                                   deadline=deadline, alive=handle.running)
            return
        await ssh.open_master(host, port, self.paths.ssh_key, files.known_hosts, control,
                              deadline=deadline, log_path=files.dir / "ssh.log",
                              alive=handle.running)

    def ssh_target(self, vm: VMRecord) -> SSHTarget:
        """Where ``vm``'s sshd is and the files that reach it (sharing its SSH connection)."""
        host, port = self.network.ssh_endpoint(vm)
        files = self.files(vm)
        return SSHTarget(
            host=ip_address(host), port=port, user="root", key=self.paths.ssh_key,
            known_hosts=files.known_hosts, control_path=ssh.control_path_for(files.run_dir),
        )

    def watch(self, vm: VMRecord, handle: Handle) -> None:
        """Notice when the guest's VMM exits on its own (poweroff inside, a crash, kill -9)."""
        old = self._watchers.pop(vm.id, None)
        if old is not None:
            old.cancel()
        self._watchers[vm.id] = self._tasks.spawn(
            self._watch(vm.id, handle), name=f"watch VM {vm.name}"
        )

    async def _watch(self, vm_id: str, handle: Handle) -> None:
        while not await self.backend.wait_exit(handle, timeout=3600):
            pass
        async with self._locks[vm_id]:
            vm = self.store.vms.find_key(vm_id)
            if vm is not None and vm.state in ACTIVE and vm.pid == handle.pid:
                log.info("VM exited on its own", vm=vm.name, pid=handle.pid)
                await self._teardown(vm)
        self._watchers.pop(vm_id, None)

    async def _teardown(self, vm: VMRecord) -> VMRecord:
        """Give back what a running VM holds and mark it stopped (idempotent)."""
        await ssh.close_master(ssh.control_path_for(self.files(vm).run_dir))
        await self.network.detach(vm.tap_name)
        with contextlib.suppress(BangerError):
            self.backend.cleanup(self.spec(vm))
        return self.store.vms.update(
            vm.id, state=VMState.STOPPED, pid=None, tap_name=None
        )

    # -- verbs --------------------------------------------------------------------------

    def _verb(self, ref: str, act: VerbAct) -> Work:
        """Work that runs ``act`` on the VM under its lock; an unknown ref fails right away."""
        self.store.vms.get(ref)

        async def work(ctx: OperationContext) -> VMInfo:
            async with self.locked(ref) as vm:
                return self.info(await act(ctx, vm))

        return work

    def start(self, ref: str) -> Work:
        return self._verb(ref, self._start)

    def stop(self, ref: str) -> Work:
        return self._verb(ref, self._stop_stage)

    def restart(self, ref: str) -> Work:
        async def restart(ctx: OperationContext, vm: VMRecord) -> VMRecord:
            return await self._boot_or_stop(ctx, await self._stop_stage(ctx, vm))

        return self._verb(ref, restart)

    def kill(self, ref: str, signame: str) -> Work:
        if signame.upper().removeprefix("SIG") not in SIGNALS:
            raise InvalidInput(
                f"unknown signal {signame!r}", hint=f"use one of: {' '.join(SIGNALS)}"
            )
        sig = signal.Signals[f"SIG{signame.upper().removeprefix('SIG')}"]

        async def kill(ctx: OperationContext, vm: VMRecord) -> VMRecord:
            with ctx.stage("signal", detail=sig.name):
                handle = self.handle(vm)
                if handle is None:
                    return await self._teardown(vm) if vm.state in ACTIVE else vm
                self.backend.kill(handle, sig)
                if await self.backend.wait_exit(handle, timeout=5):
                    vm = await self._teardown(vm)
                return vm

        return self._verb(ref, kill)

    def delete(self, ref: str) -> Work:
        async def delete(ctx: OperationContext, vm: VMRecord) -> VMRecord:
            with ctx.stage("delete"):
                await self.destroy(vm)
            return vm

        return self._verb(ref, delete)

    async def _start(self, ctx: OperationContext, vm: VMRecord) -> VMRecord:
        if vm.state is VMState.RUNNING and self.handle(vm):
            return vm
        if vm.state in ACTIVE:  # a stale row: the VMM is gone
            vm = await self._teardown(vm)
        return await self._boot_or_stop(ctx, vm)

    async def _boot_or_stop(self, ctx: OperationContext, vm: VMRecord) -> VMRecord:
        try:
            async with contextlib.AsyncExitStack() as undo:
                vm = await self.boot(ctx, vm, undo)
                undo.pop_all()
                return vm
        except BaseException as exc:
            message = exc.message if isinstance(exc, BangerError) else repr(exc)
            self.store.vms.update(
                vm.id, state=VMState.STOPPED, pid=None, tap_name=None, last_error=message
            )
            raise

    async def _stop_stage(self, ctx: OperationContext, vm: VMRecord) -> VMRecord:
        with ctx.stage("stop"):
            return await self._stop(vm)

    async def _stop(self, vm: VMRecord) -> VMRecord:
        """Guest sync + poweroff over SSH, then ACPI powerdown, then SIGKILL."""
        if vm.state not in ACTIVE:
            return vm
        handle = self.handle(vm)
        if handle is None:
            return await self._teardown(vm)
        vm = self.store.vms.update(vm.id, state=VMState.STOPPING)
        await self._guest_poweroff(vm)
        if not await self.backend.wait_exit(handle, timeout=GRACEFUL_STOP_TIMEOUT):
            await self.backend.shutdown(handle, graceful=True, timeout=ACPI_STOP_TIMEOUT)
        return await self._teardown(vm)

    async def _guest_poweroff(self, vm: VMRecord) -> None:
        host, port = self.network.ssh_endpoint(vm)
        try:
            await ssh.ssh_exec(
                host, port, self.paths.ssh_key, ["sh", "-c", "sync && poweroff"],
                known_hosts=self.files(vm).known_hosts, timeout=5,
            )
        except GuestError as exc:
            # The connection often drops as the guest goes down: that is success.
            log.debug("guest poweroff over SSH", vm=vm.name, error=exc.message)

    async def destroy(self, vm: VMRecord) -> None:
        """Kill, release and remove everything of ``vm``, its row last (idempotent)."""
        handle = self.handle(vm)
        if handle is not None:
            await self.backend.shutdown(handle, graceful=False, timeout=0)
        files = self.files(vm)
        await ssh.close_master(ssh.control_path_for(files.run_dir))
        await self.network.detach(vm.tap_name)
        await asyncio.to_thread(shutil.rmtree, files.dir, ignore_errors=True)
        await asyncio.to_thread(shutil.rmtree, files.run_dir, ignore_errors=True)
        watcher = self._watchers.pop(vm.id, None)
        if watcher is not None:
            watcher.cancel()
        self.store.vms.delete(vm.id, missing_ok=True)

    async def set(self, ref: str, vcpu: int | None, memory_mib: int | None,
                  disk: str | None) -> VMRecord:
        """Change a stopped VM's size; the disk only grows; the host checks of ``create``."""
        if vcpu is not None:
            validate_vcpu(vcpu)
        if memory_mib is not None:
            validate_memory_mib(memory_mib)
        new_disk = parse_size(disk, "disk") if disk is not None else None
        async with self.locked(ref) as vm:
            if vm.state in ACTIVE:
                raise Conflict(
                    f"VM '{vm.name}' is {vm.state}", hint=f"stop it first: banger vm stop {vm.name}"
                )
            check_host_room(self.paths.state_dir, vcpu=vcpu, memory_mib=memory_mib,
                            disk_bytes=new_disk, disk_in_use=vm.disk_bytes)
            fields: dict[str, Any] = {}
            if vcpu is not None:
                fields["vcpu"] = vcpu
            if memory_mib is not None:
                fields["memory_mib"] = memory_mib
            if new_disk is not None:
                await asyncio.to_thread(disks.grow_work_disk, self.files(vm).work, new_disk)
                fields["disk_bytes"] = new_disk
            return self.store.vms.update(vm.id, **fields) if fields else vm

    # -- daemon start -------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Adopt VMs whose VMM provably runs; clean up the rest, and half-made creates."""
        for vm in self.store.vms.list():
            if vm.spec.get("creating"):
                log.warning("removing a VM whose create was interrupted", vm=vm.name)
                await self.destroy(vm)
                continue
            if vm.state not in ACTIVE:
                continue
            handle = self.handle(vm)
            if handle is not None:
                log.info("adopted running VM", vm=vm.name, pid=handle.pid)
                vm = self.store.vms.update(vm.id, state=VMState.RUNNING, pid=handle.pid)
                self.watch(vm, handle)
            else:
                log.info("VM is gone; cleaning up", vm=vm.name)
                await self._teardown(vm)
        await self.network.reconcile()

    async def close(self) -> None:
        """Daemon shutdown: stop watching (guests keep running) and drop idle TAPs."""
        await self._tasks.aclose()
        await self.network.close()
