"""The debugfs ownership script (golden) and its error detection."""

from __future__ import annotations

import pytest

from banger.core.errors import InvalidInput
from banger.host.ext4 import debugfs_errors
from banger.images.flatten import Entry, EntryKind
from banger.images.ownership import ownership_script


def test_ownership_script_golden() -> None:
    entries = [
        Entry("usr/bin/su", EntryKind.FILE, 0o4755, 0, 0),
        Entry("", EntryKind.DIR, 0o755, 0, 0),
        Entry("home/my dir", EntryKind.DIR, 0o750, 1000, 1000),
        Entry("usr/bin/sh", EntryKind.SYMLINK, 0o777, 0, 0),
        Entry("dev/null", EntryKind.CHAR, 0o666, 0, 0, 1, 3),
        Entry("dev/sda", EntryKind.BLOCK, 0o660, 0, 6, 8, 0),
        Entry("run/initctl", EntryKind.FIFO, 0o600, 0, 0),
        Entry("tmp", EntryKind.DIR, 0o1777, 0, 0),
    ]
    assert ownership_script(entries) == [
        "sif / uid 0", "sif / gid 0", "sif / mode 040755",
        "cd /dev", "mknod null c 1 3", "cd /",
        "sif /dev/null uid 0", "sif /dev/null gid 0", "sif /dev/null mode 020666",
        "cd /dev", "mknod sda b 8 0", "cd /",
        "sif /dev/sda uid 0", "sif /dev/sda gid 6", "sif /dev/sda mode 060660",
        'sif "/home/my dir" uid 1000', 'sif "/home/my dir" gid 1000',
        'sif "/home/my dir" mode 040750',
        "cd /run", "mknod initctl p", "cd /",
        "sif /run/initctl uid 0", "sif /run/initctl gid 0", "sif /run/initctl mode 010600",
        "sif /tmp uid 0", "sif /tmp gid 0", "sif /tmp mode 041777",
        "sif /usr/bin/sh uid 0", "sif /usr/bin/sh gid 0", "sif /usr/bin/sh mode 0120777",
        "sif /usr/bin/su uid 0", "sif /usr/bin/su gid 0", "sif /usr/bin/su mode 0104755",
    ]


def test_mode_always_carries_the_file_type_bits() -> None:
    # set_inode_field mode overwrites all of i_mode: without S_IFDIR the root stops being a dir.
    (mode_line,) = [line for line in ownership_script([Entry("", EntryKind.DIR, 0o700, 0, 0)])
                    if " mode " in line]
    assert mode_line == "sif / mode 040700"


def test_device_at_the_top_level_is_made_from_the_root() -> None:
    lines = ownership_script([Entry("console", EntryKind.CHAR, 0o600, 0, 5, 5, 1)])
    assert lines[:3] == ["cd /", "mknod console c 5 1", "cd /"]


def test_unencodable_names_are_refused_not_scribbled() -> None:
    with pytest.raises(InvalidInput):
        ownership_script([Entry('bad"name', EntryKind.FILE, 0o644, 0, 0)])


def test_debugfs_errors_ignores_the_banner_and_reports_failures() -> None:
    stderr = (
        "debugfs 1.47.0 (5-Feb-2023)\n"
        "/nope: File not found by ext2_lookup \n"
    )
    assert debugfs_errors(stderr) == ["/nope: File not found by ext2_lookup "]
    assert debugfs_errors("debugfs 1.47.0 (5-Feb-2023)\n") == []
