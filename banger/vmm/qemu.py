"""The QEMU backend: a ``microvm`` machine with virtio-mmio devices, driven over QMP.

``qemu_argv`` is a pure builder (golden tests in tests/unit/test_qemu_argv.py);
``QemuBackend`` is the one place that runs it.

Detaching: QEMU starts with ``-daemonize``. Its first process exits only once
initialisation finished (disks opened, TAP attached, QMP listening) with a
status that says whether it worked, so ``launch`` fails fast with QEMU's own
error and needs no polling. The VMM itself is then a grandchild re-parented to
init in its own session: a daemon crash, restart or SIGKILL never reaches it,
and the daemon never has to reap it. ``-D vmm.log`` keeps QEMU's stderr
pointed at ``vmm.log`` after it daemonizes (otherwise it goes to /dev/null),
so late errors and "terminating on signal" lines are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import ClassVar

from qemu.qmp import QMPClient, QMPError

from banger.core.errors import HostToolError, SnapshotDamaged, SnapshotUnusable
from banger.core.vmspec import (
    AGENT_SOCKET,
    PIDFILE,
    QMP_SOCKET,
    Accel,
    TapNet,
    UserNet,
    VMSpec,
    kernel_cmdline,
)
from banger.host.files import log_tail
from banger.host.privileged import HostOps, host_ops_for
from banger.host.run import arun_to_log, require_tool
from banger.vmm import qemu_snapshot
from banger.vmm.base import Handle, StopOutcome, VmmProcess, adopt_vmm
from banger.vmm.channel import Channel
from banger.vmm.traits import TRAITS, BackendTraits

log = logging.getLogger("banger.vmm.qemu")

QEMU_BINARY = "qemu-system-x86_64"
# Under TCG the kernel hangs calibrating its clock without the legacy PIT, PIC
# and RTC; under KVM they are emulated in-kernel and cost nothing measurable.
MACHINE = "microvm,pit=on,pic=on,rtc=on"
# Fixed virtio-mmio slots. QEMU's microvm has 24 transports and Linux probes them
# from the highest down, so the root disk takes the top slot (/dev/vda) and the
# work disk the next (/dev/vdb); tests/vm checks this in a real guest.
ROOT_BUS, WORK_BUS, NET_BUS = "virtio-mmio-bus.23", "virtio-mmio-bus.22", "virtio-mmio-bus.21"
CHANNEL_BUS = "virtio-mmio-bus.20"
AGENT_PORT = "banger.agent"  # the virtio-serial port's name, which the guest agent looks for
LAUNCH_TIMEOUT = 30.0
QMP_TIMEOUT = 5.0


def opt(value: str | os.PathLike[str]) -> str:
    """Escape a value for a QEMU ``key=value,...`` option (a comma is written twice)."""
    return os.fspath(value).replace(",", ",,")


def _netdev(spec: VMSpec) -> list[str]:
    net = spec.net
    if net is None:
        return []
    if isinstance(net, TapNet):
        backend = f"tap,id=net0,ifname={opt(net.tap_name)},script=no,downscript=no"
    else:
        assert isinstance(net, UserNet)
        backend = f"user,id=net0,hostfwd=tcp:127.0.0.1:{net.ssh_host_port}-:22" + "".join(
            f",hostfwd={p.proto}:{p.host_ip}:{p.host_port}-:{p.guest_port}" for p in net.forwards)
    return [
        "-netdev", backend,
        "-device", f"virtio-net-device,netdev=net0,mac={net.mac},bus={NET_BUS}",
    ]  # fmt: skip


def _memory_file(spec: VMSpec) -> list[str]:
    """Guest RAM in a file: shared by a template (the file is its memory), private to a clone.

    No device that discards guest RAM (virtio-balloon, virtio-mem, free page reporting) may
    be given to a clone: QEMU 7.2 discards with fallocate(PUNCH_HOLE) even on a MAP_PRIVATE
    file, so one clone's balloon would zero the snapshot's memory under all the others
    (tests/unit/test_qemu_argv.py pins a clone's devices).
    """
    if spec.memory_file is None:
        return []
    share = "on" if spec.snapshot_role == "template" else "off"
    return ["-object", f"memory-backend-file,id=ram,size={spec.memory_mib}M,"
            f"mem-path={opt(spec.memory_file)},share={share}"]


def _channel(spec: VMSpec) -> list[str]:
    """Snapshot templates and clones: the control channel, and for a clone a deferred restore."""
    if spec.snapshot_role is None:
        return []
    argv = [
        "-device", f"virtio-serial-device,bus={CHANNEL_BUS}",
        "-chardev", f"socket,id=agent,path={opt(spec.agent_socket)},server=on,wait=off",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
    ]  # fmt: skip
    if spec.snapshot_role == "clone":
        argv += ["-incoming", "defer"]  # the state comes over QMP (QemuBackend.restore_state)
    return argv


def qemu_argv(spec: VMSpec, *, qemu_binary: str = QEMU_BINARY) -> list[str]:
    """The full QEMU command line for ``spec`` (pure: no I/O)."""
    machine = MACHINE if spec.memory_file is None else f"{MACHINE},memory-backend=ram"
    argv = [qemu_binary, "-name", f"guest={opt(spec.name)}", "-M", machine, "-accel", spec.accel]
    if spec.accel == "kvm":
        argv += ["-cpu", "host"]
    else:
        # RDRAND seeds the guest's RNG at once; without it sshd waits ~4 s for entropy.
        argv += ["-cpu", "qemu64,+rdrand"]
    argv += [
        "-smp", str(spec.vcpu),
        "-m", f"{spec.memory_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none",
        # A guest reboot ends the VMM, like Firecracker; restart is the daemon's job.
        "-no-reboot",
        "-kernel", os.fspath(spec.kernel),
    ]  # fmt: skip
    if spec.initrd is not None:
        argv += ["-initrd", os.fspath(spec.initrd)]
    argv += ["-append", kernel_cmdline(spec)]
    argv += [
        "-drive", f"id=root,if=none,file={opt(spec.root.path)},format={spec.root.format},"
        "discard=unmap",
        "-device", f"virtio-blk-device,drive=root,bus={ROOT_BUS}",
        "-drive", f"id=work,if=none,file={opt(spec.work_disk)},format=raw,discard=unmap",
        "-device", f"virtio-blk-device,drive=work,bus={WORK_BUS}",
    ]  # fmt: skip
    argv += _memory_file(spec)
    argv += _netdev(spec)
    argv += _channel(spec)
    argv += [
        "-chardev", f"file,id=console,path={opt(spec.console_log)}",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=qmp,path={opt(spec.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-pidfile", os.fspath(spec.pidfile),
        "-daemonize",
        "-D", os.fspath(spec.vmm_log),
    ]  # fmt: skip
    return argv


def ownership_markers(spec: VMSpec) -> tuple[str, ...]:
    """Argv fragments that prove a QEMU process is this VM's (its QMP socket and pidfile)."""
    return (f"path={opt(spec.qmp_socket)},", os.fspath(spec.pidfile))


class QemuBackend(VmmProcess):
    """``vmm.Backend`` for QEMU (see the module docstring for how it detaches)."""

    name: ClassVar[str] = "qemu"
    vmm_label: ClassVar[str] = "QEMU"
    traits: ClassVar[BackendTraits] = TRAITS["qemu"]
    runtime_files: ClassVar[tuple[str, ...]] = (QMP_SOCKET, PIDFILE, AGENT_SOCKET)

    def __init__(
        self,
        qemu_binary: str | None = None,
        *,
        accel: Accel = "tcg",
        launch_timeout: float = LAUNCH_TIMEOUT,
        host_ops: HostOps | None = None,
    ):
        self._binary = qemu_binary
        self.accel = accel
        self.launch_timeout = launch_timeout
        self.host_ops = host_ops if host_ops is not None else host_ops_for()

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = require_tool(QEMU_BINARY, "qemu-system-x86")
        return self._binary

    async def launch(self, spec: VMSpec) -> Handle:
        """Start QEMU daemonized; return once it initialised, or raise with its log tail."""
        self._prepare_launch(spec)
        argv = qemu_argv(spec, qemu_binary=self.binary)
        try:
            status = await arun_to_log(argv, log_path=spec.vmm_log, timeout=self.launch_timeout,
                                       daemonizes=True)
        except asyncio.CancelledError:  # e.g. daemon shutdown cancels a background build
            await asyncio.shield(self._end_cancelled(spec))
            raise
        if status != 0:
            raise self._launch_failed(spec, f"exit status {status}")
        handle = self.adopt(spec.pidfile, spec)
        if handle is None:
            raise self._launch_failed(spec, "it exited right after starting")
        log.debug("launched VM %s: pid %d", spec.vm_id, handle.pid)
        return handle

    async def _end_cancelled(self, spec: VMSpec) -> None:
        """A launch cancelled mid-way (``arun_to_log`` waited for QEMU's first process):
        kill the VMM it may have daemonized, which nothing else would ever find."""
        handle = self.adopt(spec.pidfile, spec)
        if handle is not None:
            log.warning("killing the VMM of VM %s: its launch was cancelled", spec.vm_id)
            await self.shutdown(handle, graceful=False, timeout=0)
        self.cleanup(spec)

    @contextlib.asynccontextmanager
    async def _qmp(self, handle: Handle) -> AsyncIterator[QMPClient]:
        client = QMPClient(f"banger-{handle.vm_id}")
        async with asyncio.timeout(QMP_TIMEOUT):
            await client.connect(os.fspath(handle.control_socket))
        try:
            yield client
        finally:
            await client.disconnect()

    async def _powerdown(self, handle: Handle) -> None:
        try:
            async with self._qmp(handle) as qmp:
                await qmp.execute("system_powerdown")
        except QMPError as exc:
            raise HostToolError(f"system_powerdown failed: {exc}") from exc

    async def shutdown(
        self, handle: Handle, *, graceful: bool = True, timeout: float = 10.0
    ) -> StopOutcome:
        """ACPI powerdown (when ``graceful``) bounded by ``timeout``, then SIGKILL."""
        return await self._stop(handle, functools.partial(self._powerdown, handle)
                                if graceful else None, timeout)

    async def agent_channel(self, spec: VMSpec) -> Channel:
        """Connected now: a clone's chardev must be before its state loads (the agent in the
        saved memory is blocked in a read on the port)."""
        return await Channel.open(spec.agent_socket)

    async def save_state(self, handle: Handle, dest: Path) -> int:
        """Pause the guest and save its device state to the new file ``dest`` (its RAM is
        the template's shared memory file, flushed by the caller)."""
        async with self._qmp(handle) as qmp:
            return await qemu_snapshot.save(qmp, dest)

    async def restore_state(self, handle: Handle, src: Path) -> None:
        """Load ``src`` into a VMM launched as a clone (``-incoming defer``); it stays paused."""
        try:
            async with self._qmp(handle) as qmp:
                await qemu_snapshot.load(qmp, src)
        except (QMPError, OSError, EOFError) as exc:
            # QEMU exits on a bad stream and its log says so; without that line the
            # connection failed for another reason (a timeout, QEMU killed): the files may
            # be fine.
            tail = log_tail(handle.log_path)
            refused = qemu_snapshot.LOAD_FAILED in tail
            last = tail.splitlines()[-1] if tail else repr(exc)
            raise (SnapshotDamaged if refused else SnapshotUnusable)(
                f"QEMU could not load the saved state: {last}") from exc

    async def resume(self, handle: Handle) -> None:
        """Run a clone whose state is loaded (or that ``pause`` stopped)."""
        await self._run_state(handle, qemu_snapshot.resume, "run")

    async def pause(self, handle: Handle) -> None:
        """Stop a running clone's vCPUs."""
        await self._run_state(handle, qemu_snapshot.pause, "pause")

    async def _run_state(self, handle: Handle, change: Callable[[QMPClient], Awaitable[None]],
                         what: str) -> None:
        try:
            async with self._qmp(handle) as qmp:
                await change(qmp)
        except (QMPError, OSError, EOFError, TimeoutError) as exc:
            raise HostToolError(f"QEMU could not {what} the restored guest: {exc!r}") from exc

    async def announce_work_disk(self, handle: Handle, size: int) -> None:
        """Tell a restored guest its work disk's size (its own disk, not the template's)."""
        async with self._qmp(handle) as qmp:
            await qemu_snapshot.announce_disk_size(qmp, "work", size)

    def adopt(self, pidfile: Path, spec: VMSpec) -> Handle | None:
        """A handle on the QEMU in ``pidfile`` if it runs and its argv names ``spec``'s files."""
        return adopt_vmm(self.name, pidfile, spec, ownership_markers(spec), spec.qmp_socket)
