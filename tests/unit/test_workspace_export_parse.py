"""What a guest's export sends back is untrusted: parsed strictly, refused whole, shown escaped.

Also the two values a workspace takes from the user that reach the guest's shell (the
guest path and ``--base-commit``), and ``exec_argv``, which must hand CMD over verbatim.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from banger.core.display import display_path
from banger.core.errors import GuestError, InvalidInput
from banger.core.workspace import exec_argv, validate_commit_id, validate_guest_path
from banger.workspace.export import (
    MAX_CHANGES,
    Change,
    parse_export,
    parse_name_status,
    split_export,
)


def export_of(names: bytes, patch: bytes = b"") -> bytes:
    return str(len(names)).encode() + b"\n" + names + patch


def test_a_well_formed_export_splits_into_changes_and_the_patch() -> None:
    names = b"M\0a b\0A\0new\nline\0D\0gone\0R087\0old\0new\0T\0link\0"
    patch = b"diff --git a/x b/x\n\0binary\0\n"
    changes, got = parse_export(export_of(names, patch))
    assert got == patch
    assert changes == [Change("M", b"a b"), Change("A", b"new\nline"), Change("D", b"gone"),
                       Change("R087", b"new", b"old"), Change("T", b"link")]


def test_an_export_with_no_changes_is_empty() -> None:
    assert parse_export(b"0\n") == ([], b"")


@pytest.mark.parametrize("out", [
    b"",  # the guest said nothing
    b"M\0a\0",  # no length line
    b"12",  # a length without its newline
    b" 4\nM\0a\0",  # padded
    b"-4\nM\0a\0",
    b"0x4\nM\0a\0",
    b"1234567890123\nM\0a\0",  # more digits than any real list
    b"\xff\nM\0a\0",
])
def test_an_export_without_a_plain_length_line_is_refused(out: bytes) -> None:
    with pytest.raises(GuestError, match="malformed: no length line") as err:
        parse_export(out)
    assert err.value.hint and "banger vm ssh" in err.value.hint


@pytest.mark.parametrize("length", [5, 999_999_999_999])
def test_a_length_past_the_end_is_refused(length: int) -> None:
    with pytest.raises(GuestError, match="cut short"):
        parse_export(f"{length}\n".encode() + b"M\0a")


@pytest.mark.parametrize("names", [
    b"Z\0a\0",  # no such status
    b"m\0a\0",  # lowercase
    b"M1234\0a\0",  # score too long
    b"\0a\0",  # empty status
    b"M\0a\0\x1b[2J\0b\0",  # a path where a status belongs
])
def test_an_unknown_status_is_refused(names: bytes) -> None:
    with pytest.raises(GuestError, match="unknown status"):
        parse_name_status(names)


@pytest.mark.parametrize("names", [
    b"M\0",  # no path at all
    b"M",
    b"M\0\0",  # an empty path
    b"R100\0old\0",  # a rename with one path
    b"C050\0old",
    b"R100\0old\0\0",  # a rename to an empty path
    b"R100\0\0new\0",  # a rename from an empty path
    b"A\0a\0D\0",  # the last status lost its path
])
def test_a_status_without_its_paths_is_refused(names: bytes) -> None:
    with pytest.raises(GuestError, match="a status without its path"):
        parse_name_status(names)


def test_a_malformed_list_inside_a_valid_length_is_refused_whole() -> None:
    with pytest.raises(GuestError):
        parse_export(export_of(b"M\0ok\0Q\0bad\0"))


def test_a_rename_and_a_copy_carry_both_paths() -> None:
    assert parse_name_status(b"R100\0a\0b\0C075\0b\0c\0M\0d\0") == [
        Change("R100", b"b", b"a"), Change("C075", b"c", b"b"), Change("M", b"d")]


def test_a_list_of_the_maximum_length_is_accepted_renames_included() -> None:
    assert len(parse_name_status(b"M\0a\0" * MAX_CHANGES)) == MAX_CHANGES
    assert len(parse_name_status(b"R100\0a\0b\0" * MAX_CHANGES)) == MAX_CHANGES


@pytest.mark.parametrize("names", [
    b"M\0a\0" * (MAX_CHANGES + 1),
    b"R100\0a\0b\0" * (MAX_CHANGES + 1),
    b"M\0a\0" * (4 << 20),  # 16 MiB: 4M changes that took 30 s and 2.6 GiB to split
])
def test_a_list_past_the_maximum_is_refused_before_it_is_split(names: bytes) -> None:
    start = time.monotonic()
    with pytest.raises(GuestError, match=f"more than {MAX_CHANGES} changed files") as err:
        parse_export(export_of(names))
    assert time.monotonic() - start < 2
    assert err.value.hint and ".gitignore" in err.value.hint


def test_split_export_leaves_the_patch_in_place() -> None:
    out = export_of(b"A\0new\0", b"diff --git a/new b/new\n")
    changes, start = split_export(out)
    assert changes == [Change("A", b"new")] and out[start:] == b"diff --git a/new b/new\n"


@pytest.mark.parametrize(("raw", "shown"), [
    (b"plain/name.txt", "plain/name.txt"),
    (b"with space", "with space"),
    ("caf\u00e9".encode(), "caf\u00e9"),
    (b"new\nline", "new\\x0aline"),
    (b"\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),  # ANSI colour
    (b"\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # terminal title
    (b"back\rspace\x08\x7f", "back\\x0dspace\\x08\\x7f"),
    (b"nul\0byte", "nul\\x00byte"),
    (b"bad\xff\xfeutf8", "bad\\xff\\xfeutf8"),
    ("c1\u009bcsi".encode(), "c1\\x9bcsi"),  # the 8-bit CSI
    ("rlo\u202etxt.exe".encode(), "rlo\\u202etxt.exe"),  # bidi override reorders a line
    ("zero\u200bwidth".encode(), "zero\\u200bwidth"),
    ("line\u2028sep".encode(), "line\\u2028sep"),
])
def test_names_from_the_guest_are_shown_with_control_characters_escaped(raw: bytes,
                                                                        shown: str) -> None:
    assert display_path(raw) == shown


@pytest.mark.parametrize("path", ["/root/repo", "/root/work/a.b", "/root/x+y/z_1-2"])
def test_plain_guest_paths_under_root_are_accepted(path: str) -> None:
    assert validate_guest_path(path) == path


@pytest.mark.parametrize("path", [
    "/root", "/root/", "root/repo", "/rootx/repo", "/home/repo", "/root/../etc",
    "/root/a/../../etc", "/root/./repo", "/root//repo", "/root/repo/", "/root/.ssh",
    "/root/a/.git", "/root/a b", "/root/$(reboot)", "/root/a;b", "/root/\u00e9",
    "/root/a\nb", "/root/" + "a" * 129,
])
def test_guest_paths_that_escape_or_need_quoting_are_refused(path: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_guest_path(path)
    assert err.value.hint and "/root/repo" in err.value.hint


@pytest.mark.parametrize("sha", ["abcd", "0123456789abcdef0123456789abcdef01234567", "f" * 64])
def test_hex_commit_ids_are_accepted(sha: str) -> None:
    assert validate_commit_id(sha) == sha


@pytest.mark.parametrize("sha", [
    "", "abc", "ABCD", "HEAD", "main", "abcd~1", "abcd^{tree}", "-abcd", "--output=x",
    "abcd\n", "f" * 65, "abcd efgh",
])
def test_anything_but_a_hex_commit_id_is_refused(sha: str) -> None:
    with pytest.raises(InvalidInput, match="not a commit id"):
        validate_commit_id(sha)


def test_exec_argv_runs_the_command_verbatim_in_the_workspace(tmp_path: Path) -> None:
    """Arguments a shell would expand, split or quote arrive as they were typed."""
    work = tmp_path / "repo"
    work.mkdir()
    command = ["sh", "-c", 'pwd; for a; do printf "[%s]" "$a"; done', "x",
               "a b", "$HOME", "'q'", '"', "*", "-n", "", "\\n"]
    argv = exec_argv(str(work), command)
    assert argv[:2] == ["sh", "-c"] and argv[-len(command):] == command
    out = subprocess.run(argv, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                         check=True).stdout
    assert out == f"{work}\n[a b][$HOME]['q'][\"][*][-n][][\\n]"


def test_exec_argv_keeps_the_commands_exit_code_and_fails_outside_a_workspace(
        tmp_path: Path) -> None:
    code = subprocess.run(exec_argv(str(tmp_path), ["sh", "-c", "exit 7"]),
                          env={"PATH": "/usr/bin:/bin"}).returncode
    assert code == 7
    missing = subprocess.run(exec_argv(str(tmp_path / "none"), ["true"]), capture_output=True,
                             env={"PATH": "/usr/bin:/bin"})
    assert missing.returncode == 1
