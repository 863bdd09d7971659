"""The guest's session records parsed as hostile: each field checked, a bad record dropped."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banger.core import session_scripts as scripts
from banger.core.errors import InvalidInput
from banger.core.sessions import SessionMeta, parse_list, parse_read
from banger.daemon.session_service import check_command

META = SessionMeta(command=["sh", "-c", "echo hi"], cwd="/root", started=1700000000).line()


def record(name: str = "agent", mode: str = "pipe", status: str = "running", meta: str = META,
           pid: str = "42", segs: str = " 0 10", lost: str = "0", who: str = "") -> bytes:
    fields = [scripts.RECORD_MAGIC, name, mode, status, meta, pid, segs, lost, who]
    return b"".join(f.encode() + b"\0" for f in fields)


def test_a_record_becomes_a_session() -> None:
    both = record() + record("other", "pty", "ended 3 1700000100 exited",
                             segs=" 8388608 5 0 8388608")
    [s, other], bad = parse_list("box", both)
    assert bad == 0
    assert (s.name, s.mode, s.state, s.command, s.cwd, s.pid, s.output_end) == (
        "agent", "pipe", "running", ["sh", "-c", "echo hi"], "/root", 42, 10)
    assert (other.state, other.reason, other.exit_code) == ("ended", "exited", 3)
    assert (other.output_start, other.output_end) == (0, 8388613)
    assert other.ended_at is not None and other.ended_at.year == 2023


@pytest.mark.parametrize("status, reason, code", [
    ("ended - - vm-stopped", "vm-stopped", None),
    ("ended - - lost", "lost", None),
    ("ended 143 1700000000 stopped", "stopped", 143),
])
def test_how_a_session_ended(status: str, reason: str, code: int | None) -> None:
    [s], _ = parse_list("box", record(status=status))
    assert (s.state, s.reason, s.exit_code) == ("ended", reason, code)


@pytest.mark.parametrize("field, value", [
    ("name", "../etc"), ("name", "Agent"), ("name", "a" * 64), ("name", "x\x1b[2J"),
    ("mode", "shell"), ("status", "ended 1 2 rebooted"), ("status", "ended 99999 1 exited"),
    ("status", "running "), ("meta", "{}"), ("meta", '{"command":[],"cwd":"/","started":1}'),
    ("meta", "not json"), ("meta", META.replace('"started":1700000000', '"started":-1')),
    ("pid", "-1"), ("pid", "1e9"), ("segs", " 0"), ("segs", " 0 x"), ("segs", " 0 1" * 9),
    ("segs", " 9223372036854775807 9"), ("lost", "yes"),
])
def test_a_record_that_does_not_fit_is_counted_and_dropped(field: str, value: str) -> None:
    sessions, bad = parse_list("box", record(**{field: value}) + record("good"))
    assert [s.name for s in sessions] == ["good"] and bad == 1


def test_invalid_utf8_and_trailing_garbage_are_counted() -> None:
    sessions, bad = parse_list("box", record() + b"banger-session\0\xff\xfe\0" + b"junk")
    assert [s.name for s in sessions] == ["agent"] and bad == 1
    assert parse_list("box", b"junk\0" + record()) == ([], 1)


def test_the_attach_holder_is_escaped_for_the_terminal() -> None:
    [s], _ = parse_list("box", record(who="banger pid 1 \x1b]0;owned\x07 since x"))
    assert s.attached == "banger pid 1 \\x1b]0;owned\\x07 since x"


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_any_bytes_parse_or_are_counted_never_raise(data: bytes) -> None:
    sessions, bad = parse_list("box", data)
    assert bad >= 0 and all(s.vm == "box" for s in sessions)
    try:
        _, start, chunk = parse_read("box", data, 10)
    except ValueError:
        return
    assert start >= 0 and len(chunk) <= 10


def test_a_read_answer_is_a_record_a_header_and_at_most_count_bytes() -> None:
    s, start, chunk = parse_read("box", record() + b"4 6\nhello\n", 100)
    assert (s.name, start, chunk) == ("agent", 4, b"hello\n")
    assert parse_read("box", record() + b"4 6\nhel", 100)[2] == b"hel"  # rotated mid-read
    for bad in (b"4 6\nhello\nmore", b"4 600\n" + b"x" * 600, b"4\nx", b"-1 1\nx", b""):
        with pytest.raises(ValueError):
            parse_read("box", record() + bad, 100)
    with pytest.raises(ValueError):
        parse_read("box", record() + record("b") + b"0 0\n", 100)


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\0",
                                                blacklist_categories=("Cs",)), max_size=20),
                min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_a_pty_command_line_gives_the_shell_the_argv_back(argv: list[str]) -> None:
    """``script -c`` gets shlex.join(argv): sh must see the very same argv."""
    argv = ["printf", "%s\\0", *argv]
    line = scripts.start_argv("/t", "n", "/", "pty", "{}", argv)[10]
    out = subprocess.run(["sh", "-c", "exec " + line], capture_output=True, check=True).stdout
    assert out.split(b"\0")[:-1] == [a.encode() for a in argv[2:]]
    assert line == shlex.join(argv)


@pytest.mark.parametrize("command, cwd, words", [
    (["-x"], "/root", "must name a program"),
    ([""], "/root", "must name a program"),
    (["sh", "a\0b"], "/root", "NUL"),
    (["sh"], "relative", "absolute path"),
    (["sh"], "/root/\x1b[2J", "absolute path"),
    (["sh", "x" * (70 << 10)], "/root", "longer than"),
])
def test_commands_that_cannot_travel_are_refused_before_the_guest(
        command: list[str], cwd: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        check_command(command, cwd)
