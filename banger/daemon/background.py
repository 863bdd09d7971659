"""Tasks the daemon runs beside its requests: held until they end, failures logged.

The event loop keeps only a weak reference to a task, so a task nobody holds
can vanish mid-flight, and an exception in one nobody awaits is lost.
``BackgroundTasks`` holds every task it spawns until it ends, logs any
exception with the task's name, and cancels and awaits what is left when it
closes (it is an async context manager, for ``serve()``'s exit stack).

``Listeners`` calls what subscribed to one kind of event; one that raises is logged
and never fails the caller.

``CreatesInFlight`` counts the ``vm create`` operations running: background work that
would compete with them for the CPU (a snapshot build, a warm pool fill) waits until
none runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import structlog

from banger.api.models import OperationResult
from banger.daemon.operations import OperationContext, Work

log = structlog.get_logger("banger.daemon.background")

T = TypeVar("T")


class BackgroundTasks:
    """A set of named tasks with one owner: kept referenced, failures logged, closed together."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Start ``coro`` as task ``name``; it is held until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task failed", task=task.get_name(), exc_info=exc)

    @property
    def running(self) -> frozenset[asyncio.Task[Any]]:
        """The tasks that have not ended yet."""
        return frozenset(self._tasks)

    async def aclose(self) -> None:
        """Cancel every task still running and wait for all of them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> BackgroundTasks:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class CreatesInFlight:
    """The creates running now, one count every background worker consults."""

    def __init__(self) -> None:
        self._count = 0
        self._quiet = asyncio.Event()  # set while no create runs
        self._quiet.set()

    @property
    def quiet(self) -> bool:
        """Whether no create runs."""
        return self._quiet.is_set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Counted as a create in flight while inside."""
        self._count += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._quiet.set()

    def counting(self, work: Work) -> Work:
        """``work`` (a create) counted as in flight while it runs."""

        async def counted(ctx: OperationContext) -> OperationResult | None:
            async with self.running():
                return await work(ctx)

        return counted

    async def lull(self, at_most: float | None = None) -> None:
        """Until no create runs; with ``at_most``, no longer than that many seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self._quiet.wait()


class Listeners:
    """What subscribed to one kind of event (``event`` names it in the log), each called
    on the event loop in turn. One that raises is logged and skipped: it must not fail
    the verb, delete or lookup that told it."""

    def __init__(self, event: str) -> None:
        self.event = event
        self._subscribed: list[Callable[..., None]] = []

    def add(self, listener: Callable[..., None]) -> None:
        self._subscribed.append(listener)

    def notify(self, *args: object) -> None:
        for listener in self._subscribed:
            try:
                listener(*args)
            except Exception:
                log.exception("a listener failed", about=self.event, listener=repr(listener))
