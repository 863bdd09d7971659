"""``[[file_sync]]`` and the git identity, written for real into a work disk and read back.

The host side is a crafted home: a file, a directory with a nested file, and
links and a FIFO planted inside it pointing at a secret outside the home. The
secret's bytes must be nowhere in the image, and the filesystem must stay clean.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from banger.core.file_sync import FileSyncEntry, parse_file_sync
from banger.host.disks import create_work_disk
from banger.host.ext4 import check_ext4, debugfs_batch, read_ext4_file
from banger.host.git_identity import guest_gitconfig
from banger.host.work_files import sync_files
from tests.integration.test_disks import KEY, stat_of

DISK = 64 << 20


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """(home, work disk, secret): the secret lives outside the home, linked from inside."""
    secret = f"SECRET-{secrets.token_hex(16)}".encode()
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret").write_bytes(secret)
    (outside / "dir" / "also-secret").write_bytes(secret)
    home = tmp_path / "home"
    (home / ".config" / "tool").mkdir(parents=True)
    token = home / ".config" / "tool" / "token"
    token.write_text("token-v1\n")
    token.chmod(0o640)
    aws = home / ".aws"
    (aws / "sub").mkdir(parents=True)
    (aws / "credentials").write_text("[default]\nkey = 1\n")
    (aws / "sub" / "nested.txt").write_text("nested\n")
    (aws / "sub" / "nested.txt").chmod(0o755)
    (aws / "leak").symlink_to(outside / "secret")
    (aws / "leakdir").symlink_to(outside / "dir")
    (aws / "authorized_keys").write_text("not banger's key\n")
    os.mkfifo(aws / "fifo")
    (aws / 'we"ird').write_text("unencodable\n")
    (home / "linked").symlink_to(outside / "secret")
    (home / "via").symlink_to(outside)
    image = tmp_path / "vm" / "work.ext4"
    create_work_disk(image, DISK, seed=None, authorized_keys=KEY)
    return home, image, secret


def entries(home: Path) -> tuple[FileSyncEntry, ...]:
    return parse_file_sync([
        {"host": "~/.config/tool/token", "guest": "/root/.config/tool/token", "mode": "0600"},
        {"host": "~/.aws", "guest": "/root/.aws"},
        {"host": "~/.aws/authorized_keys", "guest": "/root/.ssh/authorized_keys"},
        {"host": "~/linked", "guest": "/root/linked"},
        {"host": "~/via/secret", "guest": "/root/via"},
        {"host": "~/missing", "guest": "/root/missing"},
    ], home)


def test_files_and_trees_land_owned_by_root_with_their_modes(
    world: tuple[Path, Path, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    home, image, secret = world
    with caplog.at_level(logging.WARNING, "banger.host.work_files"):
        plan = sync_files(image, entries(home), home)
    assert read_ext4_file(image, "/.config/tool/token") == b"token-v1\n"
    assert stat_of(image, "/.config/tool/token") == (0o600, 0, 0)  # the entry's mode
    assert read_ext4_file(image, "/.aws/credentials") == b"[default]\nkey = 1\n"
    assert read_ext4_file(image, "/.aws/sub/nested.txt") == b"nested\n"
    assert stat_of(image, "/.aws/sub/nested.txt") == (0o755, 0, 0)  # the host file's mode
    assert stat_of(image, "/.aws/sub") == (0o755, 0, 0)
    assert stat_of(image, "/.config") == (0o755, 0, 0)
    assert read_ext4_file(image, "/.ssh/authorized_keys") == KEY  # banger's own key stays
    for name in ("/.aws/leak", "/.aws/leakdir", "/.aws/fifo", "/linked", "/via", "/missing"):
        assert read_ext4_file(image, name) == b""
    assert secret not in image.read_bytes()
    logged = caplog.text
    assert logged.count("file_sync skipped symlink (would escape the requested tree)") == 2
    for why in ("top-level symlink", "outside your home", "a missing path", "special file",
                "debugfs cannot encode", "a path banger owns (/root/.ssh/authorized_keys)"):
        assert why in logged, why
    assert len(plan.skipped) == 8
    check_ext4(image, what="work disk")


def test_a_later_start_replaces_changed_files(world: tuple[Path, Path, bytes]) -> None:
    home, image, _ = world
    sync_files(image, entries(home), home)
    (home / ".config" / "tool" / "token").write_text("v2\n")  # shorter than before
    (home / ".aws" / "sub" / "nested.txt").write_text("nested, longer than it was\n")
    plan = sync_files(image, entries(home), home)
    assert read_ext4_file(image, "/.config/tool/token") == b"v2\n"
    assert read_ext4_file(image, "/.aws/sub/nested.txt") == b"nested, longer than it was\n"
    assert not any("debugfs:" in s for s in plan.skipped)
    check_ext4(image, what="work disk")


def test_what_the_guest_left_in_the_way_is_logged_not_fatal_nor_retyped(
    world: tuple[Path, Path, bytes]
) -> None:
    home, image, _ = world
    # The guest made a directory where a synced file goes, and a file where a synced dir goes.
    debugfs_batch(image, ["cd /", "mkdir .config", "mkdir .config/tool", "mkdir .config/tool/token",
                          "write /etc/hostname .aws"])
    plan = sync_files(image, entries(home), home)
    assert any("debugfs:" in s for s in plan.skipped)
    out = subprocess.run(["debugfs", "-R", "stat /.config/tool/token", str(image)],
                         capture_output=True, text=True).stdout
    assert "Type: directory" in out
    check_ext4(image, what="work disk")


def test_the_git_identity_lands_as_root_gitconfig_at_create(tmp_path: Path) -> None:
    name = 'Ada "the Countess" \\ Lovelace'
    gitconfig = guest_gitconfig({"user.name": name, "user.email": "ada@example.org"})
    image = tmp_path / "vm" / "work.ext4"
    create_work_disk(image, DISK, seed=None, authorized_keys=KEY, gitconfig=gitconfig)
    assert stat_of(image, "/.gitconfig") == (0o644, 0, 0)
    copy = tmp_path / "gitconfig"
    copy.write_bytes(read_ext4_file(image, "/.gitconfig"))
    got = subprocess.run(["git", "config", "--file", str(copy), "--get", "user.name"],
                         capture_output=True, text=True, check=True).stdout
    assert got == name + "\n"
    assert read_ext4_file(image, "/.ssh/authorized_keys") == KEY


def test_three_small_files_add_little_to_a_start(tmp_path: Path) -> None:
    import time

    home = tmp_path / "home"
    home.mkdir()
    for i in range(3):
        (home / f"f{i}").write_text(f"file {i}\n")
    image = tmp_path / "vm" / "work.ext4"
    create_work_disk(image, DISK, seed=None, authorized_keys=KEY)
    synced = parse_file_sync(
        [{"host": f"~/f{i}", "guest": f"/root/.cfg/f{i}"} for i in range(3)], home
    )
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        sync_files(image, synced, home)
        runs.append(time.perf_counter() - started)
    print(f"file_sync of 3 small files: median {sorted(runs)[2] * 1000:.1f} ms")
    assert sorted(runs)[2] < 1.0
