"""Operation history in the store: written when an operation begins and when it ends."""

from __future__ import annotations

from collections.abc import Callable

from banger.api.models import Operation
from banger.store.db import Store
from banger.store.records import OperationRecord


def operation_recorder(store: Store) -> Callable[[Operation], None]:
    """A persist hook for the registry that inserts or updates the operation's row."""

    def persist(op: Operation) -> None:
        stages = [s.model_dump(mode="json") for s in op.stages]
        error = op.error.model_dump() if op.error else None
        if store.operations.find(op.id) is None:
            store.operations.add(
                OperationRecord(
                    id=op.id, kind=op.kind, target=op.target, state=op.state, stages=stages,
                    result=op.result, error=error, created_at=op.created_at,
                    finished_at=op.finished_at,
                )
            )
        else:
            store.operations.update(
                op.id, state=op.state, stages=stages, result=op.result, error=error,
                finished_at=op.finished_at,
            )

    return persist
