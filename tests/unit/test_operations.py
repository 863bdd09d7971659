"""The async-operation registry: stages, outcomes, cancel, long-poll, TTL pruning."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from banger.api.models import KernelInfo, Operation, OperationState, StageState
from banger.core.errors import InvalidInput, NotFound
from banger.daemon.history import operation_recaller, operation_recorder
from banger.daemon.operations import OperationContext, OperationRegistry
from banger.store.db import Store

BOX = KernelInfo(name="box", version="6.1", source="test", path="/k/box", is_default=False)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_successful_operation_records_stages_in_order_and_its_result() -> None:
    async def work(ctx: OperationContext) -> KernelInfo:
        with ctx.stage("reserve"):
            pass
        with ctx.stage("disks"):
            ctx.detail("50%")
        return BOX

    async def scenario() -> Operation:
        reg = OperationRegistry(ttl_seconds=60)
        op = reg.begin("vm.create", work, target="box")
        return await reg.join(op.id)

    op = run(scenario())
    assert op.state is OperationState.SUCCEEDED
    assert [s.name for s in op.stages] == ["reserve", "disks"]
    assert all(s.state is StageState.DONE and s.finished_at for s in op.stages)
    assert op.stages[1].detail == "50%"
    assert op.result == BOX
    assert op.finished_at is not None


def test_failing_stage_marks_the_stage_and_carries_the_typed_error() -> None:
    async def work(ctx: OperationContext) -> None:
        with ctx.stage("disks"):
            raise InvalidInput("disk too small", hint="use --disk 1G or more")

    async def scenario() -> Operation:
        reg = OperationRegistry(ttl_seconds=60)
        return await reg.join(reg.begin("vm.create", work).id)

    op = run(scenario())
    assert op.state is OperationState.FAILED
    assert op.stages[0].state is StageState.FAILED
    assert op.error is not None
    assert (op.error.code, op.error.hint, op.error.op_id) == (
        "invalid_input", "use --disk 1G or more", op.id,
    )


def test_unexpected_exception_fails_the_operation_instead_of_hanging_it() -> None:
    async def work(ctx: OperationContext) -> None:
        raise RuntimeError("boom")

    async def scenario() -> Operation:
        reg = OperationRegistry(ttl_seconds=60)
        return await reg.join(reg.begin("x", work).id)

    op = run(scenario())
    assert op.state is OperationState.FAILED
    assert op.error and "boom" in op.error.message


def test_cancel_stops_the_work_and_reports_cancelled() -> None:
    async def work(ctx: OperationContext) -> None:
        with ctx.stage("boot"):
            await asyncio.sleep(30)

    async def scenario() -> Operation:
        reg = OperationRegistry(ttl_seconds=60)
        op = reg.begin("x", work)
        await asyncio.sleep(0.01)
        reg.cancel(op.id)
        return await reg.join(op.id)

    op = run(scenario())
    assert op.state is OperationState.CANCELLED
    assert op.stages[0].state is StageState.FAILED


def test_wait_answers_as_soon_as_the_revision_moves() -> None:
    gate = asyncio.Event

    async def scenario() -> tuple[Operation, float]:
        release = gate()

        async def work(ctx: OperationContext) -> None:
            await release.wait()
            with ctx.stage("ssh"):
                pass

        reg = OperationRegistry(ttl_seconds=60)
        op = reg.begin("x", work)
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter = asyncio.create_task(reg.wait(op.id, after_revision=op.revision, timeout=10))
        await asyncio.sleep(0.05)
        release.set()
        changed = await waiter
        return changed, loop.time() - started

    changed, elapsed = run(scenario())
    assert changed.stages and changed.stages[0].name == "ssh"
    assert elapsed < 5


def test_prune_forgets_only_finished_operations_older_than_the_ttl() -> None:
    async def scenario() -> tuple[int, list[str]]:
        reg = OperationRegistry(ttl_seconds=60)

        async def quick(ctx: OperationContext) -> None:
            return None

        async def slow(ctx: OperationContext) -> None:
            await asyncio.sleep(30)

        done = reg.begin("quick", quick)
        running = reg.begin("slow", slow)
        await reg.join(done.id)
        later = datetime.now(UTC) + timedelta(seconds=120)
        pruned = reg.prune(later)
        remaining = [op.id for op in reg.list()]
        await reg.cancel_all()
        assert running.id in remaining
        return pruned, remaining

    pruned, remaining = run(scenario())
    assert pruned == 1 and len(remaining) == 1


def test_unknown_operation_is_not_found() -> None:
    reg = OperationRegistry(ttl_seconds=60)
    with pytest.raises(NotFound):
        reg.get("missing")


def test_persist_hook_records_the_beginning_and_the_end() -> None:
    seen: list[tuple[str, int]] = []

    async def work(ctx: OperationContext) -> None:
        with ctx.stage("one"):
            pass

    async def scenario() -> None:
        reg = OperationRegistry(
            ttl_seconds=60, persist=lambda op: seen.append((op.state, op.revision))
        )
        await reg.join(reg.begin("x", work).id)

    run(scenario())
    assert [state for state, _ in seen] == [OperationState.RUNNING, OperationState.SUCCEEDED]


class Abort(BaseException):
    """Like GeneratorExit or a library's own BaseException: not an Exception."""


def test_a_base_exception_in_the_worker_still_finishes_the_operation_and_propagates() -> None:
    async def work(ctx: OperationContext) -> None:
        with ctx.stage("boot"):
            raise Abort("stop")

    seen: list[Operation] = []

    async def scenario() -> Operation:
        reg = OperationRegistry(ttl_seconds=60, persist=lambda op: seen.append(op.model_copy()))
        op = reg.begin("x", work)
        entry_task = reg._entries[op.id].task
        assert entry_task is not None
        with pytest.raises(Abort):
            await entry_task
        return reg.get(op.id)

    op = run(scenario())
    assert op.state is OperationState.FAILED and op.finished_at is not None
    assert op.error is not None and op.error.code == "internal"
    assert op.error.message == "internal error: Abort: stop"
    assert seen[-1].state is OperationState.FAILED  # the history row is finished too


def test_a_failing_history_write_never_leaves_the_operation_running() -> None:
    def persist(op: Operation) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    async def work(ctx: OperationContext) -> KernelInfo:
        return BOX

    async def scenario() -> Operation:
        reg = OperationRegistry(ttl_seconds=60, persist=persist)
        return await reg.join(reg.begin("x", work).id)

    assert run(scenario()).state is OperationState.SUCCEEDED


def test_an_unexpected_error_names_its_type_and_the_log_file(tmp_path: Path) -> None:
    log_file = tmp_path / "bangerd.log"

    async def work(ctx: OperationContext) -> None:
        {}["missing"]

    async def scenario() -> Operation:
        reg = OperationRegistry(ttl_seconds=60, log_file=log_file)
        return await reg.join(reg.begin("x", work).id)

    op = run(scenario())
    assert op.error is not None
    assert (op.error.code, op.error.message) == ("internal", "internal error: KeyError: 'missing'")
    assert str(log_file) in (op.error.hint or "")


def test_an_operation_of_an_earlier_daemon_is_recalled_from_history() -> None:
    now = datetime.now(UTC)
    past = Operation(id="old", kind="vm.create", state=OperationState.FAILED, created_at=now,
                     updated_at=now, finished_at=now)

    async def scenario() -> tuple[Operation, Operation]:
        reg = OperationRegistry(ttl_seconds=60, recall=lambda i: past if i == "old" else None)
        with pytest.raises(NotFound):
            reg.get("never")
        return reg.get("old"), await reg.wait("old", after_revision=5, timeout=30)

    got, waited = run(scenario())
    assert got == past and waited == past


def test_a_typed_result_survives_the_history_and_a_shapeless_one_is_dropped(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "state.db")

    async def work(ctx: OperationContext) -> KernelInfo:
        return BOX

    async def scenario() -> str:
        reg = OperationRegistry(ttl_seconds=60, persist=operation_recorder(store))
        return (await reg.join(reg.begin("kernel.pull", work).id)).id

    try:
        op_id = run(scenario())
        recalled = operation_recaller(store)(op_id)
        assert recalled is not None and recalled.result == BOX
        store.operations.update(op_id, result={"name": "box", "made_up": 1})
        recalled = operation_recaller(store)(op_id)
        assert recalled is not None and recalled.result is None
    finally:
        store.close()
