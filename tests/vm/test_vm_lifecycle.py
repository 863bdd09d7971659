"""VM lifecycle against real guests (QEMU; TCG where KVM is unusable)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from banger.core.wait import poll_until
from banger.host.proc import pid_alive
from tests.vm.conftest import VMFactory

pytestmark = pytest.mark.vm


def test_stop_preserves_files_written_to_root_across_start(vms: VMFactory) -> None:
    info = vms.create("box")
    assert info["state"] == "running" and info["net_mode"] == "tap"
    assert vms.ssh("box", "sh", "-c", "echo kept > /root/note && sync").returncode == 0
    assert vms.ok("vm", "stop", "box")
    assert vms.show("box")["state"] == "stopped"
    assert vms.ok("vm", "start", "box")
    result = vms.ssh("box", "cat", "/root/note")
    assert result.stdout.strip() == "kept"
    vms.ok("vm", "delete", "box")
    assert vms.ok("vm", "list", "-q") == ""


def test_guest_gets_hostname_ip_and_disks_from_banger(vms: VMFactory) -> None:
    info = vms.create("named")
    out = vms.ssh("named", "sh", "-c", "hostname; ip -4 -o addr show eth0; findmnt -no SOURCE /root"
                  "; findmnt -no SOURCE /").stdout.split("\n")
    assert out[0] == "named"
    assert f"{info['guest_ip']}/24" in out[1]
    assert out[2] == "/dev/vdb" and out[3] == "/dev/vda"


def test_restart_changes_the_boot_id(vms: VMFactory) -> None:
    vms.create("rb")
    first = vms.ssh("rb", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
    vms.ok("vm", "restart", "rb")
    second = vms.ssh("rb", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
    assert first and second and first != second


def test_kill_with_sigkill_leaves_the_vm_stopped_and_cleaned_up(vms: VMFactory) -> None:
    vms.create("victim")
    pid = int(vms.show("victim")["pid"])  # type: ignore[arg-type]
    vms.ok("vm", "kill", "--signal", "KILL", "victim")
    shown = vms.show("victim")
    assert shown["state"] == "stopped" and shown["pid"] is None and shown["tap_name"] is None
    assert not pid_alive(pid)


def test_set_vcpu_on_a_stopped_vm_changes_nproc(vms: VMFactory) -> None:
    vms.create("cpus", "--vcpu", "1")
    assert vms.ssh("cpus", "nproc").stdout.strip() == "1"
    refused = vms.banger("vm", "set", "cpus", "--vcpu", "2")
    assert refused.returncode != 0 and "stop it first" in refused.stderr
    vms.ok("vm", "stop", "cpus")
    vms.ok("vm", "set", "cpus", "--vcpu", "2", "--disk", "2G")
    vms.ok("vm", "start", "cpus")
    assert vms.ssh("cpus", "nproc").stdout.strip() == "2"
    size = vms.ssh("cpus", "sh", "-c", "df -B1M --output=size /root | tail -1").stdout
    assert int(size) > 1500


def test_exit_codes_propagate_through_vm_ssh_and_vm_run(vms: VMFactory) -> None:
    vms.create("codes")
    assert vms.ssh("codes", "sh", "-c", "exit 42").returncode == 42
    run = vms.banger("vm", "run", "--rm", "--name", "runner", "--disk", "1G", "--",
                     "sh", "-c", "echo out; exit 42")
    assert run.returncode == 42, run.stderr
    assert "out" in run.stdout
    assert "runner" not in vms.ok("vm", "list", "-q").split()


def test_invalid_name_and_zero_vcpu_leave_no_row(vms: VMFactory) -> None:
    for args, needle in (
        (["--name", "Bad_Name"], "invalid VM name"),
        (["--name", "ok", "--vcpu", "0"], "vCPU"),
        (["--name", "ok", "--memory", "12"], "memory"),
        (["--name", "ok", "--disk", "0"], "disk"),
        (["--name", "ok", "--image", "missing"], "not found"),
    ):
        result = vms.banger("vm", "create", *args)
        assert result.returncode != 0, args
        assert needle in result.stderr, (args, result.stderr)
    assert vms.rows() == []


def test_two_concurrent_vm_runs_both_succeed(vms: VMFactory) -> None:
    def run(name: str) -> tuple[int, str]:
        result = vms.banger("vm", "run", "--rm", "--name", name, "--disk", "1G", "--", "true")
        return result.returncode, result.stderr

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, ["one", "two"]))
    assert [code for code, _ in results] == [0, 0], results
    assert vms.rows() == []


def test_vm_survives_a_sigkilled_daemon_and_stays_manageable(vms: VMFactory) -> None:
    vms.create("sturdy")
    vm_pid = int(vms.show("sturdy")["pid"])  # type: ignore[arg-type]
    daemon_pid = vms.env.daemon_pid()
    assert daemon_pid
    os.kill(daemon_pid, signal.SIGKILL)
    assert poll_until(lambda: not pid_alive(daemon_pid), timeout=10)
    assert pid_alive(vm_pid)
    shown = vms.show("sturdy")  # auto-starts a new daemon, which adopts the VM
    assert shown["state"] == "running" and shown["pid"] == vm_pid
    assert vms.ssh("sturdy", "true").returncode == 0
    vms.ok("vm", "stop", "sturdy")
    assert not pid_alive(vm_pid)


def test_daemon_killed_mid_create_leaves_nothing_after_restart(vms: VMFactory) -> None:
    import subprocess

    proc = subprocess.Popen(
        [*vms.env.banger_argv(), "vm", "create", "--name", "halfway", "--disk", "1G"],
        env=vms.env.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    db = vms.env.state_dir / "state.db"

    def booting() -> bool:  # a create boots in state 'creating': its VMM has a pid
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT state, pid FROM vms WHERE name='halfway'").fetchone()
        return bool(row) and row[0] == "creating" and row[1] is not None

    assert poll_until(booting, timeout=60)
    daemon_pid = vms.env.daemon_pid()
    assert daemon_pid
    os.kill(daemon_pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert vms.ok("vm", "list", "-q") == ""  # the new daemon's reconcile removed it
    assert vms.rows() == []


def test_vm_list_and_show_speak_json(vms: VMFactory) -> None:
    vms.create("listed")
    listed = json.loads(vms.ok("vm", "list", "--json"))
    assert [v["name"] for v in listed] == ["listed"]
    assert listed[0]["state"] == "running"
    assert vms.ok("ps", "-q").split() == ["listed"]
    log = vms.ok("vm", "logs", "listed")
    assert "Linux version" in log or "banger-init" in log


def test_without_net_admin_vms_fall_back_to_user_mode_networking(vms: VMFactory) -> None:
    import subprocess

    started = subprocess.run(
        ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin",
         *vms.env.banger_argv(), "daemon", "start"],
        env=vms.env.env(), capture_output=True, text=True, timeout=60,
    )
    assert started.returncode == 0, started.stderr
    info = vms.create("slirp")
    assert info["net_mode"] == "user" and info["guest_ip"] is None
    assert info["ssh_host"] == "127.0.0.1" and int(info["ssh_port"]) > 1024  # type: ignore[arg-type]
    assert "user-mode" in vms.ok("vm", "show", "slirp")
    assert vms.ssh("slirp", "sh", "-c", "exit 7").returncode == 7


def test_verbs_on_several_vms_run_valid_refs_and_report_missing_ones(vms: VMFactory) -> None:
    vms.create("alpha", "--no-start")
    vms.create("beta", "--no-start")
    result = vms.banger("vm", "start", "alpha", "ghost", "beta")
    assert result.returncode != 0
    assert "VM 'ghost' not found" in result.stderr
    lines = [line for line in result.stdout.splitlines() if line]
    assert lines == ["alpha: started (running)", "beta: started (running)"]
    assert vms.ok("vm", "stop", "alpha", "beta").splitlines() == [
        "alpha: stopped (stopped)", "beta: stopped (stopped)"
    ]
    asks = vms.banger("vm", "prune")
    assert asks.returncode != 0 and "pass -f" in asks.stderr
    assert vms.rows() == ["alpha", "beta"]
    assert vms.ok("vm", "prune", "-f").splitlines() == [
        "alpha: deleted (stopped)", "beta: deleted (stopped)"
    ]
    assert vms.rows() == []
