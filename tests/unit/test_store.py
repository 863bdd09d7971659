"""The state database: opening, migrations, refusal of unusable files, concurrency."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from banger.core.errors import StoreError
from banger.store import OperationRecord, Store, probe, schema


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(db_path: Path):
    opened = Store.open(db_path)
    yield opened
    opened.close()


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _files_next_to(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


# -- opening and migrations -----------------------------------------------------


def test_open_creates_private_dirs_and_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    Store.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_every_migration_is_applied_and_recorded(store: Store, db_path: Path) -> None:
    rows = store.read("SELECT version, applied_at FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, schema.latest_version() + 1))
    assert all(r["applied_at"].endswith("+00:00") for r in rows)
    tables = schema.user_tables(store.connection())
    assert {"kernels", "images", "vms", "operations", "schema_migrations"} <= tables
    assert store.schema_version == schema.latest_version()


def test_store_runs_in_wal_mode_with_foreign_keys_and_busy_timeout(store: Store) -> None:
    assert store.read("PRAGMA journal_mode")[0][0] == "wal"
    assert store.read("PRAGMA foreign_keys")[0][0] == 1
    assert store.read("PRAGMA busy_timeout")[0][0] >= 5000
    assert store.read("PRAGMA synchronous")[0][0] == 1  # NORMAL


def test_reopening_is_idempotent_and_keeps_data(db_path: Path) -> None:
    with Store.open(db_path) as first:
        first.operations.add(OperationRecord(id="op1", kind="ping"))
    with Store.open(db_path) as second:
        assert second.operations.get("op1").kind == "ping"
        count = second.read("SELECT count(*) FROM schema_migrations")[0][0]
        assert count == schema.latest_version()


def test_database_from_a_newer_banger_is_refused_untouched(db_path: Path) -> None:
    Store.open(db_path).close()
    with _raw(db_path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, '2030-01-01T00:00:00+00:00')")
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(StoreError) as err:
        Store.open(db_path)
    assert "schema version 999" in err.value.message
    assert "upgrade banger" in (err.value.hint or "")
    assert db_path.read_bytes() == before


def test_migrations_are_numbered_without_gaps_and_split_into_statements() -> None:
    found = schema.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "0001_initial.sql"
    statements = list(schema.split_statements(found[0].sql))
    assert any(s.startswith("CREATE TABLE vms") for s in statements)
    assert all(sqlite3.complete_statement(s) for s in statements)


def test_split_statements_keeps_trigger_bodies_whole() -> None:
    sql = (
        "CREATE TABLE t (a);\n"
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n"
        "  UPDATE t SET a = 1;\n"
        "  UPDATE t SET a = 2;\n"
        "END;\n"
        "-- trailing comment\n"
    )
    statements = list(schema.split_statements(sql))
    assert len(statements) == 2
    assert statements[1].endswith("END;")


def test_a_failing_migration_leaves_nothing_half_applied(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store.open(db_path).close()
    shipped = schema.migrations()
    last = len(shipped)
    name = f"{last + 1:04d}_broken.sql"
    broken = schema.Migration(last + 1, name, "CREATE TABLE extra (a);\nNOT SQL;\n")
    monkeypatch.setattr(schema, "migrations", lambda: (*shipped, broken))
    with pytest.raises(StoreError) as err:
        Store.open(db_path)
    assert name in err.value.message
    assert f"left unchanged at version {last}" in (err.value.hint or "")
    with _raw(db_path) as conn:
        assert "extra" not in schema.user_tables(conn)
        assert schema.current_version(conn) == last
    conn.close()


def test_migration_2_turns_the_creating_flag_into_a_state_and_drops_unused_columns(
    db_path: Path,
) -> None:
    db_path.parent.mkdir()
    with _raw(db_path) as conn:
        schema.apply_pending(conn, upto=1)
        row = ("'qemu', 1, 256, 0, 1, 'b1', '2024-01-01T00:00:00.000000+00:00', "
               "'2024-01-02T00:00:00.000000+00:00'")
        conn.execute(
            "INSERT INTO vms (id, name, state, spec, backend, vcpu, memory_mib, disk_bytes, "
            f"nat, boot_id, created_at, updated_at) VALUES "
            f"('v1', 'half', 'starting', '{{\"creating\": true, \"k\": 1}}', {row}), "
            f"('v2', 'made', 'running', '{{\"creating\": false}}', {row})"
        )
    conn.close()
    with Store.open(db_path) as store:
        half, made = store.vms.get("half"), store.vms.get("made")
        columns = {r[1] for r in store.read("PRAGMA table_info(vms)")}
    assert (half.state, half.spec) == ("creating", {"k": 1})
    assert (made.state, made.spec) == ("running", {})
    assert half.state_changed_at == half.updated_at and half.state_reason is None
    assert {"state_reason", "state_changed_at"} <= columns
    assert "boot_id" not in columns
    assert not half.nat and not made.nat  # 0001's unused nat went; 0004's starts false


# -- unusable files are refused, never recreated ---------------------------------


def _assert_refused_untouched(path: Path) -> StoreError:
    before = path.read_bytes()
    siblings = _files_next_to(path)
    with pytest.raises(StoreError) as err:
        Store.open(path)
    assert str(path) in err.value.message
    assert f"mv {path} {path}.bak" in (err.value.hint or "")
    assert path.read_bytes() == before
    assert _files_next_to(path) == siblings  # no -wal/-shm left behind
    return err.value


def test_garbage_file_is_refused_and_left_untouched(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    error = _assert_refused_untouched(db_path)
    assert "not a database" in error.message or "malformed" in error.message


@pytest.mark.parametrize("keep", [50, 4096, 0.5, -1])
def test_truncated_database_is_refused_and_left_untouched(db_path: Path, keep: float) -> None:
    with Store.open(db_path) as full:
        full.operations.add(OperationRecord(id="op1", kind="ping"))
    raw = db_path.read_bytes()
    cut = int(len(raw) * keep) if isinstance(keep, float) else keep % len(raw)
    db_path.write_bytes(raw[:cut])
    _assert_refused_untouched(db_path)


def test_sqlite_file_that_is_not_bangers_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir()
    with _raw(db_path) as conn:
        conn.execute("CREATE TABLE photos (id)")
    conn.close()
    error = _assert_refused_untouched(db_path)
    assert "not banger's" in error.message


def test_directory_in_place_of_the_database_is_refused(db_path: Path) -> None:
    db_path.mkdir(parents=True)
    with pytest.raises(StoreError) as err:
        Store.open(db_path)
    assert "directory" in err.value.message
    assert db_path.is_dir() and not any(db_path.iterdir())


def _open_as_other_user(path: Path) -> str:
    """Try Store.open in a forked child that dropped to uid/gid 65534; returns its outcome."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on, always _exit
        outcome = "opened"
        try:
            os.setgid(65534)
            os.setuid(65534)
            Store.open(path).close()
        except StoreError as exc:
            outcome = f"StoreError: {exc.message} | {exc.hint}"
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            outcome = f"{type(exc).__name__}: {exc}"
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


def test_database_without_permission_is_refused_and_left_untouched() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another uid (chmod 000 does not stop root)")
    # A world-traversable directory, so only the file's own mode stops the other user.
    workdir = Path(tempfile.mkdtemp(prefix="banger-store-perm-"))
    try:
        workdir.chmod(0o755)
        path = workdir / "state.db"
        Store.open(path).close()
        path.chmod(0o600)  # owned by root: uid 65534 may neither read nor write it
        before = path.read_bytes()
        outcome = _open_as_other_user(path)
        assert outcome.startswith("StoreError"), outcome
        assert str(path) in outcome and f"mv {path} {path}.bak" in outcome
        assert path.read_bytes() == before
        with pytest.raises(StoreError):
            os.setegid(65534)
            os.seteuid(65534)
            try:
                probe(path)
            finally:
                os.seteuid(0)
                os.setegid(0)
    finally:
        for item in workdir.iterdir():
            item.unlink()
        workdir.rmdir()


def test_probe_reports_version_without_creating_or_migrating(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    fresh.write_bytes(b"")
    assert probe(fresh) == 0
    assert fresh.read_bytes() == b""
    migrated = tmp_path / "state.db"
    Store.open(migrated).close()
    assert probe(migrated) == schema.latest_version()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(StoreError):
        probe(garbage)


def test_closed_store_refuses_new_connections(db_path: Path) -> None:
    store = Store.open(db_path)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.read("SELECT 1")


# -- transactions and concurrency -----------------------------------------------


def test_transaction_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.operations.add(OperationRecord(id="gone", kind="x"))
            raise RuntimeError("boom")
    assert store.operations.find("gone") is None


def test_nested_transaction_failure_rolls_back_only_the_inner_part(store: Store) -> None:
    with store.transaction():
        store.operations.add(OperationRecord(id="outer", kind="x"))
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.operations.add(OperationRecord(id="inner", kind="x"))
                raise RuntimeError("boom")
    assert store.operations.find("outer") is not None
    assert store.operations.find("inner") is None


def _write_concurrently(stores: list[Store], threads: int, per_thread: int) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(index: int) -> None:
        target = stores[index % len(stores)]
        start.wait()
        try:
            for n in range(per_thread):
                target.operations.add(OperationRecord(id=f"t{index}-{n}", kind="load"))
                target.operations.update(f"t{index}-{n}", state="running")
                target.operations.list(kind="load")  # reads interleave with writes
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors


def test_many_threads_write_at_once_without_lock_errors_or_lost_rows(store: Store) -> None:
    errors = _write_concurrently([store], threads=16, per_thread=25)
    assert errors == []
    assert len(store.operations.list(state="running")) == 16 * 25


def test_two_stores_on_one_file_write_at_once(db_path: Path) -> None:
    first, second = Store.open(db_path), Store.open(db_path)
    try:
        errors = _write_concurrently([first, second], threads=8, per_thread=25)
        assert errors == []
        assert len(first.operations.list()) == 8 * 25
        assert len(second.operations.list()) == 8 * 25
    finally:
        first.close()
        second.close()


_WRITER = """
import sys
from pathlib import Path
from banger.store import OperationRecord, Store
store = Store.open(Path(sys.argv[1]))
for n in range(int(sys.argv[3])):
    store.operations.add(OperationRecord(id=f"{sys.argv[2]}-{n}", kind="load"))
store.close()
"""


def test_processes_migrate_a_fresh_file_and_write_to_it_at_once(db_path: Path) -> None:
    db_path.parent.mkdir()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(db_path), f"p{n}", "100"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    failures = [w.stderr.read() for w in writers if w.wait(timeout=60) != 0]  # type: ignore[union-attr]
    assert failures == []
    with Store.open(db_path) as store:
        assert len(store.operations.list(kind="load")) == 300
        assert store.read("SELECT count(*) FROM schema_migrations")[0][0] == schema.latest_version()


def test_connection_of_a_finished_thread_is_closed(store: Store) -> None:
    seen: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: seen.append(store.connection()))
    thread.start()
    thread.join()
    del thread
    with pytest.raises(sqlite3.ProgrammingError):
        seen[0].execute("SELECT 1")
