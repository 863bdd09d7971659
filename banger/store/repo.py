"""What every repository shares: insert, update, select, and constraint-error mapping."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from banger.core.errors import BangerError, Conflict, InvalidInput, NotFound
from banger.store.codec import Table, Violation, parse_violation

if TYPE_CHECKING:
    from banger.store.db import Store

R = TypeVar("R")


class _Named(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...


class Repository(Generic[R]):
    """Typed access to one table; subclasses add the domain rules."""

    table: Table[R]
    key: str = "id"
    immutable: frozenset[str] = frozenset({"id", "created_at"})
    not_found: Callable[[str], NotFound]

    def __init__(self, store: Store) -> None:
        self._store = store

    def find_key(self, key: str) -> R | None:
        """Exactly the row with this key (internal callers, which hold ids, not user refs)."""
        return self._select_one(f"{self.key} = ?", (key,))

    def get_key(self, key: str) -> R:
        found = self.find_key(key)
        if found is None:
            raise self.not_found(key)
        return found

    def _insert(self, record: R, explain: Callable[[Violation], BangerError]) -> None:
        try:
            with self._store.transaction() as conn:
                conn.execute(self.table.insert_sql(), self.table.to_row(record))
        except sqlite3.IntegrityError as exc:
            raise explain(parse_violation(exc)) from exc

    def _update(
        self,
        conn: sqlite3.Connection,
        key: str,
        fields: Mapping[str, Any],
        explain: Callable[[Violation], BangerError],
    ) -> bool:
        """UPDATE one row inside the caller's transaction; False when no such row."""
        if not fields:
            return self._select_one(f"{self.key} = ?", (key,), conn) is not None
        params = self.table.encode_fields(fields)
        params["__key"] = key
        try:
            cursor = conn.execute(self.table.update_sql(fields.keys(), self.key), params)
        except sqlite3.IntegrityError as exc:
            raise explain(parse_violation(exc)) from exc
        return cursor.rowcount == 1

    def _check_mutable(self, fields: Mapping[str, Any]) -> None:
        frozen = self.immutable & fields.keys()
        if frozen:
            raise TypeError(f"{self.table.name}: cannot update {sorted(frozen)}")

    def _select_one(
        self, where: str, params: Any = (), conn: sqlite3.Connection | None = None
    ) -> R | None:
        conn = conn or self._store.connection()
        row = conn.execute(f"SELECT * FROM {self.table.name} WHERE {where}", params).fetchone()
        return self.table.from_row(row) if row is not None else None

    def _select(self, where: str = "1", params: Any = (), order: str = "") -> list[R]:
        order = order or self.key
        rows = self._store.read(
            f"SELECT * FROM {self.table.name} WHERE {where} ORDER BY {order}", params
        )
        return [self.table.from_row(r) for r in rows]


def invalid(violation: Violation, what: str) -> BangerError:
    """CHECK / NOT NULL failures: the caller passed a value the schema forbids."""
    return InvalidInput(
        f"invalid {what}: {violation.kind.replace('_', ' ')} rule failed on {violation.column}",
        hint="this is a bug in the caller; the value should have been validated earlier",
    )


def one_by_ref(rows: Sequence[R], ref: str, what: str) -> R | None:
    """The row a user's ref names, from the rows whose id or name equals it.

    New names cannot look like ids (``validate_new_name``), so two rows can only
    be rows written before that rule: refused as ambiguous, never a guess.
    """
    if len(rows) < 2:
        return rows[0] if rows else None
    named: Sequence[_Named] = rows  # type: ignore[assignment]
    by_id = next(r for r in named if r.id == ref)
    by_name = next(r for r in named if r.name == ref)
    raise Conflict(
        f"{what} ref '{ref}' is ambiguous: it is the id of {what} '{by_id.name}' "
        f"and the name of {what} {by_name.id}",
        hint=f"say which: '{by_id.name}' (by name) or '{by_name.id}' (by id)",
    )
