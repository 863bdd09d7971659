"""Unhappy paths with real guests: a failure in any create stage leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from banger.core.wait import poll_until
from tests.vm.conftest import VMFactory

pytestmark = pytest.mark.vm


def _fails(vms: VMFactory, *args: str, needle: str, keep: tuple[str, ...] = ()) -> str:
    """Create fails with ``needle``; only the VMs in ``keep`` (made before) remain."""
    result = vms.banger("vm", "create", "--disk", "1G", *args)
    assert result.returncode != 0
    assert needle in result.stderr, result.stderr
    assert vms.rows() == list(keep)
    assert len(list((vms.env.state_dir / "vms").glob("*"))) == len(keep)
    return result.stderr


def path_with_a_failing_vmm(tmp_path: Path) -> str:
    """A PATH whose QEMU fails at once, the way a kernel it cannot load makes it."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    qemu = fake / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\necho 'qemu: could not load kernel' >&2\nexit 1\n")
    qemu.chmod(0o755)
    return f"{fake}:{os.environ['PATH']}"


def test_reserve_failure_when_the_subnet_is_full(vms: VMFactory) -> None:
    vms.env.extra_env["BANGER_BRIDGE_CIDR"] = "172.31.5.1/30"  # room for one guest
    vms.create("first", "--no-start")
    _fails(vms, "--name", "second", "--no-start", needle="no free guest IP", keep=("first",))
    vms.ok("vm", "delete", "first")


def test_disks_failure_on_a_full_disk(vms: VMFactory, tmp_path: Path) -> None:
    vm_dir = vms.env.state_dir / "vms"
    vm_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(vm_dir)], check=True)
    try:
        _fails(vms, "--name", "full", needle="No space left")
    finally:
        subprocess.run(["umount", "-l", str(vm_dir)], check=True)


def test_network_failure_when_the_bridge_name_is_taken(vms: VMFactory) -> None:
    subprocess.run(["ip", "tuntap", "add", "dev", vms.bridge, "mode", "tap"], check=True)
    try:
        _fails(vms, "--name", "nonet", needle="is not a bridge")
    finally:
        subprocess.run(["ip", "link", "delete", vms.bridge], check=True)


def test_boot_failure_when_the_vmm_dies_at_launch(vms: VMFactory, tmp_path: Path) -> None:
    vms.env.extra_env["PATH"] = path_with_a_failing_vmm(tmp_path)
    stderr = _fails(vms, "--name", "noboot", needle="failed to start")
    assert "could not load kernel" in stderr


def test_ssh_failure_when_the_guest_is_not_ready_in_time(vms: VMFactory) -> None:
    vms.env.extra_env["BANGER_SSH_READY_TIMEOUT"] = "0.5"
    _fails(vms, "--name", "slow", needle="did not accept our key")


def test_a_vmm_killed_behind_our_back_marks_the_vm_stopped(vms: VMFactory) -> None:
    vms.create("doomed")
    pid = int(vms.show("doomed")["pid"])  # type: ignore[arg-type]
    os.kill(pid, signal.SIGKILL)
    assert poll_until(lambda: vms.show("doomed")["state"] == "stopped", timeout=30)
    assert vms.show("doomed")["tap_name"] is None
    assert vms.ok("vm", "start", "doomed")
    assert vms.ssh("doomed", "true").returncode == 0


def test_a_failed_start_leaves_the_vm_in_error_saying_why_and_a_later_start_boots(
    vms: VMFactory, tmp_path: Path
) -> None:
    vms.create("flaky", "--no-start")
    made = vms.show("flaky")
    assert (made["state"], made["state_reason"]) == ("created", "created without booting "
                                                     "(--no-start)")
    vms.ok("daemon", "stop")
    vms.env.extra_env["PATH"] = path_with_a_failing_vmm(tmp_path)
    result = vms.banger("vm", "start", "flaky")
    assert result.returncode != 0 and "failed to start" in result.stderr
    failed = vms.show("flaky")
    assert failed["state"] == "error" and (failed["pid"], failed["tap_name"]) == (None, None)
    reason = str(failed["state_reason"])
    assert reason.startswith("start failed: ") and "could not load kernel" in reason
    vms.ok("daemon", "stop")
    del vms.env.extra_env["PATH"]
    vms.ok("vm", "start", "flaky")
    shown = vms.ok("vm", "show", "flaky")
    assert "state:" in shown and "running" in shown
    assert "booted, sshd accepts our key" in shown.split("last change:", 1)[1]
    assert vms.ssh("flaky", "true").returncode == 0
