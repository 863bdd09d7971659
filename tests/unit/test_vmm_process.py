"""What both backends share through ``vmm.base.VmmProcess``: the launch prelude, the
error of a failed launch, and the removal of each backend's own runtime files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from banger.core.errors import Forbidden, HostToolError
from banger.core.vmspec import RootDisk, VMSpec
from banger.host import proc_identity as proc
from banger.vmm.base import Handle, StopOutcome
from banger.vmm.firecracker import FirecrackerBackend
from banger.vmm.qemu import QemuBackend
from tests.support.processes import seem_exiting, spawn
from tests.unit.test_qemu_vmspec import make_spec

BACKENDS: dict[str, tuple[type[QemuBackend] | type[FirecrackerBackend], set[str]]] = {
    "qemu": (QemuBackend, {"qmp.sock", "vmm.pid", "agent.sock"}),
    "firecracker": (FirecrackerBackend,
                    {"vmm.pid.sock", "vmm.pid", "agent.sock", "root.disk", "work.disk"}),
}
ALL_NAMES = {"qmp.sock", "vmm.pid.sock", "vmm.pid", "agent.sock", "root.disk", "work.disk"}


def _backend(name: str) -> QemuBackend | FirecrackerBackend:
    cls, _ = BACKENDS[name]
    return cls("/nonexistent/vmm")


def _spec(tmp_path: Path) -> VMSpec:
    return make_spec(run_dir=tmp_path / "run", vmm_log=tmp_path / "logs" / "vmm.log",
                     console_log=tmp_path / "logs" / "console.log",
                     root=RootDisk(tmp_path / "root.ext4", "raw"),
                     work_disk=tmp_path / "work.ext4")


def _fill_run_dir(spec: VMSpec) -> None:
    """Every runtime name any backend uses, and a file of nobody's; the pidfile names a live
    process that is no VMM of this VM (the test itself)."""
    spec.run_dir.mkdir(parents=True)
    for name in ALL_NAMES | {"keep"}:
        (spec.run_dir / name).write_text("x")
    spec.pidfile.write_text(f"{os.getpid()}\n")


@pytest.mark.parametrize("name", BACKENDS)
def test_cleanup_removes_exactly_the_backends_runtime_files(tmp_path: Path, name: str) -> None:
    spec = _spec(tmp_path)
    _fill_run_dir(spec)
    _backend(name).cleanup(spec)
    left = {p.name for p in spec.run_dir.iterdir()}
    assert left == (ALL_NAMES - BACKENDS[name][1]) | {"keep"}


@pytest.mark.parametrize("name", BACKENDS)
def test_a_launch_refuses_a_planted_log_symlink_before_running_anything(
    tmp_path: Path, name: str
) -> None:
    spec = _spec(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    spec.console_log.parent.mkdir()
    spec.console_log.symlink_to(victim)
    with pytest.raises(Forbidden, match="symbolic link"):
        asyncio.run(_backend(name).launch(spec))
    assert victim.read_text() == "keep"
    assert not (spec.run_dir / "root.disk").exists()  # stopped at the prelude


@pytest.mark.parametrize("name", BACKENDS)
def test_a_failed_launch_names_the_vmm_the_vm_and_its_logs_last_line_and_clears_the_run_dir(
    tmp_path: Path, name: str
) -> None:
    spec = _spec(tmp_path)
    _fill_run_dir(spec)
    spec.vmm_log.parent.mkdir()
    spec.vmm_log.write_text("booting\nboom: no such device\n")
    backend = _backend(name)
    err = backend._launch_failed(spec, "exit status 1")
    assert isinstance(err, HostToolError)
    assert err.message == (f"{backend.vmm_label} failed to start VM {spec.name}: exit status 1 "
                           "(boom: no such device)")
    assert err.hint is not None and str(spec.vmm_log) in err.hint and "booting" in err.hint
    assert {p.name for p in spec.run_dir.iterdir()} == (ALL_NAMES - BACKENDS[name][1]) | {"keep"}
    spec.vmm_log.write_text("")
    assert backend._launch_failed(spec, "gone").message.endswith(": gone (no output)")


def test_a_stop_finding_its_vmm_inside_its_exit_waits_before_removing_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside its exit a VMM no longer shows its argv but still holds its files (a TAP):
    the stop says GONE, yet removes the runtime files only once it really exited.
    Simulated: the kernel's PF_EXITING flag on a ``sleep`` and its empty cmdline."""
    spec = _spec(tmp_path)
    _fill_run_dir(spec)
    child = spawn(["sleep", "30"])
    started = proc.start_time(child.pid)
    assert started is not None
    spec.pidfile.write_text(f"{child.pid}\n")
    handle = Handle("qemu", spec.vm_id, child.pid, started, spec.qmp_socket, spec.pidfile,
                    spec.vmm_log, (str(spec.pidfile),))
    seem_exiting(monkeypatch, child.pid)
    backend = QemuBackend("/nonexistent/vmm")

    async def scenario() -> tuple[StopOutcome, bool]:
        def exit_now() -> None:  # the exit completes: its files are let go
            child.kill()
            assert spec.pidfile.exists()  # not removed while it still held them

        asyncio.get_running_loop().call_later(0.3, exit_now)
        outcome = await backend.shutdown(handle, graceful=True, timeout=5)
        return outcome, proc.read_stat(child.pid) is None

    outcome, reaped = asyncio.run(scenario())
    child.returncode = -9
    assert outcome is StopOutcome.GONE and reaped
    assert not spec.pidfile.exists() and not spec.qmp_socket.exists()
