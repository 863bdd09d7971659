"""Tasks the daemon runs beside its requests: held until they end, failures logged.

The event loop keeps only a weak reference to a task, so a task nobody holds
can vanish mid-flight, and an exception in one nobody awaits is lost.
``BackgroundTasks`` holds every task it spawns until it ends, logs any
exception with the task's name, and cancels and awaits what is left when it
closes (it is an async context manager, for ``serve()``'s exit stack).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

import structlog

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
