"""Boot: a VM's row -> a running VMM whose sshd accepts our key (stages network, boot, ssh)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from banger.core.cancel import to_thread_joined
from banger.core.errors import BangerError, GuestError
from banger.core.file_sync import GUEST_HOME
from banger.core.file_sync_script import sync_argv
from banger.core.guest_sh import NO_TAR, lacks_tar
from banger.core.states import VMState
from banger.daemon.operations import OperationContext
from banger.daemon.vm_restore import clone_spec, restore_clone
from banger.daemon.vm_runtime import VMRuntime
from banger.daemon.vm_watch import VMWatcher
from banger.host import ssh, work_files
from banger.host.files import log_tail, remove_tree
from banger.host.ssh import GuestCommandError
from banger.store.codec import utcnow
from banger.store.records import VMRecord
from banger.vmm.base import Handle

SYNC_TIMEOUT = 600.0
CONSOLE_TAIL = 2000  # bytes, and at most CONSOLE_LINES lines, of the console of a guest
CONSOLE_LINES = 20  # that never became ready, shown in the error


def with_console(exc: GuestError, console: Path) -> GuestError:
    """``exc`` (its type and hint kept) with the guest console's last lines added to its
    hint, read now: a failed create removes the VM, its console log with it, before anyone
    could run ``banger vm logs``."""
    tail = log_tail(console, CONSOLE_TAIL)
    if not tail:
        return exc
    lines = "\n".join(tail.splitlines()[-CONSOLE_LINES:])
    shown = f"the guest's console, last lines:\n{lines}"
    return type(exc)(exc.message, hint=f"{exc.hint}\n{shown}" if exc.hint else shown)


def _synced(plan: work_files.SyncPlan) -> str:
    """The file_sync stage's detail line."""
    return (f"{len(plan.files)} files copied, {len(plan.skipped)} skipped"
            + (" (see the daemon log)" if plan.skipped else ""))


def _report_limit(plan: work_files.SyncPlan) -> int:
    """The most an honest guest's report of what it left out can be: each of the plan's
    directories and files once, as ``file PATH``."""
    return sum(len(os.fsencode(p)) + 6 for p in (*plan.dirs, *plan.files)) + 1


def _sync_failure(vm: VMRecord, exc: GuestCommandError) -> GuestError:
    if exc.status == NO_TAR:
        return lacks_tar(vm.name)
    return GuestError(f"VM '{vm.name}': file_sync failed in the guest ({exc.status}): "
                      f"{exc.said[:200]}", hint=f"see the guest: banger vm ssh {vm.name}")


class VMBooter:
    def __init__(self, rt: VMRuntime, watcher: VMWatcher) -> None:
        self.rt = rt
        self.watcher = watcher

    async def boot(
        self, ctx: OperationContext, vm: VMRecord, undo: contextlib.AsyncExitStack, *,
        restore: Path | None = None, started_from: str = "cold (a start boots its own disks)",
    ) -> VMRecord:
        """Stages network, boot (or restore) and ssh; every acquired resource registers its undo.

        A VM being created boots in state ``creating`` (reconcile removes it if the
        daemon dies meanwhile); any other VM goes through ``starting``. With
        ``restore`` (a warm snapshot's directory) the VMM loads its saved state and
        the guest agent applies this VM's identity before SSH is tried.
        """
        rt = self.rt
        files = rt.files(vm)
        if vm.state is not VMState.CREATING:
            vm = rt.store.vms.transition(
                vm, VMState.STARTING, reason="start requested", last_error=None
            )
        if rt.settings.file_sync:
            with ctx.stage("file_sync"):  # the VMM has not opened the work disk yet
                plan = await to_thread_joined(
                    work_files.sync_files, files.work, rt.settings.file_sync, Path.home()
                )
                ctx.detail(_synced(plan))
        with ctx.stage("network"):
            net, tap, port = await rt.network.attach(vm)
            undo.push_async_callback(rt.network.detach, tap, vm)
            vm = rt.store.vms.update(vm.id, tap_name=tap, ssh_port=port)
            host, port = rt.network.ssh_endpoint(vm)
            ssh.write_known_hosts(files.known_hosts, host, port, files.host_key_pub.read_bytes())
        with ctx.stage("boot" if restore is None else "restore"):
            spec = rt.spec(vm, net)
            if restore is not None:
                spec = clone_spec(spec, restore)
            handle = await rt.backend.launch(spec)
            undo.push_async_callback(rt.backend.shutdown, handle, graceful=False, timeout=0)
            vm = rt.store.vms.update(vm.id, pid=handle.pid)
            if restore is not None:
                await restore_clone(rt.backend, handle, spec, restore)
                started_from = f"snapshot {restore.name}"
        return await self.become_ready(ctx, vm, handle, started_from)

    async def sync_running(self, ctx: OperationContext, vm: VMRecord) -> None:
        """Stage file_sync into a running guest (a claimed warm pool member): the plan a
        start writes with debugfs, as one tar the guest's fixed script puts in ``/root``.
        A failure fails the stage (the caller's undo removes the VM)."""
        rt = self.rt
        if not rt.settings.file_sync:
            return
        scratch = rt.scratch("file-sync-")
        try:
            with ctx.stage("file_sync", detail="over SSH"):
                payload = scratch / "payload.tar"
                plan = await to_thread_joined(
                    work_files.pack_file_sync, rt.settings.file_sync, Path.home(),
                    scratch, payload)
                if plan.dirs or plan.files:
                    try:
                        report = await rt.guest.read(
                            rt.guest_target(vm), sync_argv(f"{GUEST_HOME}/"), stdin=payload,
                            limit=_report_limit(plan), timeout=SYNC_TIMEOUT)
                    except GuestCommandError as exc:
                        raise _sync_failure(vm, exc) from None
                    await to_thread_joined(work_files.apply_guest_report, plan, report)
                ctx.detail(_synced(plan))
        finally:
            await to_thread_joined(remove_tree, scratch)

    async def become_ready(self, ctx: OperationContext, vm: VMRecord, handle: Handle,
                           started_from: str, *, connected: bool = False) -> VMRecord:
        """Stage ssh: wait until the guest's sshd accepts our key, then the VM runs.
        ``connected``: sshd accepted it before (a warm pool member, over a connection held
        since); that connection, still up, is the proof."""
        rt = self.rt
        host, port = rt.network.ssh_endpoint(vm)
        with ctx.stage("ssh"):
            files = rt.files(vm)
            if connected and await rt.guest.still_connected(vm, files):
                ctx.detail("over the connection made when the warm pool filled")
            else:
                deadline = time.monotonic() + rt.settings.ssh_ready_timeout
                try:
                    await rt.guest.wait_ready(vm, files, host, port, deadline=deadline,
                                              alive=handle.running)
                except GuestError as exc:
                    raise with_console(exc, files.console_log) from exc
            vm = rt.store.vms.transition(
                vm, VMState.RUNNING, reason="booted, sshd accepts our key", started_at=utcnow(),
                started_from=started_from,
            )
        self.watcher.watch(vm, handle)
        rt.running_changed()
        return vm

    async def boot_or_fail(self, ctx: OperationContext, vm: VMRecord) -> VMRecord:
        """Boot; a failed boot is undone and leaves the VM in ``error``, saying why."""
        try:
            async with contextlib.AsyncExitStack() as undo:
                vm = await self.boot(ctx, vm, undo)
                undo.pop_all()
                return vm
        except BaseException as exc:
            message = exc.message if isinstance(exc, BangerError) else repr(exc)
            current = self.rt.store.vms.find_key(vm.id)
            if current is not None and current.state is VMState.STARTING:
                self.rt.store.vms.transition(
                    current, VMState.ERROR, reason=f"start failed: {message}",
                    pid=None, tap_name=None, last_error=message,
                )
            raise
