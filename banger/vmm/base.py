"""The VMM backend protocol (DESIGN.md s.5) and what every backend shares.

A backend turns a ``VMSpec`` into a running VMM process and back. It knows
nothing about the store, TAPs or SSH: the daemon's services compose those.
What it is (overlay format, kernel forms, network kinds...) is its ``traits``
(``vmm/traits.py``); ``vmm/factory.py:backend_for`` picks one for the host.
``launch`` returns once the VMM initialised; "the guest's sshd accepts our
key" is ``host/ssh.wait_for_ssh``.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from banger.core.errors import (
    BangerError,
    Conflict,
    HostToolError,
    SnapshotDamaged,
    SnapshotUnusable,
)
from banger.core.vmspec import Accel, VMSpec
from banger.host import proc_identity as proc
from banger.host.files import log_tail, open_nofollow, reset_file
from banger.host.privileged import HostOps
from banger.host.probes import have_usable_kvm
from banger.host.run import run
from banger.vmm.channel import Channel
from banger.vmm.traits import BackendTraits


@dataclass(frozen=True)
class Handle:
    """A running VMM, named so that a reused pid is never mistaken for it."""

    backend: str
    vm_id: str
    pid: int
    start_time: int  # clock ticks since boot, /proc/<pid>/stat field 22
    control_socket: Path  # QMP (qemu) or API (firecracker) socket
    pidfile: Path
    log_path: Path  # the VMM's own log (its stderr), for error messages
    # Strings the VMM's argv must contain for it to count as this VM's
    # (its control socket path, its pidfile): "provably ours".
    markers: tuple[str, ...]

    def running(self) -> bool:
        """True while this exact process (pid, start time, argv) is alive."""
        return proc.is_running(self.pid, self.start_time, self.markers)


class StopOutcome(StrEnum):
    """How ``shutdown`` ended the VMM."""

    POWERDOWN = "powerdown"  # the guest powered off after an ACPI request
    KILLED = "killed"  # it had to be SIGKILLed
    GONE = "gone"  # it was not running


@runtime_checkable
class Backend(Protocol):
    """What the daemon needs from a VMM. Teardown methods are idempotent."""

    name: ClassVar[str]
    traits: ClassVar[BackendTraits]
    accel: Accel  # how guests run on this host (the factory decides: vmm/factory.py)

    async def launch(self, spec: VMSpec) -> Handle:
        """Start the VMM detached from the daemon; raise HostToolError with its log tail."""
        ...

    async def shutdown(self, handle: Handle, *, graceful: bool, timeout: float) -> StopOutcome:
        """Stop the VMM: ACPI powerdown first when ``graceful``, then SIGKILL."""
        ...

    def kill(self, handle: Handle, sig: signal.Signals = signal.SIGKILL) -> bool:
        """Send ``sig`` if the process is still this VM's; True when it was sent."""
        ...

    async def wait_exit(self, handle: Handle, *, timeout: float) -> bool:
        """Wait for the VMM to exit; True when it did within ``timeout``."""
        ...

    def adopt(self, pidfile: Path, spec: VMSpec) -> Handle | None:
        """A handle on the VMM in ``pidfile`` when it is alive and provably ``spec``'s."""
        ...

    def cleanup(self, spec: VMSpec) -> None:
        """Remove the runtime files (socket, pidfile) of a VMM that is gone."""
        ...


@runtime_checkable
class SnapshotCapable(Protocol):
    """A backend whose ``traits.can_snapshot``: warm snapshots (docs/snapshots.md)."""

    def vmm_version(self) -> str:
        """The VMM's version: a saved state loads only into the same one."""
        ...

    async def agent_channel(self, spec: VMSpec) -> Channel:
        """The control channel to ``spec``'s guest agent (a template, or a clone about to
        load its state): QEMU's is connected now (its chardev must be before a state loads);
        Firecracker's vsock connects at the first request, once the guest runs (a snapshot
        load resets vsock connections). A pause keeps either."""
        ...

    async def save_state(self, handle: Handle, dest: Path) -> int:
        """Pause the guest and save its device state to the new file ``dest``; return its
        bytes. The guest's RAM is the template's ``VMSpec.memory_file`` (QEMU: mapped from
        boot; Firecracker: written now), flushed and counted by the caller."""
        ...

    async def restore_state(self, handle: Handle, src: Path) -> None:
        """Load ``src`` into a VMM launched as a clone, leaving it paused; raise
        ``SnapshotDamaged`` if the VMM refused the stream, ``SnapshotUnusable`` if the
        load failed otherwise (a timeout, the VMM died)."""
        ...

    async def resume(self, handle: Handle) -> None:
        """Run a clone whose state ``restore_state`` loaded (or that ``pause`` stopped)."""
        ...

    async def pause(self, handle: Handle) -> None:
        """Stop a running clone's vCPUs (a warm pool member waits so)."""
        ...

    async def announce_work_disk(self, handle: Handle, size: int) -> None:
        """Tell a restored guest the size of its own work disk."""
        ...


log = logging.getLogger("banger.vmm")
KILL_TIMEOUT = 10.0


class VmmProcess:
    """What every backend does the same way to its VMM process: prepare its launch and
    report a failed one, signal it through the privileged seam, wait for it, stop it (the
    guest asked first, then SIGKILL), and remove its runtime files once it is gone."""

    vmm_label: ClassVar[str]  # "QEMU", "Firecracker": for messages
    # The files a launch leaves in the VM's run dir (sockets, pidfile, links), by name.
    runtime_files: ClassVar[tuple[str, ...]]
    host_ops: HostOps
    _version: tuple[tuple[int, ...] | None, str] | None = None  # (binary's stamp, version)

    @property
    def binary(self) -> str:
        raise NotImplementedError

    def vmm_version(self) -> str:
        """``<binary> --version``'s first line, asked again whenever the binary's file
        changed (an upgrade under a running daemon makes every snapshot stale at once)."""
        try:
            st = os.stat(self.binary)
            stamp: tuple[int, ...] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None  # run() below says what is wrong
        if self._version is None or stamp is None or self._version[0] != stamp:
            out = run([self.binary, "--version"], timeout=10).stdout.decode("utf-8", "replace")
            self._version = (stamp, (out.splitlines() or ["unknown"])[0].strip())
        return self._version[1]

    def kill(self, handle: Handle, sig: signal.Signals = signal.SIGKILL) -> bool:
        """Send ``sig`` while the pid is still this VM's VMM; True when it was sent."""
        return self.host_ops.signal_vmm(handle.pid, handle.start_time, handle.markers, sig)

    async def wait_exit(self, handle: Handle, *, timeout: float) -> bool:
        return await proc.wait_until_gone(
            handle.pid, handle.start_time, handle.markers, timeout=timeout
        )

    def adopt(self, pidfile: Path, spec: VMSpec) -> Handle | None:
        raise NotImplementedError

    def cleanup(self, spec: VMSpec) -> None:
        """Remove the runtime files unless a live VMM of this VM still owns them."""
        if self.adopt(spec.pidfile, spec) is None:
            self._remove_runtime_files(spec.run_dir)

    def _remove_runtime_files(self, run_dir: Path) -> None:
        for name in self.runtime_files:
            (run_dir / name).unlink(missing_ok=True)

    def _prepare_launch(self, spec: VMSpec) -> None:
        """Refuse a VM whose VMM still runs; else clear the run dir of an earlier VMM's
        files and make both logs ours and empty before the VMM opens them (it would follow
        a planted symlink; one boot per log, so a failure's tail is this launch's)."""
        if self.adopt(spec.pidfile, spec) is not None:
            raise Conflict(f"VM {spec.name} already has a running {self.vmm_label}",
                           hint="stop or kill the VM first")
        spec.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._remove_runtime_files(spec.run_dir)
        for path in (spec.console_log, spec.vmm_log):
            path.parent.mkdir(parents=True, exist_ok=True)
            reset_file(path)

    def _launch_failed(self, spec: VMSpec, what: str) -> HostToolError:
        """Remove what a failed launch left (the VMM is gone) and return its error: ``what``
        and the VMM log's last line, the log's tail as the hint."""
        self.cleanup(spec)
        tail = log_tail(spec.vmm_log)
        last = tail.splitlines()[-1] if tail else "no output"
        return HostToolError(f"{self.vmm_label} failed to start VM {spec.name}: {what} ({last})",
                             hint=f"full log: {spec.vmm_log}\n{tail}" if tail
                             else f"see {spec.vmm_log}")

    async def _stop(self, handle: Handle, ask_guest: Callable[[], Awaitable[None]] | None,
                    timeout: float) -> StopOutcome:
        """``ask_guest`` (when given) to power off within ``timeout``, then SIGKILL; the
        runtime files go once the VMM has exited (one already inside its exit is waited
        for: it still holds its files)."""
        outcome = await self._make_exit(handle, ask_guest, timeout)
        if not await self.wait_exit(handle, timeout=KILL_TIMEOUT):
            raise HostToolError(
                f"{self.vmm_label} pid {handle.pid} of VM {handle.vm_id} survived SIGKILL",
                hint="the process is stuck in the kernel (D state); check dmesg",
            )
        self._remove_runtime_files(handle.control_socket.parent)
        return outcome

    async def _make_exit(self, handle: Handle,
                         ask_guest: Callable[[], Awaitable[None]] | None,
                         timeout: float) -> StopOutcome:
        if not handle.running():
            return StopOutcome.GONE
        if ask_guest is not None:
            try:
                await ask_guest()
            except (HostToolError, OSError, TimeoutError) as exc:
                log.debug("asking VM %s to power off failed: %s", handle.vm_id, exc)
            if await self.wait_exit(handle, timeout=timeout):
                return StopOutcome.POWERDOWN
        self.kill(handle, signal.SIGKILL)
        return StopOutcome.KILLED


def adopt_vmm(backend: str, pidfile: Path, spec: VMSpec, markers: tuple[str, ...],
              control_socket: Path) -> Handle | None:
    """A handle on the VMM in ``pidfile`` if it runs and its argv holds every marker."""
    pid = proc.read_pidfile(pidfile)
    if pid is None:
        return None
    started = proc.start_time(pid)
    if started is None or not proc.is_running(pid, started, markers):
        return None
    return Handle(backend=backend, vm_id=spec.vm_id, pid=pid, start_time=started,
                  control_socket=control_socket, pidfile=pidfile, log_path=spec.vmm_log,
                  markers=markers)


# Opening a file fails with these for lack of a host resource, not because the file is bad.
_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR})


def open_snapshot_file(path: Path, what: str) -> int:
    """Open a warm snapshot's file read-only, not through a symbolic link: a missing one or
    a link is ``SnapshotDamaged``, a host short of descriptors or memory ``SnapshotUnusable``."""
    try:
        return open_nofollow(path, os.O_RDONLY)
    except OSError as exc:
        cls = SnapshotUnusable if exc.errno in _TRANSIENT else SnapshotDamaged
        raise cls(f"cannot open the saved {what} {path.name}: {exc}") from exc
    except BangerError as exc:
        raise SnapshotDamaged(f"cannot open the saved {what} {path.name}: {exc.message}") from exc


def choose_accel() -> Accel:
    """KVM where a standard guest can run, otherwise TCG."""
    return "kvm" if have_usable_kvm() else "tcg"
