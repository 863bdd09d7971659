"""bangerd's process: one instance per user, a 0600 Unix socket, uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
import uvicorn

from banger.config import Settings
from banger.core.errors import BangerError, Conflict
from banger.daemon.app import create_app
from banger.daemon.background import BackgroundTasks
from banger.daemon.history import operation_recaller, operation_recorder
from banger.daemon.operations import OperationRegistry
from banger.daemon.peercred import PeerCredProtocol
from banger.daemon.state import Daemon
from banger.host.files import open_nofollow, sweep_scratch
from banger.host.sockets import listen_private
from banger.store.db import Store

log = structlog.get_logger("banger.daemon.server")

PRUNE_INTERVAL = 60.0


@contextlib.contextmanager
def instance_lock(pidfile: Path) -> Iterator[None]:
    """Hold an exclusive lock on the pidfile for the daemon's lifetime.

    The kernel drops the lock when the process dies, however it dies, so a
    stale pidfile or socket never blocks the next start. Its directory is
    private already (``host.private_dirs``); the pidfile is still opened without
    following a symlink, so a planted link is refused, its target untouched.
    """
    fd = open_nofollow(pidfile, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise Conflict(
                f"another bangerd (pid {other}) is already running for this user",
                hint="use it, or stop it first: banger daemon stop",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def bind_socket(path: Path) -> socket.socket:
    """Bind a fresh 0600 socket at ``path``, replacing a stale one (we hold the lock)."""
    path.unlink(missing_ok=True)
    return listen_private(path, 128)


async def _prune_forever(registry: OperationRegistry, store: Store, ttl: float) -> None:
    """Forget old operations every ``PRUNE_INTERVAL``; a failed round is logged, not fatal."""
    while True:
        await asyncio.sleep(PRUNE_INTERVAL)
        registry.prune()
        cutoff = datetime.now(UTC) - timedelta(seconds=ttl)
        try:
            await asyncio.to_thread(store.operations.delete_finished_before, cutoff)
        except BangerError as exc:
            log.warning("could not prune the operation history", error=exc.message)


async def start_services(stack: contextlib.AsyncExitStack, daemon: Daemon) -> None:
    """Start the daemon's background services; ``stack`` stops them, last started first."""
    stack.push_async_callback(daemon.dns.close)  # listeners, resolved's routing
    await daemon.dns.start()  # before reconcile, which may adopt the bridge
    stack.push_async_callback(daemon.vms.close)  # VM exit watchers, the idle TAP pool
    await daemon.creator.snapshots.recover()  # before reconcile reaps its template's TAP
    await daemon.creator.pool.recover()  # a killed daemon's pool members: the same
    await daemon.vms.reconcile()
    # background snapshot builds: closed after the creates are cancelled (one finishing
    # then starts none), before the network they use
    stack.push_async_callback(daemon.creator.keeper.aclose)
    daemon.creator.keeper.sweep_soon()  # what went stale while no daemon ran
    stack.push_async_callback(daemon.creator.pool.close)  # before the network closes
    daemon.creator.pool.start()
    stack.push_async_callback(daemon.operations.cancel_all)
    stack.push_async_callback(daemon.stats.close)  # guest reads for top
    tasks = await stack.enter_async_context(BackgroundTasks())
    ttl = daemon.settings.operation_ttl_seconds
    tasks.spawn(_prune_forever(daemon.operations, daemon.store, ttl), name="prune operations")
    if daemon.idle.after is not None:
        tasks.spawn(daemon.idle.run_forever(), name="auto-stop unused VMs")


def _open_store(stack: contextlib.AsyncExitStack, settings: Settings) -> Store:
    """The store, with what a killed daemon left behind put right (we hold the lock)."""
    store = Store.open(settings.paths.db)
    stack.callback(store.close)
    sweep_scratch(settings.paths.state_dir)  # what a killed daemon left mid-import
    interrupted = store.operations.mark_interrupted()
    if interrupted:
        log.warning("operations interrupted by the previous daemon", count=interrupted)
    return store


def _listen(stack: contextlib.AsyncExitStack, path: Path) -> socket.socket:
    sock = bind_socket(path)
    stack.callback(path.unlink, missing_ok=True)
    stack.callback(sock.close)
    return sock


async def serve(settings: Settings) -> None:
    """Run the daemon until a shutdown request or SIGTERM/SIGINT.

    Everything it starts goes on one exit stack, so shutdown (or a failed
    start) stops it all in reverse order, the store last.
    """
    paths = settings.paths
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(log.info, "bangerd stopped")
        store = await asyncio.to_thread(_open_store, stack, settings)
        registry = OperationRegistry(
            ttl_seconds=settings.operation_ttl_seconds,
            persist=operation_recorder(store),
            recall=operation_recaller(store),
            log_file=paths.log_file,
        )
        daemon = Daemon.build(settings, store, registry, frozenset({os.getuid(), 0}))
        sock = _listen(stack, paths.socket)
        config = uvicorn.Config(
            create_app(daemon),
            http=PeerCredProtocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
        server = uvicorn.Server(config)

        def request_shutdown() -> None:
            server.should_exit = True

        daemon.request_shutdown = request_shutdown
        await start_services(stack, daemon)
        log.info("bangerd listening", socket=str(paths.socket), pid=os.getpid())
        await server.serve(sockets=[sock])
