"""Process identity through /proc: pidfiles, start times, argv markers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from banger.host import proc_identity as proc
from banger.vmm.qemu import QemuBackend, ownership_markers
from tests.support.processes import seem_exiting, spawn
from tests.unit.test_qemu_vmspec import make_spec


@pytest.mark.parametrize("text", ["", "abc", "-5", "0", "12 34"])
def test_a_pidfile_without_a_positive_pid_reads_as_none(tmp_path: Path, text: str) -> None:
    (tmp_path / "pid").write_text(text)
    assert proc.read_pidfile(tmp_path / "pid") is None


def test_pidfile_reads_a_pid_with_a_trailing_newline_and_missing_reads_none(
    tmp_path: Path,
) -> None:
    (tmp_path / "pid").write_text("4242\n")
    assert proc.read_pidfile(tmp_path / "pid") == 4242
    assert proc.read_pidfile(tmp_path / "missing") is None


@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_a_pidfile_that_is_not_a_regular_file_names_no_pid(tmp_path: Path, plant: str) -> None:
    pidfile = tmp_path / "pid"
    if plant == "symlink":
        (tmp_path / "elsewhere").write_text("4242\n")
        pidfile.symlink_to(tmp_path / "elsewhere")
    else:
        os.mkfifo(pidfile)  # opened without O_NONBLOCK, a read would hang here
    assert proc.read_pidfile(pidfile) is None
    assert not proc.pidfile_names(pidfile, 4242)


def test_qemu_adopts_a_vmm_named_by_its_pidfile_but_never_through_a_symlink(
    tmp_path: Path,
) -> None:
    spec = replace(make_spec(), run_dir=tmp_path / "run")
    spec.run_dir.mkdir()
    # A process whose argv carries the VM's markers, as its QEMU's would.
    child = spawn([sys.executable, "-c", "import time; time.sleep(30)",
                   *ownership_markers(spec)])
    try:
        planted = tmp_path / "planted-pid"
        planted.write_text(f"{child.pid}\n")
        spec.pidfile.symlink_to(planted)
        assert QemuBackend().adopt(spec.pidfile, spec) is None
        spec.pidfile.unlink()
        spec.pidfile.write_text(f"{child.pid}\n")
        handle = QemuBackend().adopt(spec.pidfile, spec)
        assert handle is not None and handle.pid == child.pid  # the same file, not a symlink
    finally:
        child.kill()
        child.wait()


def test_a_live_process_matches_only_with_its_start_time_and_markers(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker-arg")
    # The marker is an argument the program ignores.
    child = spawn([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        started = proc.start_time(child.pid)
        assert started is not None
        assert proc.is_running(child.pid, started, [marker])
        assert not proc.is_running(child.pid, started + 1, [marker])  # a reused pid
        assert not proc.is_running(child.pid, started, [marker, "not-in-argv"])
    finally:
        child.kill()
        child.wait()
    assert not proc.is_running(child.pid, started, [marker])


def test_a_process_in_the_middle_of_exec_is_running_when_no_marker_is_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a process execs, the kernel shows an empty cmdline (CI once failed a launch so)."""
    child = spawn(["sleep", "30"])
    try:
        started = proc.start_time(child.pid)
        assert started is not None
        monkeypatch.setattr(proc, "cmdline", lambda pid: None)
        assert proc.is_running(child.pid, started, ())
        assert not proc.is_running(child.pid, started, ["sleep"])  # a marker needs the argv
    finally:
        child.kill()
        child.wait()


def test_wait_until_gone_waits_for_a_process_inside_its_exit_to_be_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inside its exit a process shows an empty cmdline but still holds its files (a VMM
    its TAP): "gone" only once it really exited. Simulated: PF_EXITING set, no argv."""
    child = spawn(["sleep", "30"])
    started = proc.start_time(child.pid)
    assert started is not None
    seem_exiting(monkeypatch, child.pid)

    async def scenario() -> tuple[bool, tuple[str, int] | None]:
        asyncio.get_running_loop().call_later(0.3, child.kill)
        gone = await proc.wait_until_gone(child.pid, started, ["sleep"], timeout=10)
        return gone, proc.read_stat(child.pid)

    gone, after = asyncio.run(scenario())
    child.returncode = -9  # reaped by wait_until_gone
    assert gone and after is None  # it returned once the process had exited, and reaped it


def test_an_exited_child_is_reaped_and_not_running() -> None:
    child = spawn(["sleep", "0.1"])
    started = proc.start_time(child.pid) or 0
    assert proc.is_running(child.pid, started, ["sleep"])
    assert asyncio.run(proc.wait_until_gone(child.pid, started, ["sleep"], timeout=5))
    child.returncode = 0  # reaped by wait_until_gone, not by Popen
    assert proc.read_stat(child.pid) is None


def test_wait_until_gone_times_out_on_a_process_that_stays() -> None:
    child = spawn(["sleep", "30"])
    try:
        started = proc.start_time(child.pid)
        assert started is not None
        assert (
            asyncio.run(proc.wait_until_gone(child.pid, started, ["sleep"], timeout=0.1)) is False
        )
    finally:
        child.kill()
        child.wait()


def test_stat_parsing_survives_a_command_name_with_spaces_and_parens(tmp_path: Path) -> None:
    exe = tmp_path / "a) b ("
    os.symlink("/bin/sleep", exe)
    child = subprocess.Popen([str(exe), "30"])
    try:
        stat = proc.read_stat(child.pid)
        assert stat is not None and stat[0] in "RSD" and stat[1] > 0
    finally:
        child.kill()
        child.wait()
