"""Real loop devices through ``bangerd-root``'s socket (root, ``/dev/loop-control``): a
sparse file of the owner's state dir is attached and detached and nothing is left; a
loop device of anyone else's file, a symlinked or foreign backing file are refused and
left as they were. dm-snapshots and the jailed launch run for real only where the host
has device-mapper and Firecracker's binaries; elsewhere they skip, naming what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.core.errors import Forbidden, InternalError
from banger.core.wait import poll_until
from banger.helper import blockguard, guard
from banger.helper.guard import Owner
from banger.host import blockdev
from banger.host.helper_client import HelperHostOps
from banger.host.jailer import FIRECRACKER_BIN, JAILER_BIN
from banger.host.privileged import InProcessHostOps
from tests.support.helper_server import serve_helper

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/loop-control").exists(),
                       reason="needs root and loop devices (/dev/loop-control)"),
]


def attached() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


@pytest.fixture
def owner() -> Iterator[Owner]:
    base = Path(tempfile.mkdtemp(prefix="bgloop-"))
    (base / "state" / "vms").mkdir(parents=True)
    (base / "run").mkdir()
    yield Owner("root", 0, 0, (base / "state", base / "run"))
    for line in attached().splitlines():  # whatever a failed test left attached
        if str(base) in line:
            subprocess.run(["losetup", "-d", line.split(":")[0]], check=False)
    shutil.rmtree(base)


@pytest.fixture
def helper(owner: Owner) -> Iterator[HelperHostOps]:
    yield from serve_helper(owner, InProcessHostOps(), owner.dirs[1] / "h.sock")


def sparse(path: Path, size: int = 8 << 20) -> str:
    with path.open("wb") as f:
        f.truncate(size)
    return str(path)


def test_a_loop_device_of_a_state_file_is_attached_and_detached_leaving_nothing(
    helper: HelperHostOps, owner: Owner
) -> None:
    disk = sparse(owner.dirs[0] / "vms" / "rootfs.cow")
    device = helper.attach_loop(disk, False)
    assert blockdev.LOOP_RE.fullmatch(device) and disk in attached()
    backing = blockdev.loop_backing(device)
    assert backing is not None and backing.path == disk
    assert helper.detach_loop(device) is True
    assert disk not in attached()
    assert helper.detach_loop(device) is False  # idempotent


@pytest.mark.parametrize("how", ["outside", "symlink leaf", "symlink middle", "foreign"])
def test_a_backing_file_that_is_not_the_owners_is_refused(
    helper: HelperHostOps, owner: Owner, tmp_path: Path, how: str
) -> None:
    target = sparse(tmp_path / "secret.img")
    state = owner.dirs[0]
    path = {"outside": target, "symlink leaf": str(state / "vms" / "leaf.img"),
            "symlink middle": str(state / "link" / "secret.img"),
            "foreign": sparse(state / "vms" / "foreign.img")}[how]  # fmt: skip
    if how == "symlink leaf":
        os.symlink(target, path)
    elif how == "symlink middle":
        os.symlink(tmp_path, state / "link")
    elif how == "foreign":
        os.chown(path, 4242, 4242)
    with pytest.raises(Forbidden):
        helper.attach_loop(path, True)
    assert target not in attached() and str(state) not in attached()


@pytest.fixture
def foreign_loop(tmp_path: Path) -> Iterator[str]:
    """A loop device some other program attached, on a file outside the owner's dirs."""
    image = sparse(tmp_path / "other.img")
    device = subprocess.run(["losetup", "--find", "--show", image], capture_output=True,
                            text=True, check=True).stdout.strip()
    yield device
    subprocess.run(["losetup", "-d", device], check=False)


def test_another_programs_loop_device_is_neither_detached_nor_snapshotted(
    helper: HelperHostOps, owner: Owner, foreign_loop: str
) -> None:
    with pytest.raises(Forbidden, match="not a loop device the helper attached"):
        helper.detach_loop(foreign_loop)
    mine = helper.attach_loop(sparse(owner.dirs[0] / "vms" / "cow"), False)
    try:
        for origin, cow in ((foreign_loop, mine), (mine, foreign_loop)):
            with pytest.raises(Forbidden):
                helper.create_snapshot("banger-t1", origin, cow)
        with pytest.raises(Forbidden, match="not attached"):
            helper.create_snapshot("banger-t1", "/dev/loop999999", mine)
    finally:
        helper.detach_loop(mine)
    assert blockdev.loop_backing(foreign_loop) is not None, "the foreign loop is untouched"


def test_the_checked_inode_is_attached_even_when_the_path_is_swapped_after_the_check(
    helper: HelperHostOps, owner: Owner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's swap: once the guard has checked ``disk.img``, the owner renames it
    and puts a symlink to a file it may not read there. ``losetup`` gets the checked fd
    (``/dev/fd/N``), so root never opens the symlink's target."""
    other = sparse(tmp_path / "other.img")
    disk = owner.dirs[0] / "vms" / "disk.img"
    sparse(disk)
    checked = os.stat(disk)
    real_open = guard.open_owner_file

    def open_then_swap(path: str, *args: Any) -> int:
        fd = real_open(path, *args)
        os.rename(disk, f"{disk}.old")
        os.symlink(other, disk)
        return fd

    monkeypatch.setattr(guard, "open_owner_file", open_then_swap)
    device = helper.attach_loop(str(disk), False)
    backing = blockdev.loop_backing(device)
    assert backing is not None and (backing.ino, backing.path) == (checked.st_ino, f"{disk}.old")
    assert other not in attached()
    assert helper.detach_loop(device) is True


def test_a_backing_file_deleted_by_the_owner_is_still_detachable(
    helper: HelperHostOps, owner: Owner
) -> None:
    disk = sparse(owner.dirs[0] / "vms" / "gone.img")
    device = helper.attach_loop(disk, False)
    os.unlink(disk)
    assert blockdev.loop_backing(device).path.endswith(" (deleted)")  # type: ignore[union-attr]
    assert helper.detach_loop(device) is True
    assert blockdev.loop_backing(device) is None


def test_a_loop_on_an_owner_file_is_the_owners_only_when_the_helper_attached_it(
    helper: HelperHostOps, owner: Owner, tmp_path: Path
) -> None:
    """Ownership is the helper's registry plus the kernel's inode, not a path: a loop
    someone else attached on the owner's file, and a loop number the helper once used
    that now backs another file, are both refused and left attached."""
    disk = sparse(owner.dirs[0] / "vms" / "theirs.img")
    device = subprocess.run(["losetup", "--find", "--show", disk], capture_output=True,
                            text=True, check=True).stdout.strip()
    try:
        with pytest.raises(Forbidden, match="not a loop device the helper attached"):
            helper.detach_loop(device)
        assert blockdev.loop_backing(device) is not None
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    mine = helper.attach_loop(sparse(owner.dirs[0] / "vms" / "mine.img"), False)
    subprocess.run(["losetup", "-d", mine], check=True)  # behind the helper's back
    other = sparse(tmp_path / "other.img")
    subprocess.run(["losetup", mine, other], check=True)  # the same number, another file
    try:
        with pytest.raises(Forbidden, match="not a loop device the helper attached"):
            helper.detach_loop(mine)
        assert other in attached()
    finally:
        subprocess.run(["losetup", "-d", mine], check=True)


def test_names_with_newlines_or_other_bytes_are_read_back_exactly(tmp_path: Path) -> None:
    """/sys's backing_file read as bytes with exactly one newline stripped: a name that
    ends in a newline or is not UTF-8 comes back as itself (it raised, or lost its
    newline, leaving a loop no one could detach)."""
    for name in ("y.img\n", "x\udc80.img"):
        path = str(tmp_path / name)
        sparse(Path(path))
        device = subprocess.run([b"losetup", b"--find", b"--show", os.fsencode(path)],
                                capture_output=True, check=True).stdout.decode().strip()
        try:
            backing = blockdev.loop_backing(device)
            assert backing is not None and backing.path == path
        finally:
            subprocess.run(["losetup", "-d", device], check=True)


def test_a_failure_after_the_attach_detaches_the_loop(
    helper: HelperHostOps, owner: Owner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails between ``losetup`` and the reply (here the registry's write, as on
    a full /run), the loop device is detached again, unconditionally."""
    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(blockguard.LoopRegistry, "add", full)
    disk = sparse(owner.dirs[0] / "vms" / "full.img")
    with pytest.raises(InternalError):
        helper.attach_loop(disk, False)
    assert disk not in attached()


def test_a_dm_snapshot_over_two_owner_loops_is_made_and_removed(
    helper: HelperHostOps, owner: Owner
) -> None:
    if not blockdev.have_device_mapper():
        pytest.skip("needs device-mapper (/dev/mapper/control; dm-snapshot module)")
    origin = helper.attach_loop(sparse(owner.dirs[0] / "vms" / "base.img"), True)
    cow = helper.attach_loop(sparse(owner.dirs[0] / "vms" / "cow.img"), False)
    try:
        mapper = helper.create_snapshot("banger-test-snap", origin, cow)
        assert mapper == "/dev/mapper/banger-test-snap" and Path(mapper).exists()
        assert helper.remove_snapshot("banger-test-snap") is True
        assert not Path(mapper).exists()
    finally:
        helper.remove_snapshot("banger-test-snap")
        helper.detach_loop(cow)
        helper.detach_loop(origin)


def test_firecracker_is_launched_under_the_jailer_as_the_owner(tmp_path: Path) -> None:
    if not (JAILER_BIN.exists() and FIRECRACKER_BIN.exists() and Path("/dev/kvm").exists()):
        pytest.skip(f"needs Firecracker's jailer and firecracker at {JAILER_BIN} and "
                    f"{FIRECRACKER_BIN}, and /dev/kvm")
    runtime = tmp_path / "run"
    runtime.mkdir()
    owner = Owner("nobody", 65534, 65534, (tmp_path / "state", runtime))
    helper = serve_helper(owner, InProcessHostOps(), tmp_path / "h.sock")
    client = next(helper)
    vmm = None
    try:
        vmm = client.launch_jailed("bgj-0123456789ab", 65534, 65534)
        assert poll_until(lambda: Path(vmm.api_socket).exists(), timeout=10, interval=0.05)
        assert os.stat(vmm.api_socket).st_uid == 65534, "the API socket is the owner's"
    finally:
        if vmm is not None:  # a failed check leaves no jailed Firecracker or jail behind
            os.kill(vmm.pid, 9)
            client.remove_jail("bgj-0123456789ab", 65534)
        helper.close()


# dm-snapshot ownership with a crafted ``dmsetup`` on PATH (this machine has no
# device-mapper): it records its argv and answers ``info``/``deps`` from files the test
# writes, so the helper's checks run against hostile answers over real loop devices.
FAKE_DMSETUP = """#!/bin/sh
echo "$@" >> {d}/argv
case "$1" in
  info) [ -e {d}/exists ] || {{ echo "Device does not exist." >&2; exit 1; }}; cat {d}/uuid ;;
  deps) cat {d}/deps ;;
  create) sleep "$(cat {d}/create_delay 2>/dev/null || echo 0)"; touch {d}/exists ;;
  remove) rm -f {d}/exists ;;
esac
"""


@pytest.fixture
def dmsetup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "dm"
    d.mkdir()
    script = d / "dmsetup"
    script.write_text(FAKE_DMSETUP.format(d=d))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")
    return d


def devno(device: str) -> str:
    major, minor = blockdev.loop_devno(device)
    return f"({major}, {minor})"


def ran(d: Path, verb: str) -> bool:
    return any(line.split()[:1] == [verb] for line in (d / "argv").read_text().splitlines())


@pytest.fixture
def two_loops(helper: HelperHostOps, owner: Owner) -> Iterator[tuple[str, str]]:
    origin = helper.attach_loop(sparse(owner.dirs[0] / "vms" / "base.img"), True)
    cow = helper.attach_loop(sparse(owner.dirs[0] / "vms" / "cow.img"), False)
    yield origin, cow
    helper.detach_loop(cow)
    helper.detach_loop(origin)


@pytest.mark.parametrize("how", ["another uid's uuid", "no uuid", "a non-loop dep",
                                 "no deps", "a foreign loop", "a miscounted list"])
def test_a_snapshot_not_provably_the_owners_is_not_removed(
    helper: HelperHostOps, two_loops: tuple[str, str], foreign_loop: str, dmsetup: Path,
    how: str
) -> None:
    origin, cow = two_loops
    (dmsetup / "exists").touch()
    (dmsetup / "uuid").write_text({"another uid's uuid": "BANGER-1000-banger-s\n",
                                   "no uuid": "\n"}.get(how, "BANGER-0-banger-s\n"))
    (dmsetup / "deps").write_text({
        "a non-loop dep": f" 2 dependencies\t: (253, 0) {devno(cow)}\n",  # vg0-root
        "no deps": " 0 dependencies\t:\n",
        "a foreign loop": f" 2 dependencies\t: {devno(foreign_loop)} {devno(cow)}\n",
        "a miscounted list": f" 3 dependencies\t: {devno(origin)} {devno(cow)}\n",
    }.get(how, f" 2 dependencies\t: {devno(origin)} {devno(cow)}\n"))
    error = InternalError if how == "a miscounted list" else Forbidden
    refusal = "banger-s|not a loop device the helper attached" if error is Forbidden else "deps"
    with pytest.raises(error, match=refusal):
        helper.remove_snapshot("banger-s")
    assert not ran(dmsetup, "remove")


def test_a_snapshot_of_the_owners_is_made_with_its_uuid_and_removed(
    helper: HelperHostOps, two_loops: tuple[str, str], dmsetup: Path
) -> None:
    origin, cow = two_loops
    (dmsetup / "uuid").write_text("BANGER-0-banger-s\n")
    (dmsetup / "deps").write_text(f" 2 dependencies\t: {devno(cow)} {devno(origin)}\n")
    assert helper.create_snapshot("banger-s", origin, cow) == "/dev/mapper/banger-s"
    create = next(line for line in (dmsetup / "argv").read_text().splitlines()
                  if line.startswith("create"))
    assert "--uuid BANGER-0-banger-s" in create
    assert helper.remove_snapshot("banger-s") is True and ran(dmsetup, "remove")


def test_a_removal_asks_dmsetup_once_whether_the_snapshot_is_there_and_the_owners(
    helper: HelperHostOps, two_loops: tuple[str, str], dmsetup: Path
) -> None:
    """One ``dmsetup info`` per removal answers both (it fails for a missing device), and
    the helper's checks are not run again by the removal it calls."""
    origin, cow = two_loops
    (dmsetup / "uuid").write_text("BANGER-0-banger-s\n")
    (dmsetup / "deps").write_text(f" 2 dependencies\t: {devno(origin)} {devno(cow)}\n")
    assert helper.remove_snapshot("banger-s") is False  # none there
    (dmsetup / "exists").touch()
    assert helper.remove_snapshot("banger-s") is True
    verbs = [line.split()[0] for line in (dmsetup / "argv").read_text().splitlines()]
    assert verbs == ["info", "info", "deps", "remove"]


def test_a_detach_reads_what_backs_the_loop_once(
    helper: HelperHostOps, owner: Owner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ownership check and the detach use one reading of the kernel's backing inode."""
    device = helper.attach_loop(sparse(owner.dirs[0] / "vms" / "one.img"), False)
    reads: list[str] = []
    real = blockdev.loop_backing

    def counted(dev: str) -> blockdev.LoopBacking | None:
        reads.append(dev)
        return real(dev)

    monkeypatch.setattr(blockdev, "loop_backing", counted)
    assert helper.detach_loop(device) is True
    assert reads == [device]


def test_a_snapshot_built_on_other_devices_than_asked_is_removed_again(
    helper: HelperHostOps, two_loops: tuple[str, str], foreign_loop: str, dmsetup: Path
) -> None:
    """The deps are read back after ``dmsetup create``: a loop swapped meanwhile (here,
    the answer names a foreign loop) and the new device is removed, the call refused."""
    origin, cow = two_loops
    (dmsetup / "uuid").write_text("BANGER-0-banger-s\n")
    (dmsetup / "deps").write_text(f" 2 dependencies\t: {devno(foreign_loop)} {devno(cow)}\n")
    with pytest.raises(Forbidden):
        helper.create_snapshot("banger-s", origin, cow)
    assert ran(dmsetup, "remove") and not (dmsetup / "exists").exists()


def test_a_detach_waits_for_a_snapshot_being_made_over_its_loop(
    helper: HelperHostOps, two_loops: tuple[str, str], dmsetup: Path
) -> None:
    """One lock around every block-device operation: a detach sent while ``dmsetup
    create`` runs is served only after the create, not between its check and its use."""
    origin, cow = two_loops
    (dmsetup / "uuid").write_text("BANGER-0-banger-s\n")
    (dmsetup / "deps").write_text(f" 2 dependencies\t: {devno(origin)} {devno(cow)}\n")
    (dmsetup / "create_delay").write_text("1")
    done: dict[str, float] = {}

    def create() -> None:
        helper.create_snapshot("banger-s", origin, cow)
        done["create"] = time.monotonic()

    thread = threading.Thread(target=create)
    thread.start()
    time.sleep(0.3)
    helper.detach_loop(cow)
    done["detach"] = time.monotonic()
    thread.join()
    assert done["create"] <= done["detach"]
