"""Watching VMMs, reconcile at daemon start, and giving back what a VM holds.

A pidfd watcher per running VMM notices a guest that exits on its own (poweroff
inside, a crash, ``kill -9``) and tears the VM down. ``teardown`` releases what a
VM holds while it runs; ``destroy`` removes everything of it, its row last.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil

import structlog

from banger.core.errors import BangerError
from banger.core.states import VMState
from banger.daemon.background import BackgroundTasks
from banger.daemon.vm_runtime import VMRuntime
from banger.host import ssh
from banger.store.records import VMRecord
from banger.vmm.base import Handle

log = structlog.get_logger("banger.daemon.vm_watch")


class VMWatcher:
    def __init__(self, rt: VMRuntime) -> None:
        self.rt = rt
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._tasks = BackgroundTasks()

    def watch(self, vm: VMRecord, handle: Handle) -> None:
        """Notice when the guest's VMM exits on its own."""
        self._unwatch(vm.id)
        self._watchers[vm.id] = self._tasks.spawn(
            self._watch(vm.id, handle), name=f"watch {vm.name}"
        )

    def _unwatch(self, vm_id: str) -> None:
        watcher = self._watchers.pop(vm_id, None)
        if watcher is not None:
            watcher.cancel()

    async def _watch(self, vm_id: str, handle: Handle) -> None:
        while not await self.rt.backend.wait_exit(handle, timeout=3600):
            pass
        async with self.rt.lock(vm_id):
            vm = self.rt.store.vms.find_key(vm_id)
            if vm is not None and vm.state.active and vm.pid == handle.pid:
                log.info("VM exited on its own", vm=vm.name, pid=handle.pid)
                await self.teardown(vm, "its VMM exited on its own (guest poweroff or crash)")
        self._watchers.pop(vm_id, None)

    async def teardown(self, vm: VMRecord, reason: str) -> VMRecord:
        """Give back what an active VM holds and mark it stopped because of ``reason``."""
        await ssh.close_master(ssh.control_path_for(self.rt.files(vm).run_dir))
        await self.rt.network.detach(vm.tap_name, vm)
        with contextlib.suppress(BangerError):
            self.rt.backend.cleanup(self.rt.spec(vm))
        vm = self.rt.store.vms.transition(
            vm, VMState.STOPPED, reason=reason, pid=None, tap_name=None
        )
        self.rt.running_changed()
        return vm

    async def destroy(self, vm: VMRecord) -> None:
        """Kill, release and remove everything of ``vm``, its row last (idempotent). What
        it holds is read from its row now: ``vm`` may be a copy from before it took its
        TAP, address and VMM (a create's undo, registered first)."""
        vm = self.rt.store.vms.find_key(vm.id) or vm
        handle = self.rt.handle(vm)
        if handle is not None:
            await self.rt.backend.shutdown(handle, graceful=False, timeout=0)
        files = self.rt.files(vm)
        await ssh.close_master(ssh.control_path_for(files.run_dir))
        await self.rt.network.detach(vm.tap_name, vm)
        await asyncio.to_thread(shutil.rmtree, files.dir, ignore_errors=True)
        await asyncio.to_thread(shutil.rmtree, files.run_dir, ignore_errors=True)
        self._unwatch(vm.id)
        self.rt.store.vms.delete(vm.id, missing_ok=True)
        self.rt.deleted(vm)

    async def reconcile(self) -> None:
        """Daemon start: adopt VMs whose VMM provably runs; clean up the rest and half-made
        creates."""
        for vm in self.rt.store.vms.list():
            if vm.state is VMState.CREATING:
                log.warning("removing a VM whose create was interrupted", vm=vm.name)
                await self.destroy(vm)
            elif vm.state.active:
                await self._adopt_or_teardown(vm)
        self.rt.running_changed()

    async def _adopt_or_teardown(self, vm: VMRecord) -> None:
        handle = self.rt.handle(vm)
        if handle is None:
            log.info("VM is gone; cleaning up", vm=vm.name)
            await self.teardown(vm, "its VMM was gone at daemon start")
            return
        log.info("adopted running VM", vm=vm.name, pid=handle.pid)
        if vm.state is VMState.RUNNING:
            vm = self.rt.store.vms.update(vm.id, pid=handle.pid)
        else:
            vm = self.rt.store.vms.transition(
                vm, VMState.RUNNING, reason="its VMM runs: adopted at daemon start",
                pid=handle.pid,
            )
        self.watch(vm, handle)

    async def close(self) -> None:
        """Daemon shutdown: stop watching (guests keep running)."""
        self._watchers.clear()
        await self._tasks.aclose()
