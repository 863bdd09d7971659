"""Workspaces against real guests: a host repository in, the guest's edits back as a patch.

Two VMs: one kept (``vm run PATH --name``) that goes through export, ``--base-commit``,
stop/start, a SIGKILLed daemon and ``vm exec``; one ``vm run PATH --rm`` whose command
fails. The repository is ``tests/support/workspace_repo.make_repo``'s.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest

from banger.core.wait import poll_until
from banger.host.proc import pid_alive
from tests.support.workspace_repo import (
    NOT_SHIPPED,
    Repo,
    apply_on,
    git,
    make_repo,
    snapshot,
)
from tests.vm.conftest import VMFactory

pytestmark = pytest.mark.vm

# Edit, add, delete, chmod, rename, a binary change, a retargeted link, odd names; exit 3.
AGENT = r"""set -e
echo 'guest line' >> tracked.txt
printf 'new\n' > 'added by guest.txt'
printf 'odd\n' > "$(printf 'g\376\nname')"
rm run.sh
chmod +x 'with space.txt'
mv dir/nested.txt dir/renamed.txt
printf '\377\000\001' > new.bin
printf 'x' >> bin.dat
ln -sfn staged.txt link_in
exit 3
"""


def banger_bytes(vms: VMFactory, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*vms.env.banger_argv(), *args], env=vms.env.env(),
                          capture_output=True, timeout=300, stdin=subprocess.DEVNULL)


def guest_tree(vms: VMFactory, name: str, dest: Path) -> Path:
    """The guest's /root/repo (without .git), copied here through a tar over vm ssh."""
    out = banger_bytes(vms, "vm", "ssh", name, "--", "tar", "-C", "/root/repo",
                       "--exclude=./.git", "-cf", "-", ".")
    assert out.returncode == 0, out.stderr
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        tar.extractall(dest, filter="tar")
    return dest



def export(vms: VMFactory, name: str, *extra: str) -> tuple[bytes, list[dict[str, str]]]:
    """The patch and the changed files of ``vm workspace export``."""
    out = vms.ok("vm", "workspace", "export", name, "--json", *extra)
    doc = json.loads(out)
    return base64.b64decode(doc["patch_b64"]), doc["files"]


def test_vm_run_with_a_repo_then_export_base_commit_restarts_and_exec(
        vms: VMFactory, tmp_path: Path) -> None:
    repo: Repo = make_repo(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(repo.top, copy, symlinks=True)  # the host as it is at prepare
    vms.names.append("ws")
    run = vms.banger("vm", "run", str(repo.top), "--name", "ws", "--disk", "1G", "--",
                     "sh", "-c", AGENT)
    assert run.returncode == 3, run.stderr

    # Untracked files stay home; the outside link's target never travels.
    assert vms.ssh("ws", "test", "-e", "/root/repo/untracked.txt").returncode == 1
    assert vms.ssh("ws", "test", "-e", "/root/repo/ignored.log").returncode == 1
    marker = repo.secret.decode()
    found = vms.ssh("ws", "sh", "-c", f"grep -rlF {marker} /root /tmp; git -C /root/repo "
                    f"cat-file --batch-all-objects --batch | grep -cF {marker}")
    assert found.stdout.strip() == "0", found.stdout
    link = vms.ssh("ws", "readlink", "/root/repo/link_out").stdout.strip()
    assert link == str(tmp_path / "home" / ".ssh" / "id_ed25519")

    patch, files = export(vms, "ws")
    assert {f["path"] for f in files} >= {"tracked.txt", "run.sh", "dir/renamed.txt",
                                          "new.bin", "g\\xfe\\x0aname", "with space.txt"}
    apply_on(copy, patch)
    assert snapshot(copy, skip=frozenset(NOT_SHIPPED)) == snapshot(
        guest_tree(vms, "ws", tmp_path / "guest"))

    # A guest commit: --base-commit starts after it.
    committed = vms.banger("vm", "exec", "ws", "--", "sh", "-c",
                           "git add -A && git -c user.name=g -c user.email=g@example.invalid "
                           "commit -qm guest && echo after > after.txt && git rev-parse HEAD")
    assert committed.returncode == 0, committed.stderr
    sha = committed.stdout.strip().splitlines()[-1]
    _, since = export(vms, "ws", "--base-commit", sha)
    assert [f["path"] for f in since] == ["after.txt"]
    listed = vms.ok("vm", "list")
    header, _, row = listed.splitlines()[:3]
    assert header.split()[-1] == "WORKSPACE" and row.split()[-1] == repo.top.name

    # Stop/start keeps the workspace; exec on a stopped VM is refused.
    before, _ = export(vms, "ws")
    vms.ok("vm", "stop", "ws")
    refused = vms.banger("vm", "exec", "ws", "--", "true")
    assert refused.returncode != 0 and "start it first: banger vm start ws" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) <= 2, refused.stderr
    vms.ok("vm", "start", "ws")
    assert export(vms, "ws")[0] == before

    # A daemon killed between prepare and export loses nothing.
    pid = vms.env.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert poll_until(lambda: not pid_alive(pid), timeout=10)
    assert export(vms, "ws")[0] == before
    assert vms.env.daemon_pid() not in (None, pid)

    # exec warns once the host's HEAD moves; --auto-prepare ships the host tree again.
    git(repo.top, "commit", "-qam", "host moves on")
    warned = vms.banger("vm", "exec", "ws", "--", "cat", "after.txt")
    assert warned.returncode == 0 and warned.stdout == "after\n"
    assert "HEAD moved" in warned.stderr and "--auto-prepare" in warned.stderr
    synced = vms.banger("vm", "exec", "ws", "--auto-prepare", "--", "sh", "-c",
                        "git rev-parse HEAD; test ! -e after.txt; git status --porcelain")
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.split() == [repo.head()] and "HEAD moved" not in synced.stderr
    vms.ok("vm", "delete", "ws")


def test_vm_run_rm_with_untracked_files_removes_the_vm_when_the_command_fails(
        vms: VMFactory, tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    run = vms.banger("vm", "run", str(repo.top / "dir"), "--rm", "--include-untracked",
                     "--name", "gone", "--disk", "1G", "--", "sh", "-c",
                     "pwd; cat untracked.txt; test ! -e ignored.log; exit 5")
    assert run.returncode == 5, run.stderr
    assert run.stdout.splitlines() == ["/root/repo", repo.untracked.decode()]
    assert "gone" not in vms.ok("vm", "list", "-q").split()
    assert vms.rows() == []
