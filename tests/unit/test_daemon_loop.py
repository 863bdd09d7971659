"""The daemon's event loop never blocks, its background tasks are owned, and shutdown stops them.

Deletes and the blob-cache prune run on a real store and real files; the
served daemon runs in-process on a real socket (its networking kept to
user mode, so the test leaves the host's links alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from banger.api.models import OperationState
from banger.config import Settings
from banger.daemon import server
from banger.daemon.background import BackgroundTasks, Listeners
from banger.daemon.image_service import ImageService
from banger.daemon.kernel_service import KernelService
from banger.daemon.operations import OperationContext, OperationRegistry
from banger.host.files import scratch_root
from banger.images.oci import blob_cache_lock, blob_dir
from banger.store.db import Store
from banger.store.records import ImageRecord, KernelRecord

LOCK_RELEASE_AFTER_S = 0.5


async def loop_ticks_while(work: Awaitable[Any]) -> int:
    """How often another coroutine got to run while ``work`` was in flight (it must end)."""
    task = asyncio.ensure_future(work)
    ticks = 0
    while not task.done():
        ticks += 1
        await asyncio.sleep(0)
    await task
    return ticks


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "state.db")
    yield opened
    opened.close()


def services(store: Store, tmp_path: Path) -> tuple[KernelService, ImageService]:
    kernels = KernelService(store, tmp_path / "kernels", tmp_path / "cache")
    return kernels, ImageService(store, kernels, tmp_path / "images", tmp_path / "cache")


def make_tree(root: Path, dirs: int = 40, files: int = 100) -> None:
    for d in range(dirs):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"f{f}").write_bytes(b"x")


def test_deleting_an_image_with_a_large_tree_lets_other_coroutines_run(
    store: Store, tmp_path: Path
) -> None:
    _, images = services(store, tmp_path)
    path = tmp_path / "images" / "img1"
    make_tree(path)
    store.images.add(ImageRecord(id="img1", name="big", source="test", path=path))

    ticks = asyncio.run(loop_ticks_while(images.delete("big")))

    assert ticks > 1, "the image's files were removed on the event loop"
    assert not path.exists()
    assert store.images.find("big") is None


@contextlib.contextmanager
def held_flock(path: Path) -> Iterator[int]:
    """An exclusive flock on ``path`` that a timer thread drops after a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    timer = threading.Timer(LOCK_RELEASE_AFTER_S, os.close, [fd])
    timer.start()
    try:
        yield fd
    finally:
        timer.join()


def test_a_kernel_delete_waiting_for_the_kernels_lock_does_not_block_the_loop(
    store: Store, tmp_path: Path
) -> None:
    kernels, _ = services(store, tmp_path)
    path = tmp_path / "kernels" / "k1"
    make_tree(path, dirs=2, files=2)
    store.kernels.add(KernelRecord(name="k1", version="6.1", source="test", path=path))

    with held_flock(scratch_root(tmp_path / "kernels") / "kernel-k1.lock"):
        ticks = asyncio.run(loop_ticks_while(kernels.delete("k1")))

    assert ticks > 1, "the kernel delete waited for its lock on the event loop"
    assert not path.exists()
    assert store.kernels.find("k1") is None


def test_operations_blocked_in_their_threads_leave_the_shared_executor_to_requests() -> None:
    """More blocked operations than the default executor has workers: a request's short
    ``to_thread`` call (a delete, a prune) still answers at once."""
    release = threading.Event()
    crowd = 40  # above the default executor's cap of 32 workers

    def blocked(progress: Any) -> str:
        release.wait()
        return "done"

    async def work(ctx: OperationContext) -> None:
        await ctx.in_thread("block", blocked)

    async def scenario() -> tuple[bool, list[OperationState]]:
        registry = OperationRegistry(ttl_seconds=60)
        ops = [registry.begin("test.block", work) for _ in range(crowd)]
        await asyncio.sleep(0.1)  # let every operation reach its thread
        timer = threading.Timer(LOCK_RELEASE_AFTER_S * 4, release.set)
        timer.start()
        await asyncio.to_thread(lambda: None)
        answered_while_blocked = not release.is_set()
        release.set()
        timer.join()
        states = [(await registry.join(op.id)).state for op in ops]
        return answered_while_blocked, states

    answered_while_blocked, states = asyncio.run(scenario())
    assert answered_while_blocked, "blocked operations starved the shared thread pool"
    assert states == [OperationState.SUCCEEDED] * crowd


def test_a_failing_background_task_is_logged_with_its_name() -> None:
    async def boom() -> None:
        raise RuntimeError("refill went wrong")

    async def scenario() -> None:
        tasks = BackgroundTasks()
        tasks.spawn(boom(), name="refill the TAP pool")
        while tasks.running:
            await asyncio.sleep(0)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())

    failures = [e for e in logs if e["event"] == "background task failed"]
    assert len(failures) == 1
    assert failures[0]["task"] == "refill the TAP pool"
    assert isinstance(failures[0]["exc_info"], RuntimeError)


def test_background_tasks_hold_their_tasks_and_cancel_the_rest_on_close() -> None:
    async def scenario() -> tuple[int, bool, int]:
        forever = asyncio.Event()
        async with BackgroundTasks() as tasks:
            task = tasks.spawn(forever.wait(), name="waits forever")
            await asyncio.sleep(0)
            held = len(tasks.running)
        return held, task.cancelled(), len(tasks.running)

    held, cancelled, left = asyncio.run(scenario())
    assert (held, cancelled, left) == (1, True, 0)


# --- the served daemon ---------------------------------------------------------------


def _settings(tmp_path: Path) -> Settings:
    for name in ("state", "cache", "run"):
        (tmp_path / name).mkdir(mode=0o700)
    return Settings(
        state_dir=tmp_path / "state", cache_dir=tmp_path / "cache", runtime_dir=tmp_path / "run",
        dns_listen="127.0.0.1:0",
    )


def _fds_open_on(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return count


async def _until(check: Any, what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    # User-mode networking: no bridge or TAP on the host this test runs on.
    monkeypatch.setattr("banger.daemon.vm_network.net.have_net_admin", lambda: False)
    return _settings(tmp_path)


def _client(settings: Settings) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(settings.paths.socket))
    return httpx.AsyncClient(transport=transport, base_url="http://bangerd", timeout=30)


def test_ping_answers_while_a_cache_prune_waits_for_a_pull_and_shutdown_stops_everything(
    settings: Settings,
) -> None:
    cache = settings.paths.cache_dir
    blob = blob_dir(cache) / "sha256" / ("ab" * 32)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"layer")
    lock_file = cache / "oci" / "cache.lock"

    async def scenario() -> tuple[set[str], set[asyncio.Task[Any]]]:
        served = asyncio.create_task(server.serve(settings))
        await _until(settings.paths.socket.exists, "the daemon never listened")
        async with _client(settings) as client:
            assert (await client.get("/v1/ping")).status_code == 200  # services all started
            services = {t.get_name() for t in asyncio.all_tasks()}
            with blob_cache_lock(cache):  # a pull in progress: the prune must wait for it
                prune = asyncio.create_task(client.post("/v1/images/cache/prune", json={}))
                await _until(lambda: _fds_open_on(lock_file) == 2, "the prune never waited")
                ping = await client.get("/v1/ping")
                assert ping.status_code == 200 and not prune.done()
            pruned = await prune
            assert pruned.status_code == 200, pruned.text
            assert pruned.json()["blobs"] == 1 and not blob.exists()
            await client.post("/v1/shutdown")
        await served
        return services, asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[arg-type]

    services, leftover = asyncio.run(scenario())
    assert "prune operations" in services
    assert leftover == set()
    assert not settings.paths.socket.exists()


def test_a_listener_that_raises_is_logged_and_the_others_still_hear() -> None:
    """One broken subscriber must not fail what told it (a VM verb, a kernel delete, a
    create's snapshot lookup), nor keep the news from the rest."""
    heard: list[str] = []

    def broken(what: str) -> None:
        raise RuntimeError("boom")

    listeners = Listeners("a test event")
    listeners.add(broken)
    listeners.add(heard.append)
    with structlog.testing.capture_logs() as logs:
        listeners.notify("news")
    assert heard == ["news"]
    assert [entry["event"] for entry in logs] == ["a listener failed"]
    assert logs[0]["about"] == "a test event" and "broken" in logs[0]["listener"]
