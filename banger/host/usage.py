"""Host-side figures of a VM and of the host (``vm stats``, ``top``): read from /proc,
netlink and the filesystem, never by running a program."""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from banger.host.net import tap_counters
from banger.host.probes import memory_total_mib

TREE_ENTRIES_MAX = 10_000  # a VM dir holds a dozen files; stop counting far beyond that


@dataclass(frozen=True)
class TapBytes:
    """A TAP's counters as the host sees them: ``rx`` is what the guest sent."""

    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class HostRoom:
    """The host's capacity: CPUs, memory, and the filesystem holding banger's state."""

    cpus: int
    memory_mib: int | None
    fs_total_bytes: int
    fs_free_bytes: int


def tap_bytes(name: str) -> TapBytes | None:
    """The counters of TAP ``name`` (one of ours, checked), or None when it is gone."""
    found = tap_counters(name)
    return TapBytes(*found) if found is not None else None


def allocated_bytes(path: Path) -> int:
    """Bytes allocated on disk to ``path`` and everything below it (sparse files count what
    they use); symlinks are not followed, and the walk stops after TREE_ENTRIES_MAX."""
    total, seen, todo = 0, 0, [path]
    while todo and seen < TREE_ENTRIES_MAX:
        current = todo.pop()
        try:
            info = os.lstat(current)
        except OSError:
            continue
        seen += 1
        total += info.st_blocks * 512
        if stat.S_ISDIR(info.st_mode):
            try:
                todo.extend(Path(current, name) for name in os.listdir(current))
            except OSError:
                continue
    return total


def host_room(state_dir: Path) -> HostRoom:
    """CPUs, memory and the room of the filesystem under ``state_dir``."""
    disk = shutil.disk_usage(state_dir)
    return HostRoom(os.cpu_count() or 1, memory_total_mib(), disk.total, disk.free)
