"""Operation history in the store: written when an operation begins and when it ends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from banger.api.models import ErrorBody, Operation, OperationResult, Stage
from banger.store.db import Store
from banger.store.records import OperationRecord


def operation_recorder(store: Store) -> Callable[[Operation], None]:
    """A persist hook for the registry that inserts or updates the operation's row."""

    def persist(op: Operation) -> None:
        stages = [s.model_dump(mode="json") for s in op.stages]
        error = op.error.model_dump() if op.error else None
        result = op.result.model_dump(mode="json") if op.result is not None else None
        if store.operations.find(op.id) is None:
            store.operations.add(
                OperationRecord(
                    id=op.id, kind=op.kind, target=op.target, state=op.state, stages=stages,
                    result=result, error=error, created_at=op.created_at,
                    finished_at=op.finished_at,
                )
            )
        else:
            store.operations.update(
                op.id, state=op.state, stages=stages, result=result, error=error,
                finished_at=op.finished_at,
            )

    return persist


def operation_recaller(store: Store) -> Callable[[str], Operation | None]:
    """A recall hook for the registry: an operation of an earlier daemon, from its row."""

    def recall(op_id: str) -> Operation | None:
        record = store.operations.find(op_id)
        if record is None or record.created_at is None or record.updated_at is None:
            return None
        error = ErrorBody.model_validate({"op_id": op_id, **record.error}) if record.error else None
        return Operation(
            id=record.id, kind=record.kind, target=record.target, state=record.state,
            stages=[Stage.model_validate(s) for s in record.stages],
            result=_recalled_result(record.result), error=error,
            created_at=record.created_at, updated_at=record.updated_at,
            finished_at=record.finished_at,
        )

    return recall


_RESULT: TypeAdapter[OperationResult] = TypeAdapter(OperationResult)


def _recalled_result(data: Any) -> OperationResult | None:
    """The stored result as its model; None for one that fits no model (an older daemon's)."""
    if not isinstance(data, dict):
        return None
    try:
        return _RESULT.validate_python(data)
    except ValidationError:
        return None
