"""How big to make an image's ext4 files for a tree of content."""

from __future__ import annotations

import os
from pathlib import Path

MIB = 1 << 20
GIB = 1 << 30
MIN_ROOTFS_BYTES = GIB
MIN_WORK_SEED_BYTES = 64 * MIB
GOLDEN_HEADROOM = 2 * GIB  # room in a built image for what the guest installs


def _round_up(n: int, unit: int = MIB) -> int:
    return (n + unit - 1) // unit * unit


def tree_usage(root: Path) -> int:
    """Bytes the tree at ``root`` needs, counting every inode as at least one block."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:  # gone since the walk listed it
                continue
            total += (st.st_size + 4095) // 4096 * 4096 + 4096
    return total


def default_rootfs_size(used_bytes: int) -> int:
    """Imported image size for ``used_bytes`` of content: room for the guest to install more."""
    return _round_up(max(MIN_ROOTFS_BYTES, used_bytes * 3 // 2 + 512 * MIB))


def golden_rootfs_size(used_bytes: int) -> int:
    """Built (golden) image size for ``used_bytes`` of content, with generous headroom."""
    return _round_up(int(used_bytes * 1.3) + GOLDEN_HEADROOM, 64 * MIB)


def default_work_seed_size(used_bytes: int) -> int:
    """Work seed size for ``used_bytes`` of ``/root`` content."""
    return _round_up(max(MIN_WORK_SEED_BYTES, used_bytes * 2 + 32 * MIB))
