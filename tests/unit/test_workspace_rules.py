"""The rules both ways into a guest (the tar and the before-boot debugfs batch) share."""

from __future__ import annotations

import errno
import stat

import pytest

from banger.core.errors import Conflict
from banger.workspace.stage import changed, guest_mode, parents_of


def test_parents_are_listed_outermost_first_for_bytes_and_absolute_paths() -> None:
    assert parents_of(b"a/b/c") == [b"a", b"a/b"]
    assert parents_of(b"top") == []
    assert parents_of("/root/work/repo") == ["/root", "/root/work"]
    assert parents_of(b"tree/x") == [b"tree"]


@pytest.mark.parametrize(("kind", "mode", "keep", "expected"), [
    ("file", 0o100777, False, 0o644),  # git mode: what git records, never the tree's bits
    ("exec", 0o100700, False, 0o755),
    ("dir", 0o40700, False, 0o755),
    ("file", 0o104755, True, 0o755),  # full_copy: set-uid dropped
    ("exec", 0o102711, True, 0o711),  # set-gid dropped
    ("dir", 0o41777, True, 0o1777),  # sticky kept
])
def test_one_mode_policy_for_files_and_directories(kind: str, mode: int, keep: bool,
                                                  expected: int) -> None:
    assert guest_mode(kind, mode, keep_mode=keep) == expected
    assert not guest_mode(kind, mode, keep_mode=keep) & (stat.S_ISUID | stat.S_ISGID)


def test_a_changed_entry_says_why_and_how_to_go_on() -> None:
    gone = changed(b"a/b", FileNotFoundError(errno.ENOENT, "No such file or directory"))
    assert isinstance(gone, Conflict)
    assert str(gone) == "'a/b' changed while the workspace was prepared (No such file or directory)"
    assert gone.hint == "run the prepare again once the tree is quiet"
    assert "became a symlink" in str(changed(b"x", OSError(errno.ELOOP, "loop")))
    assert "no longer a regular file" in str(changed(b"x"))
