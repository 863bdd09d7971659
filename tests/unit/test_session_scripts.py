"""The session scripts run on this host, under a test directory (the guest is a dir here).

They use the same tools a Debian guest has (dash, coreutils, util-linux); each
test stops what it started through the STOP script, then checks no supervisor
is left.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.core import session_scripts as scripts
from banger.core.sessions import SessionInfo, SessionMeta, parse_list, parse_read
from banger.core.wait import poll_until

ECHO = ["sh", "-c", 'while read -r l; do printf "got %s\\n" "$l"; done']


class Guest:
    def __init__(self, top: Path) -> None:
        self.top = str(top)

    def run(self, script: str, *args: str, data: bytes | None = None,
            ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(scripts.script_argv(script, self.top, *args), input=data,
                              capture_output=True, timeout=60)

    def start(self, name: str, command: list[str], mode: str = "pipe", cwd: str = "/",
              segment: int = scripts.SEGMENT_BYTES) -> subprocess.CompletedProcess[bytes]:
        meta = SessionMeta(command=command, cwd=cwd, started=int(time.time())).line()
        return subprocess.run(scripts.start_argv(self.top, name, cwd, mode, meta, command,
                                                 segment), capture_output=True, timeout=60)

    def show(self, name: str) -> SessionInfo:
        [s], bad = parse_list("vm", self.run(scripts.LIST, name).stdout)
        assert bad == 0
        return s

    def read(self, name: str, since: int, limit: int = 1 << 20) -> tuple[int, bytes]:
        out = self.run(scripts.READ, name, str(since), str(limit), "0")
        assert out.returncode == 0, out.stderr
        _, start, chunk = parse_read("vm", out.stdout, limit)
        return start, chunk

    def wait_output(self, name: str, want: bytes, since: int = 0) -> None:
        assert poll_until(lambda: self.read(name, since)[1] == want, timeout=10), \
            self.read(name, since)


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[Guest]:
    g = Guest(tmp_path / "sessions")
    yield g
    for d in sorted((tmp_path / "sessions").glob("*")):
        g.run(scripts.STOP, d.name, "1")
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert not left.split(), f"left running: {left}"


def test_a_pipe_session_takes_sends_and_keeps_its_output(guest: Guest) -> None:
    assert guest.start("echo", ECHO).returncode == 0
    for line in (b"one\n", b"two\n", b"three\n"):
        assert guest.run(scripts.SEND, "echo", data=line).returncode == 0
    guest.wait_output("echo", b"got one\ngot two\ngot three\n")
    assert guest.read("echo", 8) == (8, b"got two\ngot three\n")
    assert guest.read("echo", 8, limit=4) == (8, b"got ")
    s = guest.show("echo")
    assert (s.state, s.mode, s.output_end, s.command) == ("running", "pipe", 26, ECHO)
    stop = guest.run(scripts.STOP, "echo", "5")
    assert stop.returncode == 0
    s = guest.show("echo")
    assert (s.state, s.reason, s.exit_code) == ("ended", "stopped", 143)
    # only the program's words: not the shell's report of the signal ("Terminated")
    assert guest.read("echo", 0) == (0, b"got one\ngot two\ngot three\n")
    refused = guest.run(scripts.SEND, "echo", data=b"late\n")
    assert refused.returncode == scripts.ENDED


def test_preflight_refusals_leave_no_session(guest: Guest, tmp_path: Path) -> None:
    assert guest.start("a", ["true"], cwd="/no/such/dir").returncode == scripts.NO_CWD
    assert guest.start("a", ["no-such-program-here"]).returncode == scripts.NO_COMMAND
    assert guest.start("a", ["cd"]).returncode == scripts.NO_COMMAND  # a builtin, not a program
    assert not (tmp_path / "sessions").exists() or not list((tmp_path / "sessions").iterdir())
    assert guest.start("a", ["sleep", "30"]).returncode == 0
    assert guest.start("a", ["true"]).returncode == scripts.TAKEN
    assert guest.show("a").command == ["sleep", "30"]


def test_output_rotates_into_segments_with_offsets_that_only_grow(guest: Guest) -> None:
    lines = b"".join(b"line %03d\n" % i for i in range(60))  # 540 bytes, segments of 100
    assert guest.start("chatty", ["cat"], segment=100).returncode == 0
    assert guest.run(scripts.SEND, "chatty", data=lines).returncode == 0
    assert poll_until(lambda: guest.show("chatty").output_end == len(lines), timeout=10)
    s = guest.show("chatty")
    assert s.output_start == 400  # two segments kept: 400..499 and 500..539
    start, chunk = guest.read("chatty", 0)
    assert (start, chunk) == (400, lines[400:500])  # the rotated-away part is skipped, said
    assert guest.read("chatty", 500) == (500, lines[500:])
    assert guest.read("chatty", 450) == (450, lines[450:500])


def test_a_session_from_an_earlier_boot_is_ended_by_the_vm_stop(guest: Guest,
                                                                 tmp_path: Path) -> None:
    assert guest.start("old", ["sleep", "30"]).returncode == 0
    pid = tmp_path / "sessions" / "old" / "pid"
    p, start, _boot = pid.read_text().split()
    guest.run(scripts.STOP, "old", "1")
    pid.write_text(f"{p} {start} 00000000-0000-0000-0000-000000000000\n")
    (tmp_path / "sessions" / "old" / "exit").write_text(" " * 64 + "\n")  # as if never recorded
    s = guest.show("old")
    assert (s.state, s.reason, s.exit_code) == ("ended", "vm-stopped", None)
    pid.write_text(f"{p} 1 {_boot}\n")  # same boot, but that pid is not the supervisor
    assert guest.show("old").reason == "lost"
    assert guest.run(scripts.DELETE, "old").returncode == 0
    assert not (tmp_path / "sessions" / "old").exists()


def test_a_terminal_session_runs_on_a_pty_and_records_its_exit_code(guest: Guest,
                                                                    tmp_path: Path) -> None:
    assert guest.start("tty", ["sh", "-c", "stty size; read x; echo \"got:$x\"; exit 7"],
                       mode="pty").returncode == 0
    assert guest.run(scripts.SEND, "tty", data=b"x\n").returncode == scripts.NOT_PIPE
    with open(tmp_path / "sessions" / "tty" / "stdin", "w") as fifo:
        fifo.write("hello\n")
    assert poll_until(lambda: guest.show("tty").state == "ended", timeout=10)
    s = guest.show("tty")
    assert (s.reason, s.exit_code) == ("exited", 7)
    assert guest.read("tty", 0)[1] == b"24 80\r\nhello\r\ngot:hello\r\n"
    assert guest.run(scripts.DELETE, "tty").returncode == 0


def test_a_running_session_cannot_be_deleted(guest: Guest) -> None:
    assert guest.start("busy", ["sleep", "30"]).returncode == 0
    assert guest.run(scripts.DELETE, "busy").returncode == scripts.RUNNING
    assert guest.run(scripts.READ, "nope", "0", "10", "0").returncode == scripts.NO_SESSION
