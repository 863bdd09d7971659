"""Image sizes for a tree of content: every inode costs a block, and there is always room."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from banger.images.sizing import (
    GIB,
    MIB,
    default_rootfs_size,
    default_work_seed_size,
    golden_rootfs_size,
    tree_usage,
)


def test_tree_usage_counts_every_inode_as_a_block(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "five").write_bytes(b"x" * 5000)
    (tmp_path / "link").symlink_to("five")
    # empty: its inode; five: two blocks + its inode; link: one block (4 bytes) + its inode
    assert tree_usage(tmp_path) == (1 + 3 + 2) * 4096


def test_sizes_have_floors_round_to_mib_and_grow_with_content() -> None:
    assert default_rootfs_size(0) == GIB
    assert default_work_seed_size(0) == 64 * MIB
    big = 3 * GIB + 12345
    for size in (default_rootfs_size(big), default_work_seed_size(big), golden_rootfs_size(big)):
        assert size % MIB == 0 and size > big
    assert golden_rootfs_size(0) == 2 * GIB


def test_importing_ext4_import_alone_needs_no_importer() -> None:
    code = "import sys, banger.images.ext4_import; print('banger.images.importer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
