"""The Firecracker backend: one ``firecracker`` process per VM, configured over its API.

Ready for KVM hosts, tested by contract only (docs/backends.md): the bodies
are pure data (``vmm/firecracker_api.py``) checked against Firecracker's
OpenAPI spec, and this class runs end to end against a fake API server in
tests/support; no real Firecracker has run it.

Detaching: Firecracker does not daemonize, so it is spawned in its own
session with its output appended to ``vmm.log`` (``host/run.spawn_detached``),
its working directory the VM's run dir (the drives' links live there, see
``firecracker_api``), and the daemon writes its pidfile. Firecracker has no
``--pidfile`` option: its API socket is named after the pidfile
(``VMSpec.api_socket``, ``vmm.pid.sock``), so its argv carries the pidfile's
path, which the root helper requires before it signals a VMM.

Guest stop: ``SendCtrlAltDel`` (the guest reboots, ``reboot=k``, and
Firecracker exits on a guest reboot), then SIGKILL.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import ClassVar

from banger.core.errors import (
    BangerError,
    Conflict,
    HostToolError,
    SnapshotDamaged,
    SnapshotUnusable,
)
from banger.core.vmspec import API_SOCKET, PIDFILE, Accel, VMSpec
from banger.host import proc_identity as proc
from banger.host.files import atomic_write_text, fsync_file
from banger.host.privileged import HostOps, host_ops_for
from banger.host.probes import find_tool
from banger.host.run import kill_detached, spawn_detached
from banger.vmm import firecracker_api as api
from banger.vmm.base import (
    Handle,
    StopOutcome,
    VmmProcess,
    adopt_vmm,
    open_snapshot_file,
)
from banger.vmm.channel import Channel
from banger.vmm.firecracker_client import FirecrackerClient, FirecrackerFault
from banger.vmm.traits import TRAITS, BackendTraits

log = logging.getLogger("banger.vmm.firecracker")

FIRECRACKER_BINARY = "firecracker"
FIRECRACKER_RELEASES = "https://github.com/firecracker-microvm/firecracker/releases"
LAUNCH_TIMEOUT = 10.0  # until the API socket listens
SAVE_TIMEOUT = 120.0
LOAD_TIMEOUT = 60.0


def firecracker_argv(spec: VMSpec, *, binary: str = FIRECRACKER_BINARY) -> list[str]:
    """The command line of ``spec``'s Firecracker (pure); everything else goes over the API."""
    return [binary, "--api-sock", os.fspath(spec.api_socket), "--id", spec.vm_id]


def ownership_markers(spec: VMSpec) -> tuple[str, ...]:
    """Argv fragments that prove a Firecracker is this VM's: its API socket and pidfile
    (the socket's name contains the pidfile's path)."""
    return (os.fspath(spec.api_socket), os.fspath(spec.pidfile))


class FirecrackerBackend(VmmProcess):
    """``vmm.Backend`` and ``SnapshotCapable`` for Firecracker (see the module docstring)."""

    name: ClassVar[str] = "firecracker"
    vmm_label: ClassVar[str] = "Firecracker"
    traits: ClassVar[BackendTraits] = TRAITS["firecracker"]
    runtime_files: ClassVar[tuple[str, ...]] = (
        API_SOCKET, PIDFILE, api.AGENT_SOCKET, api.ROOT_LINK, api.WORK_LINK)

    def __init__(self, binary: str | None = None, *, launch_timeout: float = LAUNCH_TIMEOUT,
                 host_ops: HostOps | None = None) -> None:
        self._binary = binary
        self.accel: Accel = "kvm"  # Firecracker has no other
        self.launch_timeout = launch_timeout
        self.host_ops = host_ops if host_ops is not None else host_ops_for()
        # launched templates (to be saved) and clones (waiting for their state), by VM id
        self._snapshot_specs: dict[str, VMSpec] = {}

    @property
    def binary(self) -> str:
        if self._binary is None:
            found = find_tool(FIRECRACKER_BINARY)
            if found is None:
                raise HostToolError("firecracker is not installed",
                                    hint=f"install a release from {FIRECRACKER_RELEASES}")
            self._binary = os.fspath(found)
        return self._binary

    def _client(self, handle: Handle, timeout: float | None = None) -> FirecrackerClient:
        if timeout is None:
            return FirecrackerClient(handle.control_socket)
        return FirecrackerClient(handle.control_socket, timeout=timeout)

    async def launch(self, spec: VMSpec) -> Handle:
        """Start Firecracker and configure and start the guest (a clone waits for its state)."""
        self._prepare_launch(spec)
        for link, target in api.disk_links(spec).items():
            os.symlink(target, spec.run_dir / link)
        handle = await self._spawn(spec)
        try:
            if spec.snapshot_role is not None:
                self._snapshot_specs[spec.vm_id] = spec  # save_state, restore_state
            if spec.snapshot_role != "clone":  # a clone waits for restore_state
                await self._client(handle).run(api.boot_calls(spec))
        except BaseException as exc:
            await self.shutdown(handle, graceful=False, timeout=0)
            if isinstance(exc, HostToolError):
                raise self._launch_failed(spec, exc.message) from exc
            raise
        log.debug("launched VM %s: pid %d", spec.vm_id, handle.pid)
        return handle

    async def _spawn(self, spec: VMSpec) -> Handle:
        """Start Firecracker, write its pidfile, and wait until its API socket listens."""
        pid = spawn_detached(firecracker_argv(spec, binary=self.binary), log_path=spec.vmm_log,
                             cwd=spec.run_dir, env="clean").pid
        atomic_write_text(spec.pidfile, f"{pid}\n")
        started = proc.start_time(pid)

        def alive() -> bool:
            return started is not None and proc.is_running(pid, started, ())

        listening = await FirecrackerClient(spec.api_socket).wait_listening(
            alive, timeout=self.launch_timeout)
        handle = self.adopt(spec.pidfile, spec) if listening else None
        if handle is None:
            kill_detached(pid)  # hung before its socket listened, or already gone
            raise self._launch_failed(spec, "it exited or never listened on its API socket")
        return handle

    async def _ctrl_alt_del(self, handle: Handle) -> None:
        await self._client(handle).call(api.action("SendCtrlAltDel"))

    async def shutdown(self, handle: Handle, *, graceful: bool = True,
                       timeout: float = 10.0) -> StopOutcome:
        """Ctrl-Alt-Del (when ``graceful``) bounded by ``timeout``, then SIGKILL."""
        self._snapshot_specs.pop(handle.vm_id, None)
        ask = functools.partial(self._ctrl_alt_del, handle) if graceful else None
        return await self._stop(handle, ask, timeout)

    async def agent_channel(self, spec: VMSpec) -> Channel:
        """The hybrid vsock to the agent's port, connected at the first request: a paused
        guest answers no ``CONNECT``, and a snapshot load resets vsock connections."""
        return Channel.vsock(spec.agent_socket, api.AGENT_PORT)

    async def save_state(self, handle: Handle, dest: Path) -> int:
        """Pause the template; save its device state to the new file ``dest`` (fsynced; its
        bytes are returned) and its RAM to its ``memory_file`` (the caller flushes that).

        The guest stays paused (the caller ends the VMM).
        """
        spec = self._snapshot_specs.get(handle.vm_id)
        if spec is None or spec.snapshot_role != "template":
            raise SnapshotUnusable(f"VM {handle.vm_id} was not launched as a template")
        for path in (dest, api.memory_file(spec)):
            if os.path.lexists(path):
                raise Conflict(f"{path} exists: a snapshot is never written over another")
        client = self._client(handle, SAVE_TIMEOUT)
        await client.call(api.pause())
        await client.call(api.snapshot_create(spec, dest))
        return fsync_file(dest).st_size

    async def restore_state(self, handle: Handle, src: Path) -> None:
        """Load ``src`` and the clone's memory file into a Firecracker launched as a clone,
        paused."""
        spec = self._snapshot_specs.get(handle.vm_id)
        if spec is None or spec.snapshot_role != "clone":
            raise SnapshotUnusable(f"VM {handle.vm_id} was not launched as a clone")
        del self._snapshot_specs[handle.vm_id]
        for path, what in ((src, "state"), (api.memory_file(spec), "memory")):
            try:  # checked as QEMU's clone opens them: never through a symbolic link
                os.close(open_snapshot_file(path, what))
            except SnapshotDamaged as exc:
                raise SnapshotDamaged(f"the saved state lacks {path.name} ({exc.message})",
                                      hint=exc.hint) from exc
        try:
            await self._client(handle, LOAD_TIMEOUT).call(api.snapshot_load(spec, src))
        except BangerError as exc:
            # Firecracker answered with a fault: it refused the files. Anything else (a
            # timeout, a lost connection) leaves them in doubt: the snapshot stays.
            damaged = isinstance(exc, FirecrackerFault)
            raise (SnapshotDamaged if damaged else SnapshotUnusable)(
                f"Firecracker could not load the saved state: {exc.message}") from exc

    async def resume(self, handle: Handle) -> None:
        """Run a clone whose state is loaded (or that ``pause`` stopped)."""
        await self._client(handle).call(api.resume())

    async def pause(self, handle: Handle) -> None:
        """Stop a running clone's vCPUs."""
        await self._client(handle).call(api.pause())

    async def announce_work_disk(self, handle: Handle, size: int) -> None:
        """Make a restored guest re-read its work disk's size (Firecracker reads the file's)."""
        await self._client(handle).call(api.grow_work_disk())

    def adopt(self, pidfile: Path, spec: VMSpec) -> Handle | None:
        """A handle on the Firecracker in ``pidfile`` if it runs and its argv names ``spec``'s."""
        return adopt_vmm(self.name, pidfile, spec, ownership_markers(spec), spec.api_socket)
