"""host/ext4.py's one policy for debugfs: what it reports is never silently dropped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from banger.core.errors import Forbidden, HostToolError, InvalidInput
from banger.host.disks import install_ssh_files
from banger.host.ext4 import (
    check_ext4,
    debugfs_batch,
    debugfs_request,
    grow_ext4,
    make_ext4,
    mkdir_commands,
    read_ext4_file,
)

pytestmark = pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs e2fsprogs")
KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITest banger\n"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("golden\n")
    img = tmp_path / "disk.ext4"
    make_ext4(img, 32 << 20, source_dir=tree)
    return img


def test_a_failing_batch_command_raises_naming_debugfs_s_complaint(image: Path) -> None:
    with pytest.raises(HostToolError, match="debugfs could not edit disk.ext4: .*not found"):
        debugfs_batch(image, ["sif /no/such/file uid 0"])


def test_an_expected_error_is_tolerated_and_nothing_else_is(image: Path) -> None:
    debugfs_batch(image, ["mkdir etc"], ok_errors=("already exists",))
    with pytest.raises(HostToolError):
        debugfs_batch(image, ["mkdir etc", "rm /nope"], ok_errors=("already exists",))


def test_an_image_debugfs_cannot_open_is_an_error_for_requests_and_batches(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.ext4"
    garbage.write_bytes(b"\0" * (1 << 20))
    with pytest.raises(HostToolError, match="cannot open garbage.ext4"):
        debugfs_request(garbage, "ls /")
    with pytest.raises(HostToolError, match="cannot open garbage.ext4"):
        debugfs_batch(garbage, ["mkdir x"])


def test_a_missing_path_reads_as_empty(image: Path) -> None:
    assert read_ext4_file(image, "/etc/hostname") == b"golden\n"
    assert read_ext4_file(image, "/etc/absent") == b""


def test_a_seed_whose_ssh_dir_is_a_file_is_refused_not_half_written(tmp_path: Path) -> None:
    tree = tmp_path / "seed"
    tree.mkdir()
    (tree / ".ssh").write_text("not a directory\n")  # a hostile or broken work seed
    seed = tmp_path / "seed.ext4"
    make_ext4(seed, 32 << 20, source_dir=tree)
    with pytest.raises(InvalidInput, match="/root/.ssh is not a directory"):
        install_ssh_files(seed, KEY)
    assert read_ext4_file(seed, "/.ssh") == b"not a directory\n"
    check_ext4(seed)  # nothing was written, not even a mode


def test_a_seed_that_has_the_ssh_dirs_already_stays_a_clean_filesystem(tmp_path: Path) -> None:
    # debugfs 1.47's mkdir of an existing directory orphans a new inode: never issued.
    tree = tmp_path / "seed"
    (tree / ".ssh").mkdir(parents=True)
    (tree / ".banger").mkdir()
    (tree / ".ssh" / "authorized_keys").write_text("old key\n")
    seed = tmp_path / "seed.ext4"
    make_ext4(seed, 32 << 20, source_dir=tree)
    for _ in range(2):
        install_ssh_files(seed, KEY, (b"private\n", b"public\n"), gitconfig=b"[user]\n")
        check_ext4(seed)
    assert read_ext4_file(seed, "/.ssh/authorized_keys") == KEY


def test_grow_keeps_the_files_and_makes_the_room(image: Path) -> None:
    grow_ext4(image, 64 << 20)
    assert image.stat().st_size == 64 << 20
    assert read_ext4_file(image, "/etc/hostname") == b"golden\n"
    stats = debugfs_request(image, "stats").decode()
    blocks = int(stats.split("Block count:")[1].split()[0])
    block_size = int(stats.split("Block size:")[1].split()[0])
    assert blocks * block_size == 64 << 20


def test_unencodable_paths_never_reach_debugfs(image: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot be encoded"):
        read_ext4_file(image, '/etc/"hostname')


def test_make_ext4_refuses_a_symlink_in_place_of_the_image(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    img = tmp_path / "disk.ext4"
    img.symlink_to(victim)
    with pytest.raises(Forbidden, match="symbolic link"):
        make_ext4(img, 32 << 20)
    assert victim.read_bytes() == b"precious" and img.is_symlink()


def test_mkdir_commands_make_only_what_is_missing_and_nothing_under_a_file(image: Path) -> None:
    # A failed debugfs mkdir (name taken, or parent not a directory) orphans an inode.
    debugfs_batch(image, ["cd /", "mkdir d", "mkdir d/old", "write /etc/hostname f",
                          "symlink l /d"])
    lines, blocked = mkdir_commands(
        image, ["/d", "/d/old", "/d/new", "/d/new/deeper", "/f", "/f/x", "/l", "/l/y", "/e"]
    )
    assert lines == ["mkdir /d/new", "mkdir /d/new/deeper", "mkdir /e"]
    assert blocked == ["/f", "/f/x", "/l", "/l/y"]
    debugfs_batch(image, ["cd /", *lines])
    check_ext4(image)
