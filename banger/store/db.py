"""The SQLite state database: opening, checking, migrating, connections and transactions.

Concurrency model: one sqlite3 connection per thread (the event loop thread and
each ``asyncio.to_thread`` worker get their own), all in WAL mode, so readers
never wait for writers. Writes go through ``Store.transaction()``, which takes
the write lock up front (``BEGIN IMMEDIATE``): two writers queue on
``busy_timeout`` instead of failing with "database is locked" when a read
transaction tries to upgrade. Another process (or another ``Store`` on the same
file) is handled by the same file locks.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from banger.core.errors import StoreError
from banger.store import schema
from banger.store.images import ImageRepository
from banger.store.kernels import KernelRepository
from banger.store.operations import OperationRepository
from banger.store.vms import VMRepository

BUSY_TIMEOUT_MS = 15_000


class _ThreadConnection:
    """One thread's connection; closed when its thread ends or the store closes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.depth = 0  # nesting level of Store.transaction() on this thread
        self._finalizer = weakref.finalize(self, conn.close)

    def close(self) -> None:
        self._finalizer()


class Store:
    """The state database. Create with ``Store.open(path)``; share one per process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._open: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        self.kernels = KernelRepository(self)
        self.images = ImageRepository(self)
        self.vms = VMRepository(self)
        self.operations = OperationRepository(self)

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating when absent) and migrate the database at ``path``.

        Refuses, without writing to it, a file that is not a healthy SQLite
        database, one we cannot read or write, and one from a newer banger.
        """
        path = Path(path)
        _make_private_dirs(path.parent)
        if path.is_dir():
            raise _unusable(path, "it is a directory")
        if not path.exists():
            _create_private_file(path)
        sidecars = _absent_sidecars(path)
        store = cls(path)
        try:
            conn = store.connection()
            check_readable(conn, path)
            conn.execute("PRAGMA journal_mode = WAL")
            _migrate(conn, path)
        except BaseException as exc:
            store.close()
            _remove_empty_sidecars(sidecars)
            if isinstance(exc, sqlite3.Error):
                raise _unusable(path, str(exc)) from exc
            raise
        return store

    @property
    def schema_version(self) -> int:
        return schema.current_version(self.connection())

    # -- connections -----------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use ``transaction()`` to write)."""
        held: _ThreadConnection | None = getattr(self._local, "held", None)
        if held is None:
            held = self._connect()
            self._local.held = held
        return held.conn

    def _connect(self) -> _ThreadConnection:
        with self._lock:
            if self._closed:
                raise StoreError("the state database is closed", hint="this is a bug in banger")
            # check_same_thread=False only so that close() may close it from another thread.
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
            held = _ThreadConnection(conn)
            self._open.add(held)
            return held

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception.

        Nested use on the same thread becomes a SAVEPOINT, so a repository
        method called inside a caller's transaction joins it atomically. Never
        ``await`` inside one: coroutines of the event loop share its thread's
        connection, so they would write into each other's transaction.
        """
        conn = self.connection()
        held: _ThreadConnection = self._local.held
        if held.depth:
            name = f"sp{held.depth}"
            conn.execute(f"SAVEPOINT {name}")
            held.depth += 1
            try:
                yield conn
            except BaseException:
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
                raise
            else:
                conn.execute(f"RELEASE {name}")
            finally:
                held.depth -= 1
            return
        _execute_busy(conn, "BEGIN IMMEDIATE", self.path)
        held.depth = 1
        try:
            yield conn
            _execute_busy(conn, "COMMIT", self.path)
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                raise write_failed(self.path, exc) from exc
            raise
        finally:
            held.depth = 0

    def read(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """Run one query on this thread's connection and fetch every row."""
        return self.connection().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close every thread's connection; the last close checkpoints the WAL."""
        with self._lock:
            self._closed = True
            held = list(self._open)
            self._open.clear()
        for item in held:
            item.close()
        self._local = threading.local()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_readable(conn: sqlite3.Connection, path: Path) -> int:
    """Read-only health check: sqlite's quick_check, banger's tables, a known schema version."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise _unusable(path, "it is corrupt: " + "; ".join(problems[:3]))
    # SQLite writes whole pages; quick_check misses a cut into a page nothing reads.
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    size = path.stat().st_size
    if size % page_size:
        raise _unusable(path, f"it is truncated: {size} bytes is not a whole number of pages")
    tables = schema.user_tables(conn)
    if tables and "schema_migrations" not in tables:
        raise _unusable(path, "it is an SQLite database but not banger's (no schema_migrations)")
    version = schema.current_version(conn)
    known = schema.latest_version()
    if version > known:
        raise StoreError(
            f"the state database {path} has schema version {version}, "
            f"but this banger only knows up to {known}",
            hint="it was written by a newer banger: upgrade banger (and restart the daemon)",
        )
    return version


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    done = schema.current_version(conn)
    for migration in schema.migrations()[done:]:
        try:
            schema.apply_pending(conn, upto=migration.version)
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise StoreError(
                f"migration {migration.name} of the state database {path} failed: {exc}",
                hint="this is a bug in banger; the database was left unchanged at version "
                f"{schema.current_version(conn)}, so an older banger can still use it",
            ) from exc


def probe(path: Path) -> int:
    """Check an existing database without creating, migrating or writing it (for doctor).

    Returns its schema version; raises StoreError when it is unusable.
    """
    path = Path(path)
    if path.is_dir():
        raise _unusable(path, "it is a directory")
    if not os.access(path, os.R_OK):
        raise _unusable(path, "permission denied")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise _unusable(path, str(exc)) from exc
    try:
        return check_readable(conn, path)
    except sqlite3.Error as exc:
        raise _unusable(path, str(exc)) from exc
    finally:
        conn.close()


def _execute_busy(conn: sqlite3.Connection, sql: str, path: Path) -> None:
    try:
        conn.execute(sql)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreError(
                f"the state database {path} stayed locked for {BUSY_TIMEOUT_MS // 1000}s",
                hint="another process holds a long write lock on it; is a stuck bangerd running?",
            ) from exc
        raise write_failed(path, exc) from exc


def write_failed(path: Path, exc: sqlite3.Error) -> StoreError:
    """A write the database refused for a reason of the host: read-only, full, I/O error."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith("SQLITE_READONLY"):
        hint = (f"the file or its filesystem turned read-only: check `ls -l {path}` and "
                "`findmnt -T` on it, then restart the daemon (banger daemon stop)")
    elif name == "SQLITE_FULL":
        hint = f"the disk holding {path.parent} is full: free some space and try again"
    else:
        hint = "check the disk (dmesg) and the daemon log"
    return StoreError(f"cannot write the state database {path}: {exc}", hint=hint)


def _unusable(path: Path, why: str) -> StoreError:
    if "permission" in why or "readonly" in why or "unable to open" in why:
        fix = f"check its owner and mode (ls -l {path}), or move it aside to start fresh"
    else:
        fix = "move it aside to start fresh"
    return StoreError(
        f"cannot use the state database {path}: {why}",
        hint=f"{fix}: mv {path} {path}.bak",
    )


def _absent_sidecars(path: Path) -> list[Path]:
    """The -wal/-shm files not there yet: sqlite creates them even for a db it then rejects."""
    return [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if not p.exists()]


def _remove_empty_sidecars(created: list[Path]) -> None:
    """Leave a refused database as we found it; a non-empty WAL is never ours to drop."""
    wal = next((p for p in created if p.name.endswith("-wal")), None)
    if wal is not None and wal.exists() and wal.stat().st_size > 0:
        return
    for item in created:
        item.unlink(missing_ok=True)


def _make_private_dirs(directory: Path) -> None:
    """mkdir -p where every directory we create is 0700 (Path.mkdir ignores mode for parents)."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for item in reversed(missing):
        try:
            item.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(
                f"cannot create the state directory {item}: {exc.strerror}",
                hint="check the permissions of its parent, or set BANGER_STATE_DIR",
            ) from exc


def _create_private_file(path: Path) -> None:
    """Create the empty database file 0600 first: sqlite would create it 0644 (umask)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise StoreError(
            f"cannot create the state database {path}: {exc.strerror}",
            hint=f"check the owner and mode of {path.parent}",
        ) from exc
