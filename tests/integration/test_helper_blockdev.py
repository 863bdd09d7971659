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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.core.errors import Forbidden
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
    with pytest.raises(Forbidden, match="outside"):
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
    try:
        vmm = client.launch_jailed("bgj-0123456789ab", 65534, 65534)
        deadline = time.monotonic() + 10
        while not Path(vmm.api_socket).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.stat(vmm.api_socket).st_uid == 65534, "the API socket is the owner's"
        os.kill(vmm.pid, 9)
    finally:
        helper.close()
