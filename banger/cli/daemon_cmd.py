"""``banger daemon start|stop|status``."""

from __future__ import annotations

import click

from banger.cli.context import CliContext, json_option, pass_ctx
from banger.cli.lifecycle import start_daemon, stop_daemon, try_ping
from banger.cli.render import console, print_json, print_table
from banger.core.errors import DaemonNotRunning


@click.group("daemon")
def daemon_group() -> None:
    """Control bangerd, the per-user daemon that owns all state.

    \b
    Example:
      banger daemon status
    """


@daemon_group.command("start")
@pass_ctx
def daemon_start(ctx: CliContext) -> None:
    """Start bangerd in the background (does nothing when it runs already).

    \b
    Example:
      banger daemon start
    """
    ping, started = start_daemon(ctx.settings, ctx.bare_client())
    verb = "started" if started else "already running"
    console().print(f"bangerd {verb} (pid {ping.pid}, socket {ping.socket})")


@daemon_group.command("stop")
@pass_ctx
def daemon_stop(ctx: CliContext) -> None:
    """Stop bangerd gracefully and wait for it to exit. Running VMs keep running.

    \b
    Example:
      banger daemon stop
    """
    pid = stop_daemon(ctx.bare_client())
    console().print("bangerd is not running" if pid is None else f"bangerd stopped (pid {pid})")


@daemon_group.command("status")
@json_option
@pass_ctx
def daemon_status(ctx: CliContext, as_json: bool) -> None:
    """Show whether bangerd runs; exits non-zero when it does not.

    \b
    Example:
      banger daemon status --json
    """
    ping = try_ping(ctx.bare_client())
    if ping is None:
        if as_json:
            print_json({"running": False, "socket": str(ctx.settings.paths.socket)})
        raise DaemonNotRunning(
            "bangerd is not running", hint="start it with: banger daemon start"
        )
    if as_json:
        print_json({"running": True, **ping.model_dump()})
        return
    print_table(
        ["PID", "SOCKET", "VERSION", "LOG FILE", "UPTIME"],
        [[ping.pid, ping.socket, f"{ping.version} ({ping.commit[:12]})", ping.log_file,
          _duration(ping.uptime_seconds)]],
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
