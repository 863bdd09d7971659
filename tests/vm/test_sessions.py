"""Sessions against a real guest: one VM, booted twice (a stop/start ends its sessions).

A pipe session running a JSONL echo loop is fed with ``send`` and read back with
``logs``/``attach --since``, across a SIGKILLed daemon; an interactive session is
driven through a real terminal (tmux); ``stop`` records the exit code; the
preflight refusals leave nothing; a full work disk truncates the log while the
program runs on; after a VM stop/start every session shows as ended.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from banger.core.wait import poll_until
from tests.vm.conftest import VMFactory

pytestmark = pytest.mark.vm

ECHO = ["sh", "-c", 'while read -r l; do printf "%s\\n" "$l"; done']
LINES = ['{"n":1,"text":"one"}', '{"n":2,"text":"two two"}', '{"n":3,"text":"a\\u00e9"}']
# Every free block of /root, the reserved ones too (root may use them): fallocate most,
# dd the rest.
FILL_DISK = ("free=$(( $(stat -f -c '%f' /root) * $(stat -f -c '%S' /root) )); "
             "fallocate -l $(( free - (2 << 20) )) /root/fill; "
             "dd if=/dev/zero of=/root/fill2 bs=64k 2>/dev/null; sync; true")
OFFSET = re.compile(r"^offset: (\d+)$", re.M)


def session(vms: VMFactory, name: str) -> dict[str, object]:
    return dict(json.loads(vms.ok("vm", "session", "show", "sess", name, "--json")))


def logs(vms: VMFactory, name: str, since: int) -> tuple[str, int]:
    """The output from ``since`` and the offset ``logs`` says it reached."""
    out = vms.banger("vm", "session", "logs", "sess", name, "--since", str(since))
    assert out.returncode == 0, out.stderr
    found = OFFSET.findall(out.stderr)
    assert found, out.stderr
    return out.stdout, int(found[-1])


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    assert poll_until(check, timeout=timeout, interval=0.3, max_interval=1), f"no {what}"


class Tmux:
    """A private tmux server: the CLI on a real terminal."""

    def __init__(self, vms: VMFactory, tmp: Path) -> None:
        self.sock = str(tmp / "tmux.sock")
        self.env = vms.env.env(TERM="xterm-256color")
        self.banger = shlex.join(vms.env.banger_argv())

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.sock, *args], env=self.env, check=True,
                              capture_output=True, text=True, timeout=30).stdout

    def start(self, window: str, args: str) -> None:
        """``banger ARGS`` in a new 100x30 window; its exit status is printed after it."""
        cmd = f"{self.banger} {args}; echo \"exit=$?\"; sleep 600"
        self.tmux("new-session", "-d", "-s", window, "-x", "100", "-y", "30", cmd)

    def screen(self, window: str) -> str:
        return self.tmux("capture-pane", "-p", "-t", window, "-S", "-200")

    def keys(self, window: str, *keys: str) -> None:
        self.tmux("send-keys", "-t", window, *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.sock, "kill-server"], capture_output=True)


@pytest.fixture
def tmux(vms: VMFactory, tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(vms, tmp_path)
    yield t
    t.close()


def test_sessions_pipe_daemon_kill_terminal_stop_and_vm_restart(
        vms: VMFactory, tmux: Tmux, tmp_path: Path) -> None:
    vms.create("sess")
    vms.ok("vm", "ssh", "sess", "--", "mkdir", "-p", "/root/work")

    # Preflight refusals: one clear error each, and no session left.
    bad_cwd = vms.banger("vm", "session", "start", "sess", "--cwd", "/nope", "--", "true")
    assert bad_cwd.returncode != 0 and "'/nope' does not exist" in bad_cwd.stderr
    bad_cmd = vms.banger("vm", "session", "start", "sess", "--name", "x", "--", "no-such-prog")
    assert bad_cmd.returncode != 0 and "'no-such-prog' is not found" in bad_cmd.stderr
    bad_name = vms.banger("vm", "session", "start", "sess", "--name", "Bad_Name", "--", "true")
    assert bad_name.returncode == 2 and "invalid session name" in bad_name.stderr, bad_name.stderr
    assert vms.ok("vm", "session", "list", "sess", "-q").split() == []
    assert vms.ok("vm", "ssh", "sess", "--", "sh", "-c",
                  "ls -A /root/.banger/sessions 2>/dev/null; true").strip() == ""

    # A pipe session: three JSONL lines in, the same three lines out, from an offset.
    vms.ok("vm", "session", "start", "sess", "--name", "echo", "--cwd", "/root/work", "--pipe",
           "--", *ECHO)
    taken = vms.banger("vm", "session", "start", "sess", "--name", "echo", "--", "true")
    assert taken.returncode != 0 and "already has a session 'echo'" in taken.stderr
    for line in LINES:
        vms.ok("vm", "session", "send", "sess", "echo", "--data", line)
    want = "".join(line + "\n" for line in LINES)
    wait_for("three lines", lambda: logs(vms, "echo", 0)[0] == want)
    text, end = logs(vms, "echo", 0)
    assert end == len(want.encode())
    first = len(LINES[0]) + 1
    assert logs(vms, "echo", first) == (want[first:], end)
    info = session(vms, "echo")
    assert (info["state"], info["mode"], info["cwd"], info["output_end"]) == (
        "running", "pipe", "/root/work", end)

    # SIGKILL the daemon: the session runs on, and a new daemon rebuilds it from the guest.
    pid = vms.env.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for("the daemon to die", lambda: not Path(f"/proc/{pid}").exists())
    listed = json.loads(vms.ok("vm", "session", "list", "sess", "--json"))
    assert [(s["name"], s["state"]) for s in listed["sessions"]] == [("echo", "running")]
    vms.ok("vm", "session", "send", "sess", "echo", "--data", "four")
    wait_for("the fourth line", lambda: logs(vms, "echo", end)[0] == "four\n")

    # A follower reads on until stop ends the session, then exits with its code.
    follower = subprocess.Popen(
        [*vms.env.banger_argv(), "vm", "session", "attach", "sess", "echo", "--follow",
         "--since", str(end)], env=vms.env.env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    stopped = vms.ok("vm", "session", "stop", "sess", "echo")
    assert "stopped with code 143" in stopped
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 143, err
    assert out == "four\n" and "stopped with code 143" in err
    assert int(OFFSET.findall(err)[-1]) == end + 5
    ended = vms.banger("vm", "session", "send", "sess", "echo", "--data", "five")
    assert ended.returncode != 0 and "has ended" in ended.stderr
    rest = vms.banger("vm", "session", "attach", "sess", "echo", "--since", "0")
    assert rest.returncode == 143 and rest.stdout == want + "four\n"

    # An interactive session on a terminal: keys in, output out, resizes, one attach at a time.
    vms.ok("vm", "session", "start", "sess", "--name", "shell", "--", "sh")
    tmux.start("a", "vm session attach sess shell")
    wait_for("the prompt", lambda: "#" in tmux.screen("a"))
    tmux.keys("a", "echo hi $((6*7)); stty size", "Enter")
    wait_for("the answer", lambda: "hi 42" in tmux.screen("a") and "30 100" in tmux.screen("a"))
    tmux.start("b", "vm session attach sess shell")
    wait_for("the refusal", lambda: "exit=" in tmux.screen("b"))
    assert "is attached already: banger pid" in tmux.screen("b")
    tmux.keys("a", "C-]")
    wait_for("the detach", lambda: "exit=0" in tmux.screen("a"))
    assert OFFSET.search(tmux.screen("a"))
    assert session(vms, "shell")["state"] == "running"
    tmux.tmux("kill-session", "-t", "b")
    tmux.start("b", "vm session attach sess shell")
    wait_for("the prompt again", lambda: "hi 42" in tmux.screen("b"))
    tmux.keys("b", "exit 5", "Enter")
    wait_for("the end", lambda: "exit=5" in tmux.screen("b"))
    assert "exited with code 5" in tmux.screen("b")
    shell = session(vms, "shell")
    assert (shell["state"], shell["reason"], shell["exit_code"]) == ("ended", "exited", 5)
    busy = vms.banger("vm", "session", "delete", "sess", "shell")
    assert busy.returncode == 0, busy.stderr

    # A full work disk: the log cannot grow, the program runs on, show says so.
    vms.ok("vm", "session", "start", "sess", "--name", "chatty", "--pipe", "--",
           "sh", "-c", "while :; do printf '%0100d\\n' 0; sleep 0.05; done")
    vms.ok("vm", "ssh", "sess", "--", "sh", "-c", FILL_DISK)
    wait_for("a truncated log", lambda: session(vms, "chatty")["log_truncated"] is True)
    assert session(vms, "chatty")["state"] == "running"
    vms.ok("vm", "ssh", "sess", "--", "rm", "-f", "/root/fill", "/root/fill2")
    before = int(str(session(vms, "chatty")["output_end"]))
    wait_for("the log to grow again",
             lambda: int(str(session(vms, "chatty")["output_end"])) > before)

    # A VM stop ends every session; after a start they show as ended, their output kept.
    vms.ok("vm", "stop", "sess")
    gone = vms.banger("vm", "session", "list", "sess")
    assert gone.returncode != 0 and "is stopped" in gone.stderr
    vms.ok("vm", "start", "sess")
    states = {s["name"]: (s["state"], s["reason"]) for s in
              json.loads(vms.ok("vm", "session", "list", "sess", "--json"))["sessions"]}
    assert states["echo"] == ("ended", "stopped")
    assert states["chatty"] == ("ended", "vm-stopped")
    assert "0" * 100 + "\n" in logs(vms, "chatty", 0)[0]
