"""The VMM backend protocol (DESIGN.md s.5) and what every backend shares.

A backend turns a ``VMSpec`` into a running VMM process and back. It knows
nothing about the store, TAPs or SSH: the daemon's services compose those.
What it is (overlay format, kernel forms, network kinds...) is its ``traits``
(``vmm/traits.py``); ``vmm/factory.py:backend_for`` picks one for the host.
``launch`` returns once the VMM initialised; "the guest's sshd accepts our
key" is ``host/ssh.wait_for_ssh``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from banger.core.vmspec import Accel, VMSpec
from banger.host import proc_identity as proc
from banger.host.probes import have_usable_kvm
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

    async def save_state(self, handle: Handle, dest: Path) -> int:
        """Pause the guest and save its device state and RAM to the new file ``dest``."""
        ...

    async def restore_state(self, handle: Handle, src: Path) -> None:
        """Load ``src`` into a VMM launched as a clone, leaving it paused; raise
        ``SnapshotUnusable`` if refused."""
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


def choose_accel() -> Accel:
    """KVM where a standard guest can run, otherwise TCG."""
    return "kvm" if have_usable_kvm() else "tcg"
