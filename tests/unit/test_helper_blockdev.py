"""The block-device operations of ``bangerd-root`` (loop devices, dm-snapshots): every
malformed argument refused through the real socket before the recording transport sees
anything; the pure builders and parsers against their documented shapes.

Real loop devices: ``tests/integration/test_helper_blockdev.py``; the jailer:
``tests/unit/test_helper_jail.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.core.errors import Forbidden, InternalError, InvalidInput
from banger.helper.guard import Owner
from banger.host import blockdev
from banger.host.helper_client import HelperHostOps
from banger.host.privileged import CheckedHostOps
from tests.support.fake_host_ops import RecordingHostOps
from tests.support.helper_server import owner_of, serve_helper
from tests.unit.test_helper import raw

UID = 4321  # the owner of these tests' helper: never this process (root or not)
JAIL_ID = "bgj-0123456789ab"


@pytest.fixture
def owner() -> Iterator[Owner]:
    with owner_of(UID) as made:
        yield made


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
    lambda h, o: h.attach_loop(f"{o.dirs[0]}/y.img\n", False),  # a loop never detachable
    lambda h, o: h.attach_loop(f"{o.dirs[0]}/x\x1b[2J.img", False),  # control characters
    lambda h, o: h.attach_loop(f"{o.dirs[0]}/a b.img", False),
    lambda h, o: h.attach_loop(f"{o.dirs[0]}/x\u202e.img", False),
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
    lambda h, o: h.launch_jailed("banger-1", UID, UID),
    lambda h, o: h.launch_jailed("bgj-XYZ0123456", UID, UID),
    lambda h, o: h.launch_jailed("bgj-" + "a" * 33, UID, UID),
    lambda h, o: h.launch_jailed("--help", UID, UID),
    lambda h, o: h.launch_jailed("bgj-0123456789/../x", UID, UID),
    lambda h, o: h.launch_jailed(JAIL_ID, 0, UID),  # root
    lambda h, o: h.launch_jailed(JAIL_ID, UID, 0),
    lambda h, o: h.remove_jail("../../etc", UID),
    lambda h, o: h.remove_jail(JAIL_ID, 0),
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
    {"op": "launch_jailed", "jail_id": JAIL_ID, "uid": "4321", "gid": UID},
    {"op": "launch_jailed", "jail_id": JAIL_ID, "uid": UID, "gid": UID, "exec_file": "/bin/sh"},
    {"op": "launch_jailed", "jail_id": JAIL_ID, "uid": UID, "gid": UID,
     "argv": ["--seccomp-level", "0"]},
    # the chroot base is the helper's own: a request naming one (the owner's runtime dir,
    # which it could rename around the jailer) is refused outright
    {"op": "launch_jailed", "jail_id": JAIL_ID, "uid": UID, "gid": UID, "chroot_base": "/x/j"},
    {"op": "remove_jail", "jail_id": JAIL_ID, "uid": UID, "chroot_base": "/etc"},
])  # fmt: skip
def test_a_jail_request_naming_a_binary_or_argv_is_refused(
    helper: HelperHostOps, payload: dict[str, Any]
) -> None:
    reply = raw(helper.path, json.dumps({"op_id": "t", **payload}).encode())
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_input"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the owner's dir is another uid's")
def test_an_owner_dir_pointing_elsewhere_tells_nothing_of_what_is_there(
    tmp_path: Path, fake: RecordingHostOps
) -> None:
    """The reviewer's oracle: ``ln -s /home/victim ~/.local/state/banger`` made root walk
    the victim's 0700 dir, and the refusal said which files exist there. The walk starts
    at ``/`` without following a symlink, the owner's dir must be the owner's, and every
    refusal reads the same."""
    private = tmp_path / "private"
    (private / ".ssh").mkdir(parents=True)
    (private / ".ssh" / "id_ed25519").write_text("k")
    private.chmod(0o700)
    state = tmp_path / "state"
    state.symlink_to(private)
    not_theirs = tmp_path / "rootstate"  # a real dir, but root's, with a file of the owner's
    not_theirs.mkdir()
    (not_theirs / "disk.img").touch()
    os.chown(not_theirs / "disk.img", UID, UID)
    for owner_state in (state, not_theirs):
        owner = Owner("someone", UID, UID, (owner_state, tmp_path / "run"))
        (tmp_path / "run").mkdir(exist_ok=True)
        texts = set()
        for client in serve_helper(owner, fake, tmp_path / "run" / "h.sock"):
            for name in (".ssh/id_ed25519", ".ssh/id_rsa", ".ssh", ".ssh/id_ed25519/x",
                         "disk.img"):
                with pytest.raises(Forbidden) as refused:
                    client.attach_loop(f"{owner_state}/{name}", True)
                texts.add(refused.value.message.replace(f"{owner_state}/{name}", "P"))
        assert len(texts) == 1, texts
    assert fake.methods() == []


def test_a_backing_file_outside_the_state_dir_is_refused(
    helper: HelperHostOps, owner: Owner, tmp_path: Path
) -> None:
    in_runtime = owner.dirs[1] / "disk.img"  # the owner's, but not its state dir
    in_runtime.touch()
    for path in (str(tmp_path / "disk.img"), "/etc/shadow", str(in_runtime)):
        with pytest.raises(Forbidden, match="outside"):
            helper.attach_loop(path, True)


def test_the_snapshot_table_and_deps_parsing() -> None:
    assert blockdev.snapshot_table("/dev/loop3", "/dev/loop4", 2048) == (
        "0 2048 snapshot /dev/loop3 /dev/loop4 N 8")
    assert blockdev.parse_deps(" 2 dependencies\t: (7, 4) (7, 3)\n") == [(7, 4), (7, 3)]
    assert blockdev.parse_deps(" 1 dependencies\t: (253, 0)\n") == [(253, 0)]  # refused later
    assert blockdev.parse_deps(" 0 dependencies\t:\n") == []  # refused later
    for hostile in (" 2 dependencies\t: (loop4) (vg0-root)\n",  # names: read by number only
                    " 3 dependencies\t: (7, 4) (7, 3)\n",       # the count disagrees
                    " 1 dependencies\t: (7, 4) (7, 3)\n", "", "garbage"):
        with pytest.raises(InternalError):
            blockdev.parse_deps(hostile)


def test_a_dm_dependency_that_is_not_a_loop_is_forbidden_naming_the_dm_device() -> None:
    with pytest.raises(Forbidden, match="dm device banger-x is built on 253:0, not a loop"):
        blockdev.loop_of_devno("banger-x", (253, 0))
    with pytest.raises(Forbidden, match="banger-x"):
        blockdev.loop_of_devno("banger-x", (7, 999999))  # no such loop


class Misanswering(RecordingHostOps):
    """A transport whose answers are not what the operation makes."""

    def attach_loop(self, backing: str, read_only: bool) -> str:
        super().attach_loop(backing, read_only)
        return "/dev/sda"

    def create_snapshot(self, name: str, origin: str, cow: str) -> str:
        super().create_snapshot(name, origin, cow)
        return "/dev/dm-0"


def test_a_transport_answering_a_wrong_device_is_an_internal_error_and_cleaned_up() -> None:
    ops = CheckedHostOps(Misanswering())
    with pytest.raises(InternalError, match="not a loop device"):
        ops.attach_loop("/var/lib/banger/disk.img", True)
    with pytest.raises(InternalError, match="not its mapper path"):
        ops.create_snapshot("banger-r", "/dev/loop1", "/dev/loop2")
    assert ops.transport.methods()[-1] == "remove_snapshot"  # type: ignore[attr-defined]
