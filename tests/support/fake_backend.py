"""A test double of ``vmm.Backend`` that runs no VM, and a guest to go with it.

``FakeBackend`` implements the protocol exactly (``_CONFORMS`` below makes mypy
check it) with the QEMU traits, or the traits a test picks (``with_traits``).
Each "VMM" is a real, cheap child process (``sleep``, its argv[0] naming the
VM's pidfile as QEMU's argv names its QMP socket), so pid identity, the pidfd
exit watcher and adoption at daemon start all run the real code paths; the
process is real, the VM is not. ``faults`` makes any step fail; ``calls``
records every call in order (shared with ``FakeGuest`` and a ``RecordingNetwork``
so a test can assert the order of a whole create and its undo).

Timeouts the daemon passes (10 s for a graceful stop, an hour for the
watcher's wait) are multiplied by ``time_scale`` so a test that waits one out
takes a fraction of a second (a wait for an exit: at least a second).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from banger.core.errors import Conflict, GuestError, HostToolError
from banger.core.vmspec import Accel, VMSpec
from banger.core.wait import poll_until
from banger.daemon.vm_guest import Guest
from banger.daemon.vm_layout import VMFiles
from banger.daemon.vm_network import VMNetwork
from banger.host import proc_identity as proc
from banger.host.run import CommandError, run
from banger.host.ssh import GuestCommandError, GuestTarget
from banger.store.records import VMRecord
from banger.vmm.base import Backend, Handle, StopOutcome
from banger.vmm.traits import TRAITS, BackendTraits

MARKER = "banger-fake-vmm"
KILL_TIMEOUT = 10.0  # as QEMU's: how long a SIGKILLed VMM may take to go (scaled)


def signal_handle(handle: Handle, sig: int) -> bool:
    """Send ``sig`` to the fake VMM only while it is provably the same process.

    The daemon's real path is ``HostOps.signal_vmm`` (which also wants a pidfile
    naming the pid); a fake VMM is a ``sleep`` of ours, so the identity check is enough.
    """
    if not handle.running():
        return False
    try:
        os.kill(handle.pid, sig)
    except ProcessLookupError:
        return False
    return True


@dataclass(frozen=True)
class Call:
    """One call to a fake: what, for which VM, with which arguments."""

    name: str
    vm_id: str | None = None
    args: tuple[Any, ...] = ()


@dataclass
class Faults:
    """What goes wrong next; a test sets these between calls."""

    launch: BaseException | None = None  # launch raises this
    dies_after_launch: bool = False  # launch returns a handle whose process has exited
    ignores_powerdown: bool = False  # a graceful shutdown times out (then SIGKILL)
    kill_fails: bool = False  # kill sends nothing: the process outlives SIGKILL
    adopt_none: bool = False  # adopt finds nothing, even a live VMM of ours


def fake_marker(spec: VMSpec) -> str:
    """The argv[0] of the fake VMM of ``spec``: what makes it provably this VM's."""
    return f"{MARKER}:{spec.pidfile}"


class FakeBackend:
    """``vmm.Backend`` without a VM (see the module docstring)."""

    name: ClassVar[str] = "qemu"
    traits: ClassVar[BackendTraits] = TRAITS["qemu"]

    def __init__(self, *, time_scale: float = 0.02, accel: Accel = "tcg") -> None:
        self.accel = accel
        self.calls: list[Call] = []
        self.faults = Faults()
        self.time_scale = time_scale
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._handles: list[Handle] = []
        self._sleep = shutil.which("sleep") or "/bin/sleep"

    @classmethod
    def with_traits(cls, traits: BackendTraits, **kwargs: Any) -> FakeBackend:
        """A fake whose traits (and name) are ``traits``: a backend other than QEMU."""
        sub = type(f"FakeBackend_{traits.name}", (cls,), {"name": traits.name, "traits": traits})
        fake: FakeBackend = sub(**kwargs)
        return fake

    def _record(self, name: str, vm_id: str | None, *args: Any) -> None:
        self.calls.append(Call(name, vm_id, args))

    # -- the protocol ------------------------------------------------------------

    async def launch(self, spec: VMSpec) -> Handle:
        self._record("launch", spec.vm_id)
        if self.faults.launch is not None:
            raise self.faults.launch
        if self.adopt(spec.pidfile, spec) is not None:
            raise Conflict(f"VM {spec.name} already has a running VMM")
        spec.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = self.spawn(spec)
        if self.faults.dies_after_launch:
            self._end(handle, signal.SIGKILL)
        return handle

    async def shutdown(self, handle: Handle, *, graceful: bool, timeout: float) -> StopOutcome:
        self._record("shutdown", handle.vm_id, graceful, timeout)
        if not handle.running():
            self._remove_runtime_files(handle)
            return StopOutcome.GONE
        if graceful and not self.faults.ignores_powerdown:
            signal_handle(handle, signal.SIGTERM)  # the guest powers off
            if await self.wait_exit(handle, timeout=timeout):
                self._remove_runtime_files(handle)
                return StopOutcome.POWERDOWN
        elif graceful:
            await self.wait_exit(handle, timeout=timeout)  # the powerdown that never comes
        self.kill(handle, signal.SIGKILL)
        if not await self.wait_exit(handle, timeout=KILL_TIMEOUT):
            raise HostToolError(f"fake VMM pid {handle.pid} of VM {handle.vm_id} survived SIGKILL")
        self._remove_runtime_files(handle)
        return StopOutcome.KILLED

    def kill(self, handle: Handle, sig: int = signal.SIGKILL) -> bool:
        self._record("kill", handle.vm_id, signal.Signals(sig).name)
        if self.faults.kill_fails:
            return False
        return signal_handle(handle, sig)

    async def wait_exit(self, handle: Handle, *, timeout: float) -> bool:
        self._record("wait_exit", handle.vm_id, timeout)
        return await proc.wait_until_gone(
            handle.pid, handle.start_time, handle.markers, timeout=self._scaled_wait(timeout)
        )

    def _scaled_wait(self, timeout: float) -> float:
        """``timeout`` scaled, but never under a second (nor over ``timeout``): a signalled
        ``sleep`` on a loaded 2-core host can take longer than 0.1 s to exit (CI saw it)."""
        return max(timeout * self.time_scale, min(timeout, 1.0))

    def adopt(self, pidfile: Path, spec: VMSpec) -> Handle | None:
        self._record("adopt", spec.vm_id)
        pid = proc.read_pidfile(pidfile)
        if self.faults.adopt_none or pid is None:
            return None
        started = proc.start_time(pid)
        markers = (fake_marker(spec),)
        if started is None or not proc.is_running(pid, started, markers):
            return None
        return self._handle(spec, pid, started)

    def cleanup(self, spec: VMSpec) -> None:
        self._record("cleanup", spec.vm_id)
        if self.adopt(spec.pidfile, spec) is None:
            for path in (spec.qmp_socket, spec.pidfile):
                path.unlink(missing_ok=True)

    # -- driving the fake ---------------------------------------------------------

    def spawn(self, spec: VMSpec, *, marker: str | None = None) -> Handle:
        """Start a fake VMM for ``spec`` and write its pidfile (``marker``: another's argv[0])."""
        child = subprocess.Popen(
            [marker or fake_marker(spec), "3600"], executable=self._sleep,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._children[child.pid] = child
        started = proc.start_time(child.pid)
        assert started is not None
        handle = self._handle(spec, child.pid, started)
        if marker is not None:
            handle = dataclasses.replace(handle, markers=(marker,))
        # Popen returns once exec began; the new argv shows in /proc a moment later.
        # (QEMU writes its pidfile after it initialised, so a real launch never sees this.)
        if not poll_until(handle.running, timeout=10, interval=0.001):
            raise AssertionError(f"the fake VMM {child.pid} did not start")
        spec.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        spec.pidfile.write_text(f"{child.pid}\n")
        self._handles.append(handle)
        return handle

    def exit(self, vm_id: str, sig: int = signal.SIGKILL) -> None:
        """The VMM of ``vm_id`` exits on its own (a guest poweroff, a crash)."""
        for handle in self._handles:
            if handle.vm_id == vm_id and handle.running():
                self._end(handle, sig)

    def live(self) -> list[Handle]:
        """The fake VMMs still running."""
        return [h for h in self._handles if h.running()]

    def close(self) -> None:
        """Kill and reap every child this fake started (test teardown)."""
        for child in self._children.values():
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)

    def named(self, *names: str) -> list[Call]:
        """The recorded calls called one of ``names``, in order."""
        return [c for c in self.calls if c.name in names]

    def _end(self, handle: Handle, sig: int) -> None:
        signal_handle(handle, sig)
        child = self._children.get(handle.pid)
        if child is not None:
            child.wait(timeout=10)

    def _handle(self, spec: VMSpec, pid: int, started: int) -> Handle:
        return Handle(
            backend=self.name, vm_id=spec.vm_id, pid=pid, start_time=started,
            control_socket=spec.qmp_socket, pidfile=spec.pidfile, log_path=spec.vmm_log,
            markers=(fake_marker(spec),),
        )

    @staticmethod
    def _remove_runtime_files(handle: Handle) -> None:
        for path in (handle.control_socket, handle.pidfile):
            path.unlink(missing_ok=True)


# mypy checks the fakes against the protocols they stand in for.
_FAKE = FakeBackend()
_CONFORMS: Backend = _FAKE


class FakeGuest:
    """A guest that is ready at once (or never), and powers off when asked (or ignores it).

    Its commands (the workspace scripts) run on this host, with every argument under
    ``/root/`` moved below ``root``: the guest's filesystem is a test's directory.
    """

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.calls = backend.calls
        self.ready = True
        self.honours_poweroff = True
        self.root: Path | None = None
        self.held: set[str] = set()  # VMs whose held connection is up (drop one to test)

    def _local(self, command: Sequence[str]) -> list[str]:
        if self.root is None:
            raise GuestError("this fake guest has no filesystem (set FakeGuest.root)")
        return [f"{self.root}{a}" if a.startswith("/root/") else a for a in command]

    async def run(self, target: GuestTarget, command: Sequence[str], *, stdin: Path | None,
                  timeout: float) -> None:
        self.calls.append(Call("guest_run", None, (command[3:],)))
        argv = self._local(command)
        try:
            if stdin is None:
                await asyncio.to_thread(run, argv, timeout=timeout)
                return
            with open(stdin, "rb") as f:
                await asyncio.to_thread(functools.partial(run, argv, input=f, timeout=timeout))
        except CommandError as exc:
            raise GuestCommandError.of(exc) from None

    async def read(self, target: GuestTarget, command: Sequence[str], *, limit: int,
                   timeout: float, stdin: Path | None = None) -> bytes:
        self.calls.append(Call("guest_read", None, (command[3:],)))
        argv = self._local(command)
        try:
            if stdin is None:
                out = (await asyncio.to_thread(run, argv, timeout=timeout)).stdout
            else:
                with open(stdin, "rb") as f:
                    out = (await asyncio.to_thread(
                        functools.partial(run, argv, input=f, timeout=timeout))).stdout
        except CommandError as exc:
            raise GuestCommandError.of(exc) from None
        if len(out) > limit:
            raise GuestError(f"the guest sent more than {limit} bytes")
        return out

    async def wait_ready(
        self, vm: VMRecord, files: VMFiles, host: str, port: int, *,
        deadline: float, alive: Callable[[], bool], held: bool = False,
    ) -> None:
        self.calls.append(Call("wait_ready", vm.id, (host, port, held)))
        if not alive():
            raise GuestError(f"the VM behind {host}:{port} exited before SSH came up")
        if not self.ready:
            raise GuestError(f"SSH on {host}:{port} did not accept our key in time: refused")
        if held:
            self.held.add(vm.id)

    async def still_connected(self, vm: VMRecord, files: VMFiles) -> bool:
        self.calls.append(Call("still_connected", vm.id, (vm.id in self.held,)))
        return vm.id in self.held

    async def poweroff(self, vm: VMRecord, files: VMFiles, host: str, port: int) -> None:
        self.calls.append(Call("poweroff", vm.id))
        if self.honours_poweroff:
            self.backend.exit(vm.id, signal.SIGTERM)


_GUEST_CONFORMS: Guest = FakeGuest(_FAKE)


class RecordingNetwork:
    """The real ``VMNetwork`` (user mode: no netlink), its attach/detach recorded and failable."""

    def __init__(self, inner: VMNetwork, calls: list[Call]) -> None:
        self._inner = inner
        self.calls = calls
        self.fail_attach: BaseException | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def attach(self, vm: VMRecord) -> Any:
        self.calls.append(Call("attach", vm.id))
        if self.fail_attach is not None:
            raise self.fail_attach
        return await self._inner.attach(vm)

    async def detach(self, tap_name: str | None, vm: VMRecord | None = None) -> None:
        self.calls.append(Call("detach", None, (tap_name,)))
        await self._inner.detach(tap_name, vm)

