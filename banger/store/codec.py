"""Conversions at the repository boundary: records <-> rows, JSON, timestamps, constraints."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from banger.core.errors import StoreError
from banger.core.validate import first_validation_error

R = TypeVar("R")

# A model kind stores the model as JSON and parses it back on read (a damaged row is
# a StoreError naming the table and column, not a dict that fails later); no model
# is the column's default, an empty object.
NO_MODEL = "{}"
Kind = Literal["json", "bool", "path", "time"] | type[StrEnum] | type[BaseModel]


def utcnow() -> datetime:
    return datetime.now(UTC)


def time_to_text(value: datetime) -> str:
    """ISO-8601 in UTC with microseconds, so text order is time order."""
    if value.tzinfo is None:
        raise TypeError("naive datetime given to the store; use datetime.now(UTC)")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def text_to_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


@dataclass(frozen=True)
class Table(Generic[R]):
    """How one table's columns map onto one record class."""

    name: str
    record: type[R]
    kinds: Mapping[str, Kind]

    @property
    def columns(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.record)]  # type: ignore[arg-type]

    def encode(self, column: str, value: Any) -> Any:
        """One Python value -> what sqlite stores for ``column``."""
        if column not in self.columns:
            raise TypeError(f"{self.name} has no column {column!r}")
        kind = self.kinds.get(column)
        if kind == "json":
            return json.dumps(value, sort_keys=True, separators=(",", ":"))
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind.model_validate(value).model_dump_json() if value is not None else NO_MODEL
        if value is None:
            return None
        if kind == "bool":
            return int(bool(value))
        if kind == "path":
            return str(value)
        if kind == "time":
            return time_to_text(value)
        if isinstance(kind, type):
            return kind(value).value  # rejects unknown enum values before sqlite does
        return value

    def decode(self, column: str, value: Any) -> Any:
        kind = self.kinds.get(column)
        if kind == "json":
            return json.loads(value) if value is not None else None
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return self._decode_model(kind, column, value)
        if value is None:
            return None
        if kind == "bool":
            return bool(value)
        if kind == "path":
            return Path(value)
        if kind == "time":
            return text_to_time(value)
        if isinstance(kind, type):
            return kind(value)
        return value

    def _decode_model(self, kind: type[BaseModel], column: str, value: str | None) -> Any:
        if value is None or value == NO_MODEL:
            return None
        try:
            return kind.model_validate_json(value)
        except ValidationError as exc:
            raise StoreError(
                f"the state database holds a damaged {self.name}.{column}: "
                f"{first_validation_error(exc)}",
                hint="restore state.db from a backup, or delete the damaged entry",
            ) from None

    def to_row(self, record: R) -> dict[str, Any]:
        return {c: self.encode(c, getattr(record, c)) for c in self.columns}

    def from_row(self, row: sqlite3.Row) -> R:
        return self.record(**{c: self.decode(c, row[c]) for c in self.columns})

    def encode_fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {c: self.encode(c, v) for c, v in fields.items()}

    def insert_sql(self) -> str:
        cols = self.columns
        return (
            f"INSERT INTO {self.name} ({', '.join(cols)}) "
            f"VALUES ({', '.join(':' + c for c in cols)})"
        )

    def update_sql(self, columns: Iterable[str], key: str) -> str:
        sets = ", ".join(f"{c} = :{c}" for c in columns)
        return f"UPDATE {self.name} SET {sets} WHERE {key} = :__key"


@dataclass(frozen=True)
class Violation:
    """A parsed sqlite constraint failure: which rule, and on which table.column."""

    kind: Literal["unique", "foreign_key", "check", "not_null", "other"]
    column: str | None


def parse_violation(exc: sqlite3.IntegrityError) -> Violation:
    message = str(exc)
    head, _, tail = message.partition(" constraint failed")
    column = tail.removeprefix(":").strip() or None
    kinds: dict[str, Literal["unique", "foreign_key", "check", "not_null"]] = {
        "UNIQUE": "unique",
        "PRIMARY KEY": "unique",
        "FOREIGN KEY": "foreign_key",
        "CHECK": "check",
        "NOT NULL": "not_null",
    }
    return Violation(kinds.get(head.strip(), "other"), column)
