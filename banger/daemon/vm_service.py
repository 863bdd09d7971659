"""The VM verbs: start, stop, restart, kill, delete, set (each an operation under the VM's lock).

Boot lives in ``vm_boot.py``, watching, reconcile and teardown in ``vm_watch.py``,
creation in ``vm_create.py``, the guest (SSH readiness, poweroff) in ``vm_guest.py``;
what they share in ``vm_runtime.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from banger.api.models import SSHTarget, VMInfo
from banger.core.errors import Conflict, InvalidInput
from banger.core.signals import parse_vmm_signal
from banger.core.states import VMState
from banger.core.validate import format_size, parse_size, validate_memory_mib, validate_vcpu
from banger.daemon.operations import OperationContext, Work
from banger.daemon.vm_boot import VMBooter
from banger.daemon.vm_runtime import VMRuntime
from banger.daemon.vm_watch import VMWatcher
from banger.host import disks
from banger.host.probes import memory_available_mib
from banger.store.records import VMRecord

GRACEFUL_STOP_TIMEOUT = 10.0
VMM_STOP_TIMEOUT = 3.0
VerbAct = Callable[[OperationContext, VMRecord], Awaitable[VMRecord]]


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


def refuse_creating(vm: VMRecord) -> None:
    """A VM whose create has not finished is its create's alone: no verb may boot or change it."""
    if vm.state is VMState.CREATING:
        raise Conflict(
            f"VM '{vm.name}' is still being created",
            hint=f"wait for its create to finish: banger vm show {vm.name}",
        )


class VMService:
    def __init__(self, rt: VMRuntime) -> None:
        self.rt = rt
        self.watcher = VMWatcher(rt)
        self.booter = VMBooter(rt, self.watcher)

    def ssh_target(self, vm: VMRecord) -> SSHTarget:
        """Where ``vm``'s sshd is and the files that reach it (sharing its SSH connection)."""
        target = self.rt.guest_target(vm)
        return SSHTarget(
            host=ip_address(target.host), port=target.port, user="root", key=target.key,
            known_hosts=target.known_hosts, control_path=target.control_path,
        )

    def _verb(self, ref: str, act: VerbAct) -> Work:
        """Work that runs ``act`` on the VM under its lock; an unknown ref fails right away."""
        self.rt.store.vms.get(ref)

        async def work(ctx: OperationContext) -> VMInfo:
            async with self.rt.locked(ref) as vm:
                return self.rt.info(await act(ctx, vm))

        return work

    def start(self, ref: str) -> Work:
        return self._verb(ref, self._start)

    def stop(self, ref: str) -> Work:
        return self._verb(ref, self._stop_stage)

    def restart(self, ref: str) -> Work:
        async def restart(ctx: OperationContext, vm: VMRecord) -> VMRecord:
            refuse_creating(vm)
            return await self.booter.boot_or_fail(ctx, await self._stop_stage(ctx, vm))

        return self._verb(ref, restart)

    def kill(self, ref: str, signame: str) -> Work:
        sig = parse_vmm_signal(signame)

        async def kill(ctx: OperationContext, vm: VMRecord) -> VMRecord:
            with ctx.stage("signal", detail=sig.name):
                handle = self.rt.handle(vm)
                if handle is not None:
                    self.rt.backend.kill(handle, sig)
                    if not await self.rt.backend.wait_exit(handle, timeout=5):
                        return vm
                if not vm.state.active:
                    return vm
                why = f"killed with {sig.name}" if handle else "its VMM was already gone"
                return await self.watcher.teardown(vm, why)

        return self._verb(ref, kill)

    def delete(self, ref: str) -> Work:
        async def delete(ctx: OperationContext, vm: VMRecord) -> VMRecord:
            with ctx.stage("delete"):
                await self.watcher.destroy(vm)
            return vm

        return self._verb(ref, delete)

    async def _start(self, ctx: OperationContext, vm: VMRecord) -> VMRecord:
        refuse_creating(vm)
        if vm.state is VMState.RUNNING and self.rt.handle(vm):
            return vm
        if vm.state.active:  # a stale row: the VMM is gone
            vm = await self.watcher.teardown(vm, "its VMM was gone when start was asked")
        return await self.booter.boot_or_fail(ctx, vm)

    async def _stop_stage(self, ctx: OperationContext, vm: VMRecord) -> VMRecord:
        how = f"poweroff over SSH, then {self.rt.backend.traits.guest_stop}, then SIGKILL"
        with ctx.stage("stop", detail=how):
            return await self._stop(vm)

    def stop_idle(self, ref: str, still_idle: Callable[[VMRecord], str | None]) -> Work:
        """Auto-stop: the stop verb, if ``still_idle`` (asked under the VM's lock, where
        no verb can race it) still gives a reason; that reason is the VM's state reason."""

        async def stop(ctx: OperationContext, vm: VMRecord) -> VMRecord:
            why = still_idle(vm) if vm.state is VMState.RUNNING else None
            if why is None:
                return vm
            with ctx.stage("stop", detail=why):
                return await self._stop(vm, asked=why, done=why)

        return self._verb(ref, stop)

    async def _stop(self, vm: VMRecord, *, asked: str = "stop requested",
                    done: str = "stopped on request") -> VMRecord:
        """Guest sync + poweroff over SSH, then the backend's graceful stop, then SIGKILL."""
        if not vm.state.active:
            return vm
        handle = self.rt.handle(vm)
        if handle is None:
            return await self.watcher.teardown(vm, "its VMM was gone when stop was asked")
        if vm.state is VMState.RUNNING:
            vm = self.rt.store.vms.transition(vm, VMState.STOPPING, reason=asked)
        host, port = self.rt.network.ssh_endpoint(vm)
        await self.rt.guest.poweroff(vm, self.rt.files(vm), host, port)
        if not await self.rt.backend.wait_exit(handle, timeout=GRACEFUL_STOP_TIMEOUT):
            await self.rt.backend.shutdown(handle, graceful=True, timeout=VMM_STOP_TIMEOUT)
        return await self.watcher.teardown(vm, done)

    async def set(self, ref: str, vcpu: int | None, memory_mib: int | None,
                  disk: str | None, nat: bool | None = None) -> VMRecord:
        """Change a stopped VM's size or NAT; the disk only grows; the checks of ``create``."""
        if vcpu is not None:
            validate_vcpu(vcpu)
        if memory_mib is not None:
            validate_memory_mib(memory_mib)
        new_disk = parse_size(disk, "disk") if disk is not None else None
        async with self.rt.locked(ref) as vm:
            refuse_creating(vm)
            if vm.state.active:
                raise Conflict(
                    f"VM '{vm.name}' is {vm.state}", hint=f"stop it first: banger vm stop {vm.name}"
                )
            if nat:
                self.rt.network.nat.check_available(vm.net_mode)
            check_host_room(self.rt.paths.state_dir, vcpu=vcpu, memory_mib=memory_mib,
                            disk_bytes=new_disk, disk_in_use=vm.disk_bytes)
            fields: dict[str, Any] = {}
            if vcpu is not None:
                fields["vcpu"] = vcpu
            if memory_mib is not None:
                fields["memory_mib"] = memory_mib
            if nat is not None:
                fields["nat"] = nat
            if new_disk is not None:
                await asyncio.to_thread(disks.grow_work_disk, self.rt.files(vm).work, new_disk)
                fields["disk_bytes"] = new_disk
            return self.rt.store.vms.update(vm.id, **fields) if fields else vm

    async def reconcile(self) -> None:
        """Daemon start: VMs first (they say which TAPs are in use), then the network."""
        await self.watcher.reconcile()
        await self.rt.network.reconcile()

    async def close(self) -> None:
        """Daemon shutdown: stop watching (guests keep running) and drop idle TAPs."""
        await self.watcher.close()
        await self.rt.network.close()
