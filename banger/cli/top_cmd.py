"""``banger top``: every VM and the host's capacity, live, refreshed every second.

One ``GET /v1/top`` per refresh (host figures, the daemon's cached guest figures).
Keys are read from the terminal in cbreak mode (``q`` quits); the view is plain
ASCII (bars of ``#``), so it reads the same over SSH and under ``NO_COLOR``.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from banger.api.models import TopView
from banger.cli import usage_view as fmt
from banger.cli.context import CliContext, pass_ctx
from banger.cli.render import console
from banger.core.display import escape_text
from banger.core.errors import BangerError, InvalidInput

if TYPE_CHECKING:
    from rich.console import RenderableType

REFRESH_SECONDS = 1.0
QUIT_KEYS = frozenset("qQ\x03\x04")  # q, Ctrl-C, Ctrl-D


def capacity(view: TopView) -> list[str]:
    """The host's bars: vCPUs and memory reserved by running VMs, banger's disk."""
    host = view.host
    memory = host.memory_mib or 0
    room = host.banger_bytes + host.fs_free_bytes
    return [
        f"vCPU   {fmt.bar(host.vcpus_reserved, host.cpus)}  "
        f"{host.vcpus_reserved}/{host.cpus} reserved by running VMs",
        f"memory {fmt.bar(host.memory_mib_reserved, memory)}  "
        f"{host.memory_mib_reserved}/{memory or '?'} MiB reserved by running VMs",
        f"disk   {fmt.bar(host.banger_bytes, room)}  "
        f"banger {fmt.size(host.banger_bytes)}, {fmt.size(host.fs_free_bytes)} free",
    ]


def render(view: TopView | None, error: str | None) -> RenderableType:
    """One frame: a title, the capacity bars, a row per VM (pure, for tests too)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    title = f"banger top - {time.strftime('%H:%M:%S')} - q quits"
    lines: list[RenderableType] = [Text(title)]
    if error is not None:
        lines.append(Text(f"banger: {escape_text(error)}"))
    if view is None:
        return Group(*lines)
    lines.extend(Text(line) for line in capacity(view))
    table = Table(box=box.ASCII, show_edge=False, pad_edge=False, header_style="bold")
    for header in ("NAME", "STATE", "VCPU", "MEMORY", "CPU", "RSS", "GUEST MEM", "/root",
                   "HOST DISK", "UPTIME", "LOAD"):
        table.add_column(header, no_wrap=True)
    for vm in view.vms:
        table.add_row(*(Text(cell) for cell in (
            vm.name, vm.state, str(vm.vcpu), f"{vm.memory_mib}M",
            fmt.percent(vm.host.cpu_percent), fmt.size(vm.host.rss_bytes),
            fmt.memory(vm.guest), fmt.disk(vm.guest, "/root"), fmt.size(vm.host.disk_bytes),
            fmt.uptime(vm.guest), fmt.load(vm.guest),
        )))
    lines.extend([Text(""), table] if view.vms else [Text("no VMs")])
    return Group(*lines)


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys arrive one at a time, unechoed; the terminal is restored however we leave."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_for_quit(fd: int, seconds: float) -> bool:
    """Read keys for up to ``seconds``; True once a quit key comes (or the terminal closes)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            key = os.read(fd, 1).decode("ascii", "replace")
            if key == "" or key in QUIT_KEYS:
                return True
    return False


@click.command("top")
@pass_ctx
def top(ctx: CliContext) -> None:
    """Watch every VM (state, CPU, memory, disk, uptime) and the host's capacity, live.

    Refreshes every second; q quits. Needs a terminal (for scripts: banger vm stats --json).

    \b
    Example:
      banger top
    """
    from rich.live import Live

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InvalidInput("banger top needs a terminal",
                           hint="for scripts: banger vm stats VM... --json")
    client = ctx.client()
    fd = sys.stdin.fileno()
    with cbreak(fd), Live(render(None, None), console=console(), screen=True,
                          auto_refresh=False) as live:
        while True:
            try:
                view, error = client.get_model("/top", TopView), None
            except BangerError as exc:  # the daemon went away: say so, keep trying
                view, error = None, exc.message
            live.update(render(view, error), refresh=True)
            if wait_for_quit(fd, REFRESH_SECONDS):
                return
