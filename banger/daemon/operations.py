"""The async-operation registry: long work runs as a task with live stages.

A route calls ``begin`` and returns the operation at once; the CLI follows it
with ``GET /v1/operations/{id}?revision=N&wait=S`` (a long poll that answers
as soon as the operation changes). Finished operations are pruned after a TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import structlog

from banger.api.errors import error_body
from banger.api.models import Operation, OperationResult, OperationState, Stage, StageState
from banger.core.cancel import CancelToken, cancel_scope, join_thread
from banger.core.errors import BangerError, Cancelled, InternalError, NotFound
from banger.core.names import new_id

log = structlog.get_logger("banger.daemon.operations")

T = TypeVar("T")
Work = Callable[["OperationContext"], Awaitable[OperationResult | None]]
Persist = Callable[[Operation], None]
Recall = Callable[[str], Operation | None]


def new_op_id() -> str:
    return new_id()


def host_os_error(exc: OSError) -> BangerError:
    """A clear error for a failed file operation (a full disk above all)."""
    where = f" ({exc.filename})" if exc.filename else ""
    hint = "free some disk space and try again" if exc.errno == errno.ENOSPC else None
    return BangerError(f"{exc.strerror or exc}{where}", hint=hint)


def unexpected_error(exc: BaseException, log_file: Path | None = None) -> BangerError:
    """The user-facing error for an exception that no layer turned into a BangerError."""
    if isinstance(exc, BangerError):
        return exc
    if isinstance(exc, OSError):
        return host_os_error(exc)
    where = f"the traceback is in {log_file}" if log_file else "the traceback is in the daemon log"
    return InternalError(
        f"internal error: {type(exc).__name__}: {exc}",
        hint=f"this is a bug in banger; {where} (search it for the op id)",
    )


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Entry:
    op: Operation
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class OperationContext:
    """What a running operation uses to report its stages."""

    def __init__(self, registry: OperationRegistry, entry: _Entry) -> None:
        self._registry = registry
        self._entry = entry

    @property
    def id(self) -> str:
        return self._entry.op.id

    @contextlib.contextmanager
    def stage(self, name: str, detail: str | None = None) -> Iterator[None]:
        """Mark ``name`` running for the duration of the block; failed if it raises."""
        stage = Stage(name=name, state=StageState.RUNNING, detail=detail, started_at=_now())
        self._entry.op.stages.append(stage)
        self._registry.touch(self._entry)
        try:
            yield
        except BaseException:
            stage.state = StageState.FAILED
            stage.finished_at = _now()
            self._registry.touch(self._entry)
            raise
        stage.state = StageState.DONE
        stage.finished_at = _now()
        self._registry.touch(self._entry)

    def detail(self, text: str) -> None:
        """Update the detail line of the current stage (progress of a download, say)."""
        if self._entry.op.stages:
            self._entry.op.stages[-1].detail = text
            self._registry.touch(self._entry)

    def progress_from_thread(self) -> Callable[[str], None]:
        """A ``progress`` callback for blocking work run in a worker thread."""
        loop = asyncio.get_running_loop()

        def report(text: str) -> None:
            loop.call_soon_threadsafe(self.detail, text)

        return report

    async def in_thread(self, stage: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``func`` in a worker thread as stage ``stage``, with progress.

        On cancel the thread's token fires and this waits for the thread to
        end (its own cleanup runs first) before the cancel goes on. Work that
        got past its last checkpoint has committed: its result stands.
        """
        token = CancelToken()
        report = self.progress_from_thread()

        def call() -> T:
            with cancel_scope(token):
                return func(*args, progress=report, **kwargs)

        with self.stage(stage):
            thread = _own_thread(call, f"op-{self.id}-{stage}")
            try:
                return await asyncio.shield(thread)
            except asyncio.CancelledError:
                token.cancel()
                try:
                    result = await join_thread(thread)
                except Cancelled:
                    raise asyncio.CancelledError() from None
                _uncancel()
                return result


def _own_thread(call: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run ``call`` in a thread of its own (with the caller's context variables).

    Operations can block for minutes (a build, a lock held by another pull);
    on the shared default executor a few of them would starve the short
    ``asyncio.to_thread`` calls that requests make (a delete, a prune).
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        future = asyncio.get_running_loop().run_in_executor(
            executor, contextvars.copy_context().run, call
        )
    finally:
        executor.shutdown(wait=False)  # the thread ends when ``call`` returns
    return future


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        while task.cancelling():
            task.uncancel()


class OperationRegistry:
    def __init__(
        self,
        *,
        ttl_seconds: float,
        persist: Persist | None = None,
        recall: Recall | None = None,
        log_file: Path | None = None,
    ) -> None:
        """``persist`` records operations, ``recall`` finds those of an earlier daemon."""
        self._entries: dict[str, _Entry] = {}
        self._ttl = timedelta(seconds=ttl_seconds)
        self._persist = persist
        self._recall = recall
        self._log_file = log_file

    def begin(
        self, kind: str, work: Work, *, target: str | None = None, op_id: str | None = None
    ) -> Operation:
        now = _now()
        op = Operation(
            id=op_id or new_op_id(),
            kind=kind,
            target=target,
            state=OperationState.RUNNING,
            created_at=now,
            updated_at=now,
        )
        entry = _Entry(op)
        self._entries[op.id] = entry
        self.touch(entry)
        self._save(op)
        entry.task = asyncio.get_running_loop().create_task(self._run(entry, work))
        log.info("operation started", operation=op.id, kind=kind, target=target)
        return op.model_copy(deep=True)

    async def _run(self, entry: _Entry, work: Work) -> None:
        """Run the work; whatever it raises (even BaseException) finishes the operation."""
        op = entry.op
        try:
            op.result = await work(OperationContext(self, entry))
            op.state = OperationState.SUCCEEDED
        except asyncio.CancelledError:
            self._fail(op, OperationState.CANCELLED, Cancelled("operation cancelled"))
        except BaseException as exc:
            if not isinstance(exc, BangerError | OSError):
                log.exception("operation crashed", operation=op.id)
            self._fail(op, OperationState.FAILED, unexpected_error(exc, self._log_file))
            if not isinstance(exc, Exception):
                raise  # SystemExit, KeyboardInterrupt: recorded, and still stop the daemon
        finally:
            op.finished_at = _now()
            self.touch(entry)
            self._save(op)
            log.info("operation finished", operation=op.id, state=str(op.state))

    @staticmethod
    def _fail(op: Operation, state: OperationState, error: BangerError) -> None:
        op.state = state
        op.error = error_body(error, op.id)

    def touch(self, entry: _Entry) -> None:
        entry.op.revision += 1
        entry.op.updated_at = _now()
        entry.changed.set()
        entry.changed = asyncio.Event()

    def _save(self, op: Operation) -> None:
        """Record the operation when it begins and when it ends (not on every stage)."""
        if self._persist is None:
            return
        try:
            self._persist(op)
        except Exception as exc:  # history is best effort; the operation itself goes on
            log.warning("could not record operation", operation=op.id, error=repr(exc))

    def _entry(self, op_id: str) -> _Entry:
        """The live operation; one of an earlier daemon (finished) comes from history."""
        entry = self._entries.get(op_id)
        if entry is not None:
            return entry
        past = self._recall(op_id) if self._recall is not None else None
        if past is None:
            raise NotFound(
                f"operation {op_id!r} not found",
                hint="finished operations are kept for operation_ttl_seconds, then pruned",
            )
        return _Entry(past)

    def get(self, op_id: str) -> Operation:
        return self._entry(op_id).op.model_copy(deep=True)

    def list(self) -> list[Operation]:
        return [e.op.model_copy(deep=True) for e in self._entries.values()]

    async def wait(self, op_id: str, *, after_revision: int, timeout: float) -> Operation:
        """Return once the operation's revision exceeds ``after_revision`` or ``timeout`` ends."""
        entry = self._entry(op_id)
        if entry.op.revision <= after_revision and not entry.op.state.finished:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.changed.wait(), timeout)
        return self.get(op_id)

    def cancel(self, op_id: str) -> Operation:
        entry = self._entry(op_id)
        if entry.task is not None and not entry.op.state.finished:
            entry.task.cancel()
        return self.get(op_id)

    async def join(self, op_id: str) -> Operation:
        """Wait for the operation to finish (tests and internal callers)."""
        entry = self._entry(op_id)
        if entry.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(entry.task)
        return self.get(op_id)

    def prune(self, now: datetime | None = None) -> int:
        """Forget finished operations older than the TTL; return how many went."""
        cutoff = (now or _now()) - self._ttl
        stale = [
            op_id
            for op_id, e in self._entries.items()
            if e.op.finished_at is not None and e.op.finished_at < cutoff
        ]
        for op_id in stale:
            del self._entries[op_id]
        return len(stale)

    async def cancel_all(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task and not e.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
