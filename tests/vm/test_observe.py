"""Observability with real guests: ``vm stats``, ``vm health``, ``banger top`` through a
real terminal (tmux), and auto-stop of a VM nobody uses.

The guest burns CPU in the background (a shell loop started over ``vm ssh``) and the
VMM's CPU % must rise; the guest's memory figures must fit the VM's size; an SSH
session is counted while it runs; ``top`` draws the VM and the capacity bars and
quits on ``q``, with and without colour. Auto-stop leaves a VM with an SSH session
running and stops it once the session ends, saying why in ``vm show``.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from banger.core.wait import poll_until
from tests.vm.conftest import VMFactory

pytestmark = pytest.mark.vm

BURN = "setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SGR = re.compile(r"\x1b\[[0-9;]*m")


def _until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    assert poll_until(check, timeout=timeout, max_interval=0.5), f"no {what} in {timeout}s"


def _stats(vms: VMFactory, name: str) -> dict[str, Any]:
    answer = json.loads(vms.ok("vm", "stats", name, "--json"))
    assert [a["vm"] for a in answer] == [name]
    return dict(answer[0])


def _cpu(vms: VMFactory, name: str, samples: int) -> list[float]:
    return [float(_stats(vms, name)["host"]["cpu_percent"]) for _ in range(samples)]


@contextmanager
def _terminal(vms: VMFactory, tmp: Path, *, colour: bool) -> Iterator[str]:
    """``banger top`` in a 120x40 tmux session of its own server; yields the tmux socket."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (needed to drive banger top through a terminal)")
    env = vms.env.env(TERM="xterm-256color")
    if colour:
        env.pop("NO_COLOR")
    script = tmp / f"top-{secrets.token_hex(3)}.sh"
    script.write_text("exec env -i " + shlex.join(
        [f"{k}={v}" for k, v in env.items()] + [*vms.env.banger_argv(), "top"]) + "\n")
    sock = f"bgtop{secrets.token_hex(3)}"
    subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-x", "120", "-y", "40",
                    "-s", "top", f"sh {shlex.quote(str(script))}; sleep 30"], check=True)
    try:
        yield sock
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)


def _screen(sock: str, escapes: bool = False) -> str:
    argv = ["tmux", "-L", sock, "capture-pane", "-p", "-t", "top"] + (["-e"] if escapes else [])
    return subprocess.run(argv, capture_output=True, text=True).stdout


def _top_runs(sock: str) -> bool:
    argv = ["tmux", "-L", sock, "list-panes", "-t", "top", "-F", "#{pane_current_command}"]
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    return "python" in out


def _check_top(vms: VMFactory, tmp: Path, name: str, *, colour: bool) -> None:
    with _terminal(vms, tmp, colour=colour) as sock:
        _until(lambda: name in _screen(sock) and "vCPU" in _screen(sock), timeout=60,
                   what="banger top showing the VM")
        screen = _screen(sock)
        assert re.search(r"vCPU +\[#*-*\] +\d+%", screen), screen
        assert re.search(r"memory +\[#+-*\] +\d+%", screen), screen  # the VM reserves some
        assert re.search(r"disk +\[#*-*\] +\d+%", screen), screen
        coloured = SGR.search(_screen(sock, escapes=True).replace("\x1b[m", "").replace(
            "\x1b[0m", "").replace("\x1b[1m", "").replace("\x1b[22m", ""))
        if not colour:
            assert coloured is None, "colour under NO_COLOR"
        subprocess.run(["tmux", "-L", sock, "send-keys", "-t", "top", "q"], check=True)
        _until(lambda: not _top_runs(sock), timeout=15, what="banger top quitting on q")


def test_stats_health_and_top_of_a_real_guest(vms: VMFactory, tmp_path: Path) -> None:
    vms.create("obs", "--vcpu", "1", "--memory", "512")
    idle = _stats(vms, "obs")
    host, guest = idle["host"], idle["guest"]
    assert idle["state"] == "running" and idle["guest_error"] is None
    assert host["rss_bytes"] > 16 << 20 and host["disk_bytes"] > 0
    assert host["tap_rx_bytes"] > 0 and host["tap_tx_bytes"] > 0  # the SSH traffic so far
    assert 256 << 20 < guest["mem_total_bytes"] <= 512 << 20
    assert 0 < guest["mem_used_bytes"] < guest["mem_total_bytes"]
    assert guest["mem_used_bytes"] + guest["mem_available_bytes"] == guest["mem_total_bytes"]
    disks = {d["mount"]: d for d in guest["disks"]}
    assert set(disks) == {"/", "/root"} and 0.8 * 2**30 < disks["/root"]["total_bytes"] <= 2**30
    assert guest["uptime_seconds"] > 0 and UUID.fullmatch(guest["boot_id"])
    assert guest["ssh_sessions"] == 0 and guest["unparsed"] == 0

    with subprocess.Popen([*vms.env.banger_argv(), "vm", "ssh", "obs", "--", "sleep", "20"],
                          env=vms.env.env(), stdin=subprocess.DEVNULL) as session:
        _until(lambda: _stats(vms, "obs")["guest"]["ssh_sessions"] == 1, timeout=15,
                   what="the SSH session counted")
        session.kill()

    resting = min(_cpu(vms, "obs", 2))
    assert vms.ssh("obs", "sh", "-c", BURN).returncode == 0
    time.sleep(1)
    burning = max(_cpu(vms, "obs", 3))
    assert burning >= max(40.0, resting + 25), (resting, burning)

    health = vms.banger("vm", "health", "obs", "--json")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["boot_id"] == guest["boot_id"]
    _check_top(vms, tmp_path, "obs", colour=False)
    _check_top(vms, tmp_path, "obs", colour=True)

    vms.ok("vm", "stop", "obs")
    down = vms.banger("vm", "health", "obs")
    assert down.returncode == 1 and "not running" in down.stderr
    stopped = _stats(vms, "obs")
    assert stopped["state"] == "stopped" and "not running" in stopped["guest_error"]
    assert stopped["host"]["cpu_percent"] is None and stopped["host"]["disk_bytes"] > 0


def test_auto_stop_waits_for_the_ssh_session_to_end(vms: VMFactory) -> None:
    vms.env.extra_env["BANGER_AUTO_STOP_STALE_AFTER"] = "6s"
    vms.create("idle", "--vcpu", "1", "--memory", "512")
    with subprocess.Popen([*vms.env.banger_argv(), "vm", "ssh", "idle", "--", "sleep", "15"],
                          env=vms.env.env(), stdin=subprocess.DEVNULL) as session:
        time.sleep(11)  # past the setting since the create: only the session keeps it up

        def state() -> str:  # vm list names no VM, so asking does not count as use
            rows = json.loads(vms.ok("vm", "list", "--json"))
            return str(next(r["state"] for r in rows if r["name"] == "idle"))

        assert state() == "running"
        assert session.wait(timeout=60) == 0
    ended = time.monotonic()
    _until(lambda: state() == "stopped", timeout=60, what="the unused VM stopped")
    assert time.monotonic() - ended >= 4  # ~ the setting, less one sweep interval
    shown = vms.show("idle")
    assert str(shown["state_reason"]).startswith("stopped automatically: no SSH session")
