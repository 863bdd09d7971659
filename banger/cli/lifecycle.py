"""Finding, starting and stopping the user's bangerd: the CLI's business, so it lives in cli/."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from banger.api.client import Client
from banger.config import Settings, default_runtime_dir
from banger.core.errors import DaemonNotRunning, Unavailable
from banger.core.wait import poll_until
from banger.host.install import system_daemon_socket
from banger.host.private_dirs import ensure_private_dir
from banger.host.proc import (
    pid_alive,
    python_module_argv,
    send_signal,
    start_time,
)

if TYPE_CHECKING:
    from banger.api.models import Ping

STOP_TIMEOUT = 15.0
DriftHandler = Callable[[str], None]


def try_ping(client: Client) -> Ping | None:
    try:
        return client.ping()
    except DaemonNotRunning:
        return None


def start_daemon(settings: Settings, client: Client) -> tuple[Ping, bool]:
    """Start bangerd unless it answers already; return its ping and whether we started it."""
    from banger.api.models import Ping

    ping = try_ping(client)
    if ping is not None:
        return ping, False
    from banger.host.run import spawn_detached  # asyncio and all: only when starting one

    state_dir = ensure_private_dir(settings.paths.state_dir, setting="BANGER_STATE_DIR")
    stderr_log = state_dir / "bangerd.stderr.log"
    offset = stderr_log.stat().st_size if stderr_log.exists() else 0
    # Its own session at /, and our environment: the BANGER_* settings are the daemon's too.
    proc = spawn_detached(python_module_argv("banger.daemon.main"), log_path=stderr_log,
                          cwd="/", env="inherit")

    def ready() -> Ping | bool | None:
        if proc.poll() is not None:
            return True  # exited: stop waiting, report below
        return try_ping(client)

    result = poll_until(ready, timeout=settings.daemon_start_timeout)
    if isinstance(result, Ping):
        return result, True
    # Another CLI may have won the race to start it; its daemon is as good as ours.
    ping = try_ping(client)
    if ping is not None:
        return ping, False
    with open(stderr_log, "rb") as f:
        f.seek(offset)
        tail = f.read().decode(errors="replace").strip().splitlines()[-1:]
    reason = tail[0] if tail else f"no answer within {settings.daemon_start_timeout}s"
    raise Unavailable(f"bangerd failed to start: {reason}", hint=f"see {stderr_log}")


def stop_daemon(client: Client) -> int | None:
    """Ask bangerd to exit and wait for it; escalate to signals. Return its pid, or None."""
    ping = try_ping(client)
    if ping is None:
        return None
    pid = ping.pid
    started = start_time(pid)  # a pid reused while we wait is never signalled
    try:
        client.request("POST", "/shutdown")
    except DaemonNotRunning:
        pass
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and pid_alive(pid, started):
            send_signal(pid, sig)
        if poll_until(lambda: not pid_alive(pid, started), timeout=STOP_TIMEOUT / 3):
            return pid
    raise Unavailable(f"bangerd (pid {pid}) did not exit", hint=f"kill -9 {pid}")


def system_socket(settings: Settings) -> Path | None:
    """The system install's daemon socket when this user owns the install (and has not
    pointed runtime_dir elsewhere); None: the per-user daemon, started on demand."""
    return system_daemon_socket(settings.runtime_dir == default_runtime_dir())


def daemon_socket(settings: Settings) -> Path:
    return system_socket(settings) or settings.paths.socket


def connect(settings: Settings, *, on_version_drift: DriftHandler | None = None) -> Client:
    """A client for the user's daemon; the first request that finds no daemon starts one
    (a system install's daemon is systemd's to start: its absence is one clear line).

    No ping up front: a running daemon (the usual case) costs each command one
    round trip, not two.
    """
    system = system_socket(settings)
    if system is not None:
        def not_running() -> None:
            raise Unavailable(f"the system bangerd does not answer on {system}",
                              hint="sudo systemctl start bangerd (see banger system status)")

        return Client(system, on_version_drift=on_version_drift, on_not_running=not_running)

    def start() -> None:
        with Client(settings.paths.socket) as probe:
            start_daemon(settings, probe)

    return Client(settings.paths.socket, on_version_drift=on_version_drift, on_not_running=start)
