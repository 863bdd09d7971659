"""Warm snapshots against real guests (docs/snapshots.md): few boots, one template each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from banger.core.wait import poll_until
from banger.host.proc import pid_alive
from tests.support.hostcheck import processes_naming
from tests.vm.conftest import VMFactory

pytestmark = pytest.mark.vm

PROBE = ("hostname; cat /etc/machine-id; head -c 32 /dev/urandom | sha256sum; "
         "cat /sys/class/net/eth0/address; cat /root/.banger/ssh_host_ed25519_key.pub; "
         "date +%s.%N")


def _warm(vms: VMFactory) -> str:
    out = json.loads(vms.ok("image", "warm", "--vcpu", "1", "--memory", "512", "--json"))
    return str(out["id"])


def test_two_clones_from_one_snapshot_are_distinct_and_reachable(vms: VMFactory) -> None:
    snap = _warm(vms)
    with ThreadPoolExecutor(2) as pool:
        infos = list(pool.map(lambda n: vms.create(n, "--vcpu", "1", "--memory", "512"),
                              ["c1", "c2"]))
    for info in infos:
        assert info["started_from"] == f"snapshot {snap}"
    probes = {}
    for name in ("c1", "c2"):
        before = time.time()  # the guest's clock is read between these two, whatever the load
        out = vms.ssh(name, "sh", "-c", PROBE)
        after = time.time()
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == name
        assert before - 1.0 < float(lines[-1]) < after + 1.0, (before, lines[-1], after)
        probes[name] = lines[1:5]
    # machine-id, urandom, MAC and host key all differ
    assert all(a != b for a, b in zip(probes["c1"], probes["c2"], strict=True)), probes
    assert vms.ssh("c1", "sh", "-c", "echo mine > /root/f && sync").returncode == 0
    assert vms.ssh("c2", "test", "-e", "/root/f").returncode == 1
    for info in infos:  # its own address only (the template's was flushed)
        addrs = vms.ssh(str(info["name"]), "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert addrs.count(" inet ") == 1 and f"{info['guest_ip']}/" in addrs, addrs
    # stop/start of a restored VM boots its own disks
    assert vms.ok("vm", "stop", "c1") is not None
    assert vms.ok("vm", "start", "c1") is not None
    assert vms.ssh("c1", "cat", "/root/f").stdout.strip() == "mine"
    assert vms.show("c1")["started_from"].startswith("cold")


def test_a_corrupt_snapshot_falls_back_cold_saying_why(vms: VMFactory) -> None:
    snap = _warm(vms)
    state = Path(vms.env.state_dir) / "snapshots" / snap / "state"
    with open(state, "r+b") as f:  # truncated and scribbled over
        f.truncate(state.stat().st_size // 3)
        f.seek(100)
        f.write(b"\xff" * 4096)
    info = vms.create("cold1", "--vcpu", "1", "--memory", "512")
    assert str(info["started_from"]).startswith(f"cold (snapshot {snap} failed"), info
    assert vms.ssh("cold1", "hostname").stdout.strip() == "cold1"
    assert not state.exists()  # dropped; the next warm replaces it


def _template_running(top: Path) -> bool:
    for pidfile in top.glob("*/vmm.pid"):
        try:
            if pid_alive(int(pidfile.read_text())):
                return True
        except (OSError, ValueError):
            pass
    return False


def test_a_daemon_killed_while_saving_leaves_nothing_after_restart(vms: VMFactory) -> None:
    """SIGKILL the daemon while the template boots/saves: its VMM runs on (daemonized) and
    a .tmp-* build is left; the next daemon kills the one and removes the other. (The CLI
    is killed first: it would start a new daemon on its own, which recovers at once.)"""
    snaps, runs = vms.env.state_dir / "snapshots", vms.env.runtime_dir / "snap"
    cli = subprocess.Popen([*vms.env.banger_argv(), "image", "warm", "--vcpu", "1",
                            "--memory", "512"], env=vms.env.env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the template's guest runs (so QEMU's -daemonize finished: a daemon killed while
        # QEMU's first process still waits takes that launch down with it)
        assert poll_until(lambda: _template_running(runs) and any(
            p.stat().st_size for p in snaps.glob(".tmp-*/console.log")), timeout=60,
            interval=0.05)
    finally:
        cli.kill()
        cli.wait()
    pid = vms.env.daemon_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    assert poll_until(lambda: not pid_alive(pid), timeout=10)
    orphans = processes_naming(str(runs), program="qemu-system")
    assert orphans, "the template VMM should outlive its daemon (else this proves nothing)"
    assert list(snaps.glob(".tmp-*"))
    vms.ok("daemon", "start")
    assert poll_until(lambda: not any(pid_alive(p) for p in orphans), timeout=10), orphans
    assert list(snaps.glob(".tmp-*")) == []
    assert not runs.exists() or list(runs.iterdir()) == []


def test_two_racing_warms_of_one_shape_save_once(vms: VMFactory) -> None:
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda _: vms.ok("image", "warm", "--vcpu", "1", "--memory", "512",
                                              "--json"), range(2)))
    ids = {json.loads(out)["id"] for out in outs}
    assert len(ids) == 1, outs
    log = (vms.env.state_dir / "bangerd.log").read_text(errors="replace")
    assert log.count("snapshot made") == 1, log[-3000:]
    assert list((vms.env.state_dir / "snapshots").glob(".tmp-*")) == []
