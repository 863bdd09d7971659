"""``banger top``'s frame, drawn from a crafted answer: ASCII bars, escaped errors, no
terminal needed to render; without a terminal the command refuses before any request."""

from __future__ import annotations

from rich.console import Console

from banger.api.models import GuestUsage, HostUsage, TopHost, TopView, TopVM
from banger.cli.top_cmd import render
from tests.conftest import BangerEnv


def view() -> TopView:
    host = TopHost(cpus=2, memory_mib=4096, vcpus_reserved=3, memory_mib_reserved=1024,
                   fs_total_bytes=100 << 30, fs_free_bytes=30 << 30, banger_bytes=10 << 30)
    guest = GuestUsage(mem_total_bytes=512 << 20, mem_available_bytes=256 << 20,
                       mem_used_bytes=256 << 20, uptime_seconds=3700, load=[0.5, 0.2, 0.1])
    return TopView(host=host, vms=[
        TopVM(name="box", state="running", vcpu=3, memory_mib=1024, guest=guest,
              host=HostUsage(cpu_percent=12.5, rss_bytes=300 << 20, disk_bytes=1 << 30)),
        TopVM(name="off", state="stopped", vcpu=1, memory_mib=128, host=HostUsage(),
              guest_error="not running"),
    ])


def text(frame: object) -> str:
    out = Console(width=120, no_color=True, color_system=None, record=True)
    out.print(frame)
    return out.export_text()


def test_a_frame_has_the_bars_and_a_row_per_vm() -> None:
    frame = text(render(view(), None))
    assert "vCPU   [##############################] 100%  3/2 reserved" in frame  # over-commit
    assert "memory [########----------------------]  25%  1024/4096 MiB" in frame
    assert "disk   [########----------------------]  25%  banger 10.0G, 30.0G free" in frame
    box = next(line for line in frame.splitlines() if line.startswith("box "))
    assert "12.5%" in box and "256.0M/512.0M" in box and "1h1m40s" in box
    off = next(line for line in frame.splitlines() if line.startswith("off "))
    assert "stopped" in off and "%" not in off


def test_an_error_from_the_daemon_is_escaped_and_the_frame_still_draws() -> None:
    frame = text(render(None, "gone \x1b[2J\x1b]0;owned\x07"))
    assert "\x1b" not in frame and "\\x1b[2J" in frame and "q quits" in frame


def test_top_without_a_terminal_refuses_before_asking_the_daemon(banger_env: BangerEnv) -> None:
    done = banger_env.banger("top")
    assert done.returncode == 2 and "banger top needs a terminal" in done.stderr
    assert not banger_env.socket.exists()  # no daemon was started
