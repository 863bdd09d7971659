"""Talking to a running guest: "its sshd accepts our key" after a boot, the poweroff of a stop.

``Guest`` is the seam between the VM services and the guest OS, as ``Backend`` is
the one to the VMM: ``SSHGuest`` is the real one (``VMRuntime`` uses it unless
handed another), and a test hands in a guest that is ready, never ready, or
ignores the poweroff (tests/support/fake_backend.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from banger.core.cancel import to_thread_joined
from banger.core.errors import GuestError
from banger.daemon.vm_layout import VMFiles
from banger.host import ssh
from banger.host.ssh import GuestTarget
from banger.store.records import VMRecord

log = structlog.get_logger("banger.daemon.vm_guest")


class Guest(Protocol):
    async def wait_ready(
        self, vm: VMRecord, files: VMFiles, host: str, port: int, *,
        deadline: float, alive: Callable[[], bool], held: bool = False,
    ) -> None:
        """Return once the guest accepts our key; GuestError at ``deadline`` or once not alive.
        ``held``: the guest is paused next (a warm pool member); the connection made here
        must outlive that, for ``still_connected``."""
        ...

    async def still_connected(self, vm: VMRecord, files: VMFiles) -> bool:
        """Whether the connection a held ``wait_ready`` made is still up (nothing is asked
        of the guest)."""
        ...

    async def poweroff(self, vm: VMRecord, files: VMFiles, host: str, port: int) -> None:
        """Ask the guest to sync and power off (best effort: it may already be going down)."""
        ...

    async def run(self, target: GuestTarget, command: Sequence[str], *, stdin: Path | None,
                  timeout: float) -> None:
        """Run ``command`` with the file ``stdin``; GuestCommandError when it fails."""
        ...

    async def read(self, target: GuestTarget, command: Sequence[str], *, limit: int,
                   timeout: float, stdin: Path | None = None) -> bytes:
        """The stdout of ``command`` (with the file ``stdin``), at most ``limit`` bytes;
        GuestCommandError if it fails."""
        ...


class SSHGuest:
    """The guest through its sshd, with banger's key."""

    def __init__(self, key: Path) -> None:
        self.key = key

    async def wait_ready(
        self, vm: VMRecord, files: VMFiles, host: str, port: int, *,
        deadline: float, alive: Callable[[], bool], held: bool = False,
    ) -> None:
        """Until sshd accepts our key; leaves the shared SSH connection up where possible."""
        control = ssh.control_path_for(files.run_dir)
        if control is None:
            await ssh.wait_for_ssh(host, port, self.key, known_hosts=files.known_hosts,
                                   deadline=deadline, alive=alive)
            return
        await ssh.open_master(host, port, self.key, files.known_hosts, control,
                              deadline=deadline, log_path=files.ssh_log, alive=alive, held=held)

    async def still_connected(self, vm: VMRecord, files: VMFiles) -> bool:
        return await ssh.master_up(ssh.control_path_for(files.run_dir))

    async def poweroff(self, vm: VMRecord, files: VMFiles, host: str, port: int) -> None:
        try:
            await ssh.ssh_exec(
                host, port, self.key, ["sh", "-c", "sync && poweroff"],
                known_hosts=files.known_hosts, timeout=5,
            )
        except GuestError as exc:
            # The connection often drops as the guest goes down: that is success.
            log.debug("guest poweroff over SSH", vm=vm.name, error=exc.message)

    async def run(self, target: GuestTarget, command: Sequence[str], *, stdin: Path | None,
                  timeout: float) -> None:
        if stdin is None:
            await to_thread_joined(ssh.run_in_guest, target, command, None, timeout)
            return
        with open(stdin, "rb") as f:
            await to_thread_joined(ssh.run_in_guest, target, command, f, timeout)

    async def read(self, target: GuestTarget, command: Sequence[str], *, limit: int,
                   timeout: float, stdin: Path | None = None) -> bytes:
        if stdin is None:
            return await to_thread_joined(ssh.read_from_guest, target, command, limit, timeout)
        with open(stdin, "rb") as f:
            return await to_thread_joined(ssh.read_from_guest, target, command, limit,
                                          timeout, f)
