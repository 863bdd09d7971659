"""Talking to a running guest: "its sshd accepts our key" after a boot, the poweroff of a stop.

``Guest`` is the seam between the VM services and the guest OS, as ``Backend`` is
the one to the VMM: ``SSHGuest`` is the real one (``VMRuntime`` uses it unless
handed another), and a test hands in a guest that is ready, never ready, or
ignores the poweroff (tests/support/fake_backend.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from banger.core.errors import GuestError
from banger.daemon.vm_layout import VMFiles
from banger.host import ssh
from banger.store.records import VMRecord

log = structlog.get_logger("banger.daemon.vm_guest")


class Guest(Protocol):
    async def wait_ready(
        self, vm: VMRecord, files: VMFiles, host: str, port: int, *,
        deadline: float, alive: Callable[[], bool],
    ) -> None:
        """Return once the guest accepts our key; GuestError at ``deadline`` or once not alive."""
        ...

    async def poweroff(self, vm: VMRecord, files: VMFiles, host: str, port: int) -> None:
        """Ask the guest to sync and power off (best effort: it may already be going down)."""
        ...


class SSHGuest:
    """The guest through its sshd, with banger's key."""

    def __init__(self, key: Path) -> None:
        self.key = key

    async def wait_ready(
        self, vm: VMRecord, files: VMFiles, host: str, port: int, *,
        deadline: float, alive: Callable[[], bool],
    ) -> None:
        """Until sshd accepts our key; leaves the shared SSH connection up where possible."""
        control = ssh.control_path_for(files.run_dir)
        if control is None:
            await ssh.wait_for_ssh(host, port, self.key, known_hosts=files.known_hosts,
                                   deadline=deadline, alive=alive)
            return
        await ssh.open_master(host, port, self.key, files.known_hosts, control,
                              deadline=deadline, log_path=files.ssh_log, alive=alive)

    async def poweroff(self, vm: VMRecord, files: VMFiles, host: str, port: int) -> None:
        try:
            await ssh.ssh_exec(
                host, port, self.key, ["sh", "-c", "sync && poweroff"],
                known_hosts=files.known_hosts, timeout=5,
            )
        except GuestError as exc:
            # The connection often drops as the guest goes down: that is success.
            log.debug("guest poweroff over SSH", vm=vm.name, error=exc.message)
