"""vm run PATH's before-boot path: ``write_workspace`` into a real (small) work disk.

A tree that does not fit (in blocks or in inodes) is refused before anything
is written, naming both sizes; one that fits lands and the filesystem stays
clean; a tree that changes between staging and the write is a Conflict.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from banger.core.errors import Conflict, InvalidInput
from banger.core.workspace import WorkspaceMode
from banger.host.disks import create_work_disk
from banger.host.ext4 import check_ext4, free_space, inode_type, read_ext4_file
from banger.workspace.disk import write_workspace
from banger.workspace.stage import Staged, make_plan, stage

pytestmark = pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs e2fsprogs")

KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJhbmdlcnRlc3RrZXlmb3J0aGV3b3Jrc3BhY2U test\n"


def repo_with(tmp: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    top = tmp / "repo"
    top.mkdir()
    for name, data in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(data)
    for name, target in (links or {}).items():
        (top / name).symlink_to(target)
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"]):
        subprocess.run(["git", "-C", str(top), *args], check=True, capture_output=True)
    return top


def staged_of(tmp: Path, top: Path, mode: WorkspaceMode = WorkspaceMode.GIT) -> Staged:
    return stage(make_plan(top, mode), tmp / f"scratch-{secrets.token_hex(3)}")


def work_disk(tmp: Path, size: int) -> Path:
    disk = tmp / "work.ext4"
    create_work_disk(disk, size, seed=None, authorized_keys=KEY)
    return disk


def assert_untouched(disk: Path, before: object) -> None:
    assert free_space(disk) == before
    assert inode_type(disk, "/repo") is None
    check_ext4(disk, what="work disk")


def test_more_files_than_free_inodes_is_refused_before_any_write(tmp_path: Path) -> None:
    top = repo_with(tmp_path, {f"f{i}": b"x" for i in range(6000)})  # 6 KB of data
    disk = work_disk(tmp_path, 16 << 20)
    before = free_space(disk)
    with pytest.raises(InvalidInput, match=r"needs 60\d\d inodes .* has \d+ free") as err:
        write_workspace(disk, staged_of(tmp_path, top), "/root/repo")
    assert err.value.hint and "--disk" in err.value.hint
    assert_untouched(disk, before)


def test_files_that_fit_in_bytes_but_not_in_blocks_are_refused(tmp_path: Path) -> None:
    disk = work_disk(tmp_path, 8 << 20)
    free = free_space(disk)
    # Each file is one byte more than three blocks: four blocks on disk.
    size = 3 * free.block_size + 1
    count = int(free.blocks / 3.6)
    assert count * size < free.bytes < count * 4 * free.block_size and count < free.inodes
    top = repo_with(tmp_path, {f"d{i % 20}/f{i}": b"y" * size for i in range(count)})
    with pytest.raises(InvalidInput, match=r"needs \S+ but the work disk has \S+ free"):
        write_workspace(disk, staged_of(tmp_path, top), "/root/repo")
    assert_untouched(disk, free)


def test_long_symlink_targets_take_a_block_each(tmp_path: Path) -> None:
    disk = work_disk(tmp_path, 8 << 20)
    free = free_space(disk)
    count = free.inodes - 200
    # A file that leaves room for three links in four: the links' targets do not fit.
    big = b"z" * ((free.blocks - count * 3 // 4) * free.block_size)
    top = repo_with(tmp_path, {"big": big}, {f"l{i}": "t" * 200 for i in range(count)})
    with pytest.raises(InvalidInput, match="the workspace needs"):
        write_workspace(disk, staged_of(tmp_path, top), "/root/repo")
    assert_untouched(disk, free)


def test_a_tree_that_fills_most_of_the_disk_lands_and_the_filesystem_stays_clean(
    tmp_path: Path,
) -> None:
    disk = work_disk(tmp_path, 16 << 20)
    free = free_space(disk)
    files = {f"d{i % 7}/f{i}": bytes([i % 251]) * (i % 3000) for i in range(2500)}
    files |= {"big.bin": b"z" * (free.bytes // 3)}
    top = repo_with(tmp_path, files, {"short": "d0/f0", "long": "d1/" + "x" * 80})
    written = write_workspace(disk, staged_of(tmp_path, top), "/root/work/deep/repo")
    assert written is not None and written.files == len(files) + 2
    assert read_ext4_file(disk, "/work/deep/repo/d4/f4") == b"\x04" * 4
    check_ext4(disk, what="work disk")


def test_a_file_gone_between_staging_and_the_write_is_a_conflict(tmp_path: Path) -> None:
    top = repo_with(tmp_path, {"a.txt": b"a\n", "b.txt": b"b\n"}, {"link": "a.txt"})
    disk = work_disk(tmp_path, 16 << 20)
    before = free_space(disk)
    staged = staged_of(tmp_path, top)
    (top / "b.txt").unlink()
    with pytest.raises(Conflict, match="'.*b.txt' changed while the workspace was prepared"):
        write_workspace(disk, staged, "/root/repo")
    (top / "b.txt").write_bytes(b"b\n")
    (top / "link").unlink()
    (top / "link").write_bytes(b"a file now\n")  # readlink fails: it is no longer a link
    with pytest.raises(Conflict, match="'.*link' changed while the workspace was prepared"):
        write_workspace(disk, staged, "/root/repo")
    assert_untouched(disk, before)
