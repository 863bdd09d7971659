"""The Firecracker operations of ``bangerd-root`` (loop devices, dm-snapshots, the jailer
launch): every malformed argument refused through the real socket before the recording
transport sees anything; the pure builders against their documented shapes.

Real loop devices: ``tests/integration/test_helper_blockdev.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.core.errors import Forbidden, InvalidInput, NotFound
from banger.helper.guard import Owner
from banger.host import blockdev
from banger.host.helper_client import HelperHostOps
from banger.host.jailer import JailBinaries, jailer_argv, launch
from tests.support.fake_host_ops import RecordingHostOps
from tests.support.helper_server import serve_helper
from tests.unit.test_helper import raw

UID = 4321  # the owner of these tests' helper: never this process (root or not)
JAIL_ID = "bgj-0123456789ab"


@pytest.fixture
def owner() -> Iterator[Owner]:
    base = Path(tempfile.mkdtemp(prefix="bgfc-"))
    (base / "state").mkdir()
    (base / "run").mkdir()
    yield Owner("someone", UID, UID, (base / "state", base / "run"))
    shutil.rmtree(base)


@pytest.fixture
def fake() -> RecordingHostOps:
    return RecordingHostOps()


@pytest.fixture
def helper(owner: Owner, fake: RecordingHostOps) -> Iterator[HelperHostOps]:
    yield from serve_helper(owner, fake, owner.dirs[1] / "h.sock")
    assert fake.methods() == [], "a refused call reached the host"


SHAPE_REFUSALS = [
    lambda h, o: h.attach_loop(f"{o.dirs[0]}/../../etc/passwd", True),  # ../
    lambda h, o: h.attach_loop(f"{o.dirs[0]}/{'a' * 5000}", True),       # too long
    lambda h, o: h.attach_loop("disk.img", False),                       # relative
    lambda h, o: h.detach_loop("/dev/sda"),
    lambda h, o: h.detach_loop("/dev/loop"),
    lambda h, o: h.detach_loop("/dev/loop01"),
    lambda h, o: h.detach_loop("/dev/loop1/../sda"),
    lambda h, o: h.detach_loop("/dev/mapper/banger-x"),
    lambda h, o: h.create_snapshot("dm-root", "/dev/loop1", "/dev/loop2"),  # wrong prefix
    lambda h, o: h.create_snapshot("banger-", "/dev/loop1", "/dev/loop2"),
    lambda h, o: h.create_snapshot("banger-" + "a" * 64, "/dev/loop1", "/dev/loop2"),  # long
    lambda h, o: h.create_snapshot("banger-../x", "/dev/loop1", "/dev/loop2"),
    lambda h, o: h.create_snapshot("banger-Root", "/dev/loop1", "/dev/loop2"),
    lambda h, o: h.create_snapshot("banger-r", "/dev/sda", "/dev/loop2"),
    lambda h, o: h.create_snapshot("banger-r", "/dev/loop1", "/dev/mapper/banger-x"),
    lambda h, o: h.create_snapshot("banger-r", "/dev/loop1", "/dev/loop1"),
    lambda h, o: h.remove_snapshot("/dev/mapper/banger-r"),
    lambda h, o: h.remove_snapshot("root"),
    lambda h, o: h.launch_jailed("banger-1", UID, UID, f"{o.dirs[1]}/jail"),
    lambda h, o: h.launch_jailed("bgj-XYZ0123456", UID, UID, f"{o.dirs[1]}/jail"),
    lambda h, o: h.launch_jailed("bgj-" + "a" * 33, UID, UID, f"{o.dirs[1]}/jail"),
    lambda h, o: h.launch_jailed("--help", UID, UID, f"{o.dirs[1]}/jail"),
    lambda h, o: h.launch_jailed(JAIL_ID, 0, UID, f"{o.dirs[1]}/jail"),  # root
    lambda h, o: h.launch_jailed(JAIL_ID, UID, 0, f"{o.dirs[1]}/jail"),
    lambda h, o: h.launch_jailed(JAIL_ID, UID, UID, f"{o.dirs[1]}/../jail"),
]  # fmt: skip


@pytest.mark.parametrize("call", SHAPE_REFUSALS)
def test_malformed_block_device_and_jail_arguments_are_refused(
    helper: HelperHostOps, owner: Owner, call: Any
) -> None:
    with pytest.raises(InvalidInput):
        call(helper, owner)


@pytest.mark.parametrize("payload", [
    {"op": "attach_loop", "backing": "/x/y", "read_only": "yes"},
    {"op": "attach_loop", "backing": ["/x/y"], "read_only": True},
    {"op": "launch_jailed", "jail_id": JAIL_ID, "uid": "4321", "gid": UID, "chroot_base": "/x/j"},
    {"op": "launch_jailed", "jail_id": JAIL_ID, "uid": UID, "gid": UID, "chroot_base": "/x/j",
     "exec_file": "/bin/sh"},
    {"op": "launch_jailed", "jail_id": JAIL_ID, "uid": UID, "gid": UID, "chroot_base": "/x/j",
     "argv": ["--seccomp-level", "0"]},
])  # fmt: skip
def test_a_jail_request_naming_a_binary_or_argv_is_refused(
    helper: HelperHostOps, payload: dict[str, Any]
) -> None:
    reply = raw(helper.path, json.dumps({"op_id": "t", **payload}).encode())
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_input"


def test_a_backing_file_outside_the_state_dir_is_refused(
    helper: HelperHostOps, owner: Owner, tmp_path: Path
) -> None:
    in_runtime = owner.dirs[1] / "disk.img"  # the owner's, but not its state dir
    in_runtime.touch()
    for path in (str(tmp_path / "disk.img"), "/etc/shadow", str(in_runtime)):
        with pytest.raises(Forbidden, match="outside"):
            helper.attach_loop(path, True)


def test_a_jail_of_another_uid_or_elsewhere_is_refused(
    helper: HelperHostOps, owner: Owner, tmp_path: Path
) -> None:
    with pytest.raises(Forbidden, match="owner is 4321"):
        helper.launch_jailed(JAIL_ID, UID + 1, UID, f"{owner.dirs[1]}/jail")
    with pytest.raises(Forbidden, match="chroot base"):
        helper.launch_jailed(JAIL_ID, UID, UID, str(tmp_path / "jail"))
    with pytest.raises(Forbidden, match="chroot base"):
        helper.launch_jailed(JAIL_ID, UID, UID, f"{owner.dirs[0]}/jail")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a dir to the owner")
def test_a_chroot_base_the_owner_made_or_symlinked_is_refused(
    helper: HelperHostOps, owner: Owner, tmp_path: Path
) -> None:
    base = owner.dirs[1] / "jail"
    base.symlink_to(tmp_path)
    with pytest.raises(Forbidden, match="not a dir of root's"):
        helper.launch_jailed(JAIL_ID, UID, UID, str(base))
    base.unlink()
    base.mkdir()
    os.chown(base, UID, UID)  # the owner could put a symlink inside it
    with pytest.raises(Forbidden, match="not a dir of root's"):
        helper.launch_jailed(JAIL_ID, UID, UID, str(base))
    assert list(tmp_path.iterdir()) == []


def test_the_jailer_argv_uses_only_its_documented_flags() -> None:
    """docs/jailer.md of Firecracker: --id, --exec-file, --uid, --gid,
    --chroot-base-dir, --daemonize, --new-pid-ns, then ``--`` and Firecracker's own."""
    binaries = JailBinaries(Path("/opt/fc/jailer"), Path("/opt/fc/firecracker"))
    assert jailer_argv(binaries, JAIL_ID, 1000, 1001, "/run/bangerd/jail") == [
        "/opt/fc/jailer", "--id", JAIL_ID, "--exec-file", "/opt/fc/firecracker",
        "--uid", "1000", "--gid", "1001", "--chroot-base-dir", "/run/bangerd/jail",
        "--daemonize", "--new-pid-ns", "--", "--api-sock", "/run/firecracker.socket",
    ]  # fmt: skip


def test_jail_binaries_must_be_roots_regular_files(tmp_path: Path) -> None:
    jailer, fc = tmp_path / "jailer", tmp_path / "firecracker"
    with pytest.raises(NotFound, match="not installed"):
        launch(JailBinaries(jailer, fc), JAIL_ID, UID, UID, str(tmp_path / "jail"))
    jailer.write_text("#!/bin/sh\ntouch /tmp/pwned\n")
    jailer.chmod(0o777)  # anyone may rewrite it
    fc.symlink_to("/bin/true")
    for binaries in (JailBinaries(jailer, Path("/bin/true")), JailBinaries(Path("/bin/true"), fc)):
        with pytest.raises(Forbidden):
            launch(binaries, JAIL_ID, UID, UID, str(tmp_path / "jail"))
    assert not (tmp_path / "jail").exists()


def test_the_snapshot_table_and_deps_parsing() -> None:
    assert blockdev.snapshot_table("/dev/loop3", "/dev/loop4", 2048) == (
        "0 2048 snapshot /dev/loop3 /dev/loop4 N 8")
    assert blockdev.parse_deps(" 2 dependencies\t: (loop4) (loop3)\n") == [
        "/dev/loop4", "/dev/loop3"]
    assert blockdev.parse_deps("1 dependencies : (sda1)") == ["/dev/sda1"]  # refused later


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the chroot base is made root's")
def test_a_valid_jail_request_gets_a_chroot_base_of_roots_and_only_its_ids(
    owner: Owner, fake: RecordingHostOps
) -> None:
    base = f"{owner.dirs[1]}/jail"
    for client in serve_helper(owner, fake, owner.dirs[1] / "h.sock"):
        vmm = client.launch_jailed(JAIL_ID, UID, UID, base)
        assert vmm.pid == 4242 and vmm.api_socket.startswith(base + "/")
    st = os.lstat(base)
    assert st.st_uid == 0 and st.st_mode & 0o7777 == 0o755
    assert fake.calls == [("launch_jailed", (JAIL_ID, UID, UID, base))]
