"""Cooperative cancellation of blocking work that runs in a worker thread.

The daemon's operation runs the work with a :class:`CancelToken` made current
(a context variable, so ``asyncio.to_thread`` carries it into the thread).
The work calls :func:`checkpoint` between steps, and ``host.run.run`` kills
its child when the token fires; both raise ``Cancelled``, so the work's own
``finally`` blocks remove what it staged before the thread ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from banger.core.errors import Cancelled

T = TypeVar("T")


class CancelToken:
    """A one-way flag: once set, every checkpoint under it raises ``Cancelled``."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as the token is cancelled."""
        return self._event.wait(seconds)


_current: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar(
    "banger_cancel_token", default=None
)


def current_token() -> CancelToken | None:
    return _current.get()


@contextlib.contextmanager
def cancel_scope(token: CancelToken) -> Iterator[None]:
    """Make ``token`` the current one for the block (in this thread or context)."""
    reset = _current.set(token)
    try:
        yield
    finally:
        _current.reset(reset)


def checkpoint() -> None:
    """Raise ``Cancelled`` if the current work was cancelled; cheap, call it between steps."""
    token = _current.get()
    if token is not None and token.cancelled:
        raise Cancelled("operation cancelled")


def pause(seconds: float) -> None:
    """Sleep ``seconds`` (a poll interval), waking early and raising when cancelled."""
    token = _current.get()
    if token is None:
        threading.Event().wait(seconds)
    elif token.wait(seconds):
        raise Cancelled("operation cancelled")


async def join_thread(thread: asyncio.Future[T]) -> T:
    """Await a worker thread's future to its end, even if our task is cancelled meanwhile."""
    while True:
        try:
            return await asyncio.shield(thread)
        except asyncio.CancelledError:
            if thread.done():
                return thread.result()


async def to_thread_joined(func: Callable[..., T], /, *args: Any) -> T:
    """``asyncio.to_thread`` whose cancel stops the thread and waits for it to end.

    A cancelled ``asyncio.to_thread`` returns at once while its thread runs on,
    so whatever follows the cancel (an undo, a drain) would race it. Here the
    thread runs under a token of its own, which the cancel fires (its next
    checkpoint raises, ``host.run.run`` kills its child); the cancel goes on
    only once the thread has ended, whatever it raised.
    """
    token = CancelToken()

    def call() -> T:
        with cancel_scope(token):
            return func(*args)

    thread = asyncio.ensure_future(asyncio.to_thread(call))
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        token.cancel()
        with contextlib.suppress(Exception):
            await join_thread(thread)
        raise
