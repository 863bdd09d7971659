"""The operations table: long-running daemon work, its stages and outcome."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from banger.core.errors import BangerError, Conflict, NotFound
from banger.store.codec import Table, Violation, time_to_text, utcnow
from banger.store.records import OperationRecord, OperationState
from banger.store.repo import Repository, invalid

OPERATIONS: Table[OperationRecord] = Table(
    "operations",
    OperationRecord,
    {
        "state": OperationState,
        "stages": "json",
        "result": "json",
        "error": "json",
        "created_at": "time",
        "updated_at": "time",
        "finished_at": "time",
    },
)

INTERRUPTED_ERROR = {
    "code": "error",
    "message": "interrupted by a daemon restart",
    "hint": "run the command again",
}

_UNFINISHED = ("pending", "running")


def operation_not_found(op_id: str) -> NotFound:
    return NotFound(
        f"operation '{op_id}' not found",
        hint="finished operations are kept for operation_ttl_seconds, then pruned",
    )


class OperationRepository(Repository[OperationRecord]):
    table = OPERATIONS
    immutable = frozenset({"id", "kind", "created_at", "updated_at"})

    def add(self, record: OperationRecord) -> OperationRecord:
        now = utcnow()
        record = dataclasses.replace(
            record, created_at=record.created_at or now, updated_at=record.updated_at or now
        )
        self._insert(record, lambda v: self._explain(v, record))
        return self.get(record.id)

    def find(self, op_id: str) -> OperationRecord | None:
        return self._select_one("id = ?", (op_id,))

    def get(self, op_id: str) -> OperationRecord:
        found = self.find(op_id)
        if found is None:
            raise operation_not_found(op_id)
        return found

    def list(
        self, state: OperationState | str | None = None, kind: str | None = None
    ) -> list[OperationRecord]:
        where, params = ["1"], []
        if state is not None:
            where.append("state = ?")
            params.append(OperationState(state).value)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        return self._select(" AND ".join(where), params, order="created_at, id")

    def update(self, op_id: str, **fields: Any) -> OperationRecord:
        """Set fields (``updated_at`` too); a finishing state stamps ``finished_at``."""
        self._check_mutable(fields)
        now = utcnow()
        changes = {**fields, "updated_at": now}
        state = fields.get("state")
        if state is not None and OperationState(state).finished:
            changes.setdefault("finished_at", now)
        with self._store.transaction() as conn:
            if not self._update(conn, op_id, changes, lambda v: invalid(v, "operation")):
                raise operation_not_found(op_id)
        return self.get(op_id)

    def delete_finished_before(self, cutoff: datetime) -> int:
        """Prune finished operations older than ``cutoff``; returns how many went."""
        with self._store.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM operations WHERE finished_at IS NOT NULL AND finished_at < ?"
                " AND state NOT IN (?, ?)",
                (time_to_text(cutoff), *_UNFINISHED),
            )
        return cursor.rowcount

    def mark_interrupted(self) -> int:
        """At daemon start: every pending/running operation died with the old daemon."""
        now = self.table.encode("updated_at", utcnow())
        with self._store.transaction() as conn:
            cursor = conn.execute(
                "UPDATE operations SET state = 'failed', error = ?, updated_at = ?,"
                " finished_at = ? WHERE state IN (?, ?)",
                (self.table.encode("error", INTERRUPTED_ERROR), now, now, *_UNFINISHED),
            )
        return cursor.rowcount

    def _explain(self, violation: Violation, record: OperationRecord) -> BangerError:
        if violation.column == "operations.id":
            return Conflict(f"operation '{record.id}' already exists", hint="this is a bug")
        return invalid(violation, "operation")
