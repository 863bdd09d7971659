"""The warm pool against real guests (docs/snapshots.md, "Warm pool"): ``warm_pool = 1`` of
the default shape (1 vCPU, 512 MiB, a 1 GiB work disk, as the factory's creates ask)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from banger.core.wait import poll_until
from banger.host.proc import pid_alive
from tests.support.hostcheck import processes_naming
from tests.support.workspace_repo import make_repo
from tests.vm.conftest import VMFactory

pytestmark = pytest.mark.vm

PROBE = ("hostname; cat /etc/machine-id; cat /root/.banger/ssh_host_ed25519_key.pub; "
         "ip -4 -o addr show eth0; date +%s.%N")


def _pool_of_one(vms: VMFactory) -> str:
    """Configure the pool, warm the default shape's snapshot; return its id."""
    vms.env.extra_env.update(BANGER_WARM_POOL="1", BANGER_DEFAULT_VCPU="1",
                             BANGER_DEFAULT_MEMORY_MIB="512", BANGER_DEFAULT_DISK="1G")
    return str(json.loads(vms.ok("image", "warm", "--json"))["id"])


def _filled(vms: VMFactory, times: int) -> list[str]:
    """Wait until the pool has been filled ``times`` times; the members' ids now."""
    log = vms.env.state_dir / "bangerd.log"
    assert poll_until(lambda: log.read_text(errors="replace").count("warm pool member ready")
                      >= times, timeout=120, interval=0.1), vms.dump_logs()[-3000:]
    return sorted(p.name for p in (vms.env.state_dir / "pool").iterdir())


def _masters(vms: VMFactory, vm_id: str) -> dict[int, str]:
    """The ssh masters of the VM's shared connection (their argv names its control path)."""
    return processes_naming(str(vms.env.runtime_dir / "vms" / vm_id / "ssh"), program="ssh")


def test_a_create_claims_the_pool_member_with_its_own_identity_and_the_pool_refills(
        vms: VMFactory, tmp_path: Path) -> None:
    snap = _pool_of_one(vms)
    [first] = _filled(vms, 1)
    assert vms.ok("vm", "list", "-q").split() == []  # a member is no VM of the owner's
    # sshd accepted our key at the fill, over a connection held while the guest is paused:
    # longer than keepalives would allow (15 s), and the claim is ready over it
    master = _masters(vms, first)
    assert len(master) == 1, master
    time.sleep(16)
    p1 = vms.create("p1")
    assert p1["id"] == first and p1["started_from"] == f"snapshot {snap} (warm pool)", p1
    assert _masters(vms, first) == master
    [second] = _filled(vms, 2)  # refilled in the background
    assert second != first
    p2 = vms.create("p2")
    assert p2["id"] == second and str(p2["started_from"]).endswith("(warm pool)")
    probes = {}
    for info in (p1, p2):
        before = time.time()
        out = vms.ssh(str(info["name"]), "sh", "-c", PROBE)  # pinned host key: reachable
        after = time.time()
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == info["name"]
        assert f"{info['guest_ip']}/" in lines[3] and lines[3].count(" inet ") == 1, lines
        # its clock was set at the claim (it stood still while paused for seconds): read
        # within the ssh call, give or take what a TCG guest loses on a loaded host (~1 s)
        assert before - 2.0 < float(lines[4]) < after + 1.0, (before, lines[4], after)
        probes[info["name"]] = lines[1:4]
    assert all(a != b for a, b in zip(probes["p1"], probes["p2"], strict=True)), probes
    _filled(vms, 3)
    # a request the pool cannot serve (another disk size) restores from the snapshot itself
    other = vms.create("n1", "--disk", "2G")
    assert other["started_from"] == f"snapshot {snap}", other
    assert vms.ssh("n1", "hostname").stdout.strip() == "n1"
    assert sorted(vms.ok("vm", "list", "-q").split()) == ["n1", "p1", "p2"]
    # a workspace (copied over the held connection) and NAT (host rules added at the claim)
    repo = make_repo(tmp_path)
    ran = vms.banger("vm", "run", str(repo.top), "--nat", "--name", "w1", "--",
                     "sh", "-c", "cat tracked.txt; git log --format=%s")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["v1 edited on the host", "first"], ran.stdout
    w1 = vms.show("w1")
    assert str(w1["started_from"]).endswith("(warm pool)") and w1["nat"] is True, w1
    nat = subprocess.run(["nft", "-j", "list", "set", "ip", f"banger_{vms.bridge}",
                          "nat_guests"], capture_output=True, text=True, check=True)
    assert f'"{w1["guest_ip"]}"' in nat.stdout, nat.stdout


def test_a_daemon_killed_with_a_filled_pool_leaves_nothing_after_restart(
        vms: VMFactory) -> None:
    _pool_of_one(vms)
    [member] = _filled(vms, 1)
    member_run = vms.env.runtime_dir / "vms" / member
    vmms = processes_naming(str(member_run), program="qemu-system")
    assert vmms, "the member's VMM should run (else this proves nothing)"
    masters = _masters(vms, member)
    assert masters, "the member's held SSH connection should be up"
    pid = vms.env.daemon_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    assert poll_until(lambda: not pid_alive(pid), timeout=10)
    assert all(pid_alive(p) for p in vmms)  # daemonized: it outlives its daemon
    vms.env.extra_env["BANGER_WARM_POOL"] = "0"  # the restarted daemon fills nothing new
    vms.ok("daemon", "start")
    assert poll_until(lambda: not any(pid_alive(p) for p in vmms), timeout=10), vmms
    assert poll_until(lambda: not any(pid_alive(p) for p in masters), timeout=10), masters
    assert not (vms.env.state_dir / "vms" / member).exists() and not member_run.exists()
    assert list((vms.env.state_dir / "pool").iterdir()) == []
    # its TAP: reaped with the idle ones (the factory's finalizer checks the bridge is empty)


def test_with_file_sync_a_claim_copies_the_synced_files_into_the_guest(
        vms: VMFactory, tmp_path: Path) -> None:
    """``[[file_sync]]`` no longer keeps the pool empty: the claiming create copies the
    files, read from the home at the claim, into the running guest's /root over SSH; a
    symlink in the home is left out, a name a shell would split lands as itself."""
    home = tmp_path / "home"
    (home / ".tool").mkdir(parents=True)
    token = home / ".tool" / "token"
    token.write_text("at the fill\n")
    (home / ".tool" / "$(touch PWNED) *").write_text("plain data\n")
    (home / ".tool" / "leak").symlink_to(tmp_path / "secret")
    (tmp_path / "secret").write_text("SECRET\n")
    vms.env.extra_env["HOME"] = str(home)  # the daemon's Path.home(), the owner's home
    vms.env.config_file.write_text('[[file_sync]]\nhost = "~/.tool"\nguest = "/root/.tool"\n'
                                   'mode = "0600"\n')
    snap = _pool_of_one(vms)
    [member] = _filled(vms, 1)
    token.write_text("at the claim\n")  # read at the claim, not at the fill
    vms.names.append("fs1")
    made = vms.banger("vm", "create", "--name", "fs1", "--disk", "1G", "--json")
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    assert info["id"] == member and info["started_from"] == f"snapshot {snap} (warm pool)"
    assert "claimed from the warm pool" in made.stderr, made.stderr
    [stage] = [line for line in made.stderr.splitlines() if "file_sync" in line]
    assert "2 files copied, 1 skipped" in stage, made.stderr
    out = vms.ssh("fs1", "sh", "-c", "cat /root/.tool/token; stat -c '%a %u %g %F' "
                  "/root/.tool/token /root/.tool; LC_ALL=C ls -A /root/.tool; "
                  "cat '/root/.tool/$(touch PWNED) *'; ls -A /root")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["at the claim", "600 0 0 regular file", "755 0 0 directory"], lines
    assert lines[3:6] == ["$(touch PWNED) *", "token", "plain data"], lines
    assert "PWNED" not in lines[6:] and not any(n.startswith(".banger-sync") for n in lines)
