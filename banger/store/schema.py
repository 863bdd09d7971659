"""Numbered migrations (``migrations/NNNN_name.sql``) and the version bookkeeping."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

from banger.store.codec import time_to_text, utcnow

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY NOT NULL,
    applied_at TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """Every shipped migration in order; numbering must run 1, 2, 3... without gaps."""
    folder = resources.files("banger.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..N without gaps: {versions}")
    return tuple(found)


def latest_version() -> int:
    return len(migrations())


def split_statements(sql: str) -> Iterator[str]:
    """Cut a script into statements; sqlite3.complete_statement knows about triggers."""
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statement = pending.strip()
            pending = ""
            if statement.strip(";").strip():
                yield statement
    if pending.strip() and _strip_comments(pending).strip():
        raise ValueError(f"incomplete SQL statement at the end of a migration: {pending!r}")


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def user_tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return {r[0] for r in rows}


def current_version(conn: sqlite3.Connection) -> int:
    """The highest applied migration, 0 for an empty database."""
    if "schema_migrations" not in user_tables(conn):
        return 0
    row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def apply_pending(conn: sqlite3.Connection, upto: int | None = None) -> list[int]:
    """Apply each missing migration (up to ``upto``) in its own IMMEDIATE transaction.

    Returns the versions applied.
    The version is re-read after taking the write lock, so two processes opening
    a fresh database at once apply each migration exactly once.
    """
    applied = []
    for migration in migrations():
        if upto is not None and migration.version > upto:
            break
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(BOOKKEEPING)
            if current_version(conn) >= migration.version:
                conn.execute("ROLLBACK")
                continue
            # Statement by statement: executescript() would COMMIT our transaction first.
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (migration.version, time_to_text(utcnow())),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
