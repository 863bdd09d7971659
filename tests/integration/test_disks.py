"""Per-VM disks made for real with qemu-img and e2fsprogs, inspected with debugfs."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput
from banger.host.disks import (
    create_root_overlay,
    create_work_disk,
    grow_work_disk,
    sparse_copy,
)
from banger.host.ext4 import debugfs_batch, make_ext4, read_ext4_file

GIB = 1 << 30
KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITest banger\n"


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    ).stdout


def stat_of(image: Path, path: str) -> tuple[int, int, int]:
    """(permission bits, uid, gid) of ``path`` inside ``image``."""
    out = debugfs(image, f"stat {path}")
    first = next(line for line in out.splitlines() if line.startswith("Inode:"))
    mode = int(first.split("Mode:")[1].split()[0], 8)
    owner = next(line for line in out.splitlines() if line.startswith("User:"))
    uid, gid = int(owner.split()[1]), int(owner.split()[3])
    return mode, uid, gid


def fs_bytes(image: Path) -> int:
    """The filesystem's size as its superblock records it (block count x block size)."""
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    image = tmp_path / "image" / "rootfs.ext4"
    src = tmp_path / "tree"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("golden\n")
    make_ext4(image, 256 << 20, source_dir=src)
    return image


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    """A work seed like an image import makes: dotfiles owned by root, one by uid 1000."""
    tree = tmp_path / "seedtree"
    (tree / ".ssh").mkdir(parents=True)
    (tree / ".bashrc").write_text("export EDITOR=vi\n")
    (tree / ".config").mkdir()
    (tree / ".config" / "tool.toml").write_text("x = 1\n")
    image = tmp_path / "image" / "work-seed.ext4"
    make_ext4(image, 64 << 20, source_dir=tree, root_owner=(0, 0))
    debugfs_batch(
        image,
        ["sif /.bashrc uid 0", "sif /.bashrc gid 0", "sif /.config/tool.toml uid 1000",
         "sif /.bashrc mode 0100640"],
    )  # fmt: skip
    return image


def test_qcow2_overlay_is_backed_by_the_image_and_tiny(rootfs: Path, tmp_path: Path) -> None:
    before = rootfs.read_bytes()
    start = time.perf_counter()
    disk = create_root_overlay(rootfs, tmp_path / "vm" / "root.qcow2", "qcow2")
    elapsed = time.perf_counter() - start
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(disk.path)], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    assert disk.format == "qcow2"
    assert f'"backing-filename": "{rootfs.resolve()}"' in info
    assert '"backing-filename-format": "raw"' in info
    assert allocated(disk.path) < 1 << 20
    assert rootfs.read_bytes() == before
    print(f"\nqcow2 overlay: {elapsed * 1000:.1f} ms")


@pytest.mark.parametrize("strategy", ["reflink", "sparse"])
def test_raw_overlay_is_a_private_copy_that_keeps_holes(
    rootfs: Path, tmp_path: Path, strategy: str
) -> None:
    start = time.perf_counter()
    disk = create_root_overlay(rootfs, tmp_path / "vm" / "root.ext4", strategy)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    assert disk.format == "raw"
    assert disk.path.stat().st_size == rootfs.stat().st_size
    assert disk.path.read_bytes() == rootfs.read_bytes()
    assert allocated(disk.path) <= allocated(rootfs) + (1 << 20)
    # Writing the overlay never changes the image.
    debugfs_batch(disk.path, ["rm /etc/hostname"])
    assert "golden" in debugfs(rootfs, "cat /etc/hostname")
    print(f"\n{strategy} overlay of a 256 MiB rootfs: {elapsed * 1000:.1f} ms")


def test_sparse_copy_preserves_data_at_every_offset_and_the_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        for offset in (0, 5 << 20, (64 << 20) - 4096):
            f.seek(offset)
            f.write(os.urandom(4096))
    sparse_copy(src, tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert allocated(tmp_path / "dst") <= allocated(src)


def test_overlay_of_a_missing_image_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        create_root_overlay(tmp_path / "nope.ext4", tmp_path / "vm" / "root.qcow2", "qcow2")
    assert not (tmp_path / "vm").exists() or not any((tmp_path / "vm").iterdir())


def test_work_disk_from_seed_has_requested_size_seed_files_and_our_key(
    seed: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "vm" / "work.ext4"
    start = time.perf_counter()
    create_work_disk(dest, 8 * GIB, seed=seed, authorized_keys=KEY.rstrip())
    elapsed = time.perf_counter() - start
    assert dest.stat().st_size == 8 * GIB
    assert fs_bytes(dest) == 8 * GIB
    assert read_ext4_file(dest, "/.ssh/authorized_keys") == KEY
    assert stat_of(dest, "/.ssh/authorized_keys") == (0o600, 0, 0)
    assert stat_of(dest, "/.ssh") == (0o700, 0, 0)
    # The seed's files keep their contents, owners and modes.
    assert read_ext4_file(dest, "/.bashrc") == b"export EDITOR=vi\n"
    assert stat_of(dest, "/.bashrc") == (0o640, 0, 0)
    assert stat_of(dest, "/.config/tool.toml")[1] == 1000
    assert allocated(dest) < 64 << 20
    subprocess.run(["e2fsck", "-fn", str(dest)], check=True, capture_output=True)
    print(f"\nwork disk 8 GiB from a 64 MiB seed: {elapsed * 1000:.1f} ms")


def test_work_disk_without_seed_is_a_fresh_ext4_with_our_key_and_host_key(tmp_path: Path) -> None:
    dest = tmp_path / "vm" / "work.ext4"
    host_key = (b"-----BEGIN OPENSSH PRIVATE KEY-----\nx\n", b"ssh-ed25519 AAAAhost vm\n")
    start = time.perf_counter()
    create_work_disk(dest, 8 * GIB, seed=None, authorized_keys=KEY, host_key=host_key)
    elapsed = time.perf_counter() - start
    assert stat_of(dest, "/") == (0o700, 0, 0)
    assert read_ext4_file(dest, "/.ssh/authorized_keys") == KEY
    key_path = "/.banger/ssh_host_ed25519_key"
    assert read_ext4_file(dest, key_path) == host_key[0]
    assert stat_of(dest, key_path) == (0o600, 0, 0)
    assert stat_of(dest, key_path + ".pub") == (0o644, 0, 0)
    assert stat_of(dest, "/.banger") == (0o700, 0, 0)
    subprocess.run(["e2fsck", "-fn", str(dest)], check=True, capture_output=True)
    print(f"\nwork disk 8 GiB without seed: {elapsed * 1000:.1f} ms")


def test_work_disk_replaces_a_key_the_seed_already_had(seed: Path, tmp_path: Path) -> None:
    first = tmp_path / "seed2.ext4"
    create_work_disk(first, 128 << 20, seed=seed, authorized_keys=b"ssh-ed25519 AAAAold old")
    dest = tmp_path / "work.ext4"
    create_work_disk(dest, 256 << 20, seed=first, authorized_keys=KEY)
    assert read_ext4_file(dest, "/.ssh/authorized_keys") == KEY


def test_work_disk_smaller_than_the_seed_is_refused_and_leaves_nothing(
    seed: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="smaller"):
        create_work_disk(tmp_path / "vm" / "work.ext4", 1 << 20, seed=seed, authorized_keys=KEY)
    assert not (tmp_path / "vm" / "work.ext4").exists()


def test_grow_work_disk_grows_file_and_filesystem_keeping_files(tmp_path: Path) -> None:
    dest = tmp_path / "work.ext4"
    create_work_disk(dest, 256 << 20, seed=None, authorized_keys=KEY)
    assert grow_work_disk(dest, 1 * GIB) is True
    assert dest.stat().st_size == GIB
    assert fs_bytes(dest) == GIB
    assert read_ext4_file(dest, "/.ssh/authorized_keys") == KEY
    assert grow_work_disk(dest, GIB) is False


def test_grow_work_disk_refuses_to_shrink(tmp_path: Path) -> None:
    dest = tmp_path / "work.ext4"
    create_work_disk(dest, 256 << 20, seed=None, authorized_keys=KEY)
    with pytest.raises(InvalidInput, match="shrink"):
        grow_work_disk(dest, 128 << 20)
    assert dest.stat().st_size == 256 << 20
