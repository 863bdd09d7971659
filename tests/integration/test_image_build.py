"""The built golden image, inspected with debugfs (no mount, no boot)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from banger.core.errors import BangerError
from banger.host.files import sha256_file
from banger.images.build import build_image
from banger.images.guest_bits import LEAN_INIT
from tests.support.image import ensure_test_image


def debugfs(image: Path, request: str) -> str:
    proc = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, timeout=60
    )
    return proc.stdout


def inode(image: Path, path: str) -> tuple[int, int, int]:
    """(mode, uid, gid) of ``path`` in ``image``."""
    out = debugfs(image, f"stat {path}")
    mode = re.search(r"Mode:\s+(\d+)", out)
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    assert mode and owner, f"{path} missing from {image.name}:\n{out}"
    return int(mode.group(1), 8), int(owner.group(1)), int(owner.group(2))


@pytest.fixture(scope="module")
def image_dir() -> Path:
    return ensure_test_image()


def test_image_dir_holds_rootfs_work_seed_and_a_matching_manifest(image_dir: Path) -> None:
    manifest = json.loads((image_dir / "image.json").read_text())
    assert manifest["rootfs_bytes"] == (image_dir / "rootfs.ext4").stat().st_size
    assert manifest["rootfs_sha256"] == sha256_file(image_dir / "rootfs.ext4")
    assert manifest["init"] == LEAN_INIT and manifest["init_profile"] == "lean"
    assert "openssh-server" in manifest["packages"]


def test_rootfs_has_the_guest_bits_with_root_ownership(image_dir: Path) -> None:
    rootfs = image_dir / "rootfs.ext4"
    assert inode(rootfs, LEAN_INIT) == (0o755, 0, 0)
    assert inode(rootfs, "/usr/lib/banger/bootstrap") == (0o755, 0, 0)
    assert inode(rootfs, "/etc/ssh/sshd_config") == (0o644, 0, 0)
    assert inode(rootfs, "/etc/ssh/ssh_host_ed25519_key") == (0o600, 0, 0)
    assert "File not found" in debugfs(rootfs, "stat /etc/ssh/ssh_host_rsa_key") or not debugfs(
        rootfs, "stat /etc/ssh/ssh_host_rsa_key"
    ).strip()
    config = debugfs(rootfs, "cat /etc/ssh/sshd_config")
    assert "PasswordAuthentication no" in config and "UsePAM no" in config
    assert "/dev/vdb /root ext4" in debugfs(rootfs, "cat /etc/fstab")


def test_setuid_binaries_stay_root_owned(image_dir: Path) -> None:
    assert inode(image_dir / "rootfs.ext4", "/usr/bin/passwd") == (0o4755, 0, 0)


def test_sandbox_units_are_masked(image_dir: Path) -> None:
    out = debugfs(image_dir / "rootfs.ext4", "stat /etc/systemd/system/apt-daily.timer")
    assert "Fast link dest: \"/dev/null\"" in out


def test_work_seed_is_the_images_root_home(image_dir: Path) -> None:
    seed = image_dir / "work-seed.ext4"
    assert inode(seed, "/.hushlogin")[0] == 0o644
    assert inode(seed, "/.ssh") == (0o700, 0, 0)
    assert inode(seed, "/")[1:] == (0, 0)
    assert ".bashrc" in debugfs(seed, "ls /")


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    images = tmp_path / "images"
    with pytest.raises(BangerError):
        build_image("broken", images, packages=["banger-no-such-package"], kernel_name=None)
    assert list(images.iterdir()) == []
