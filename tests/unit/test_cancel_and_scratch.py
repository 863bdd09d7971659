"""Cancel tokens, the one path-component check, per-name locks and the scratch sweep."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from banger.core.cancel import CancelToken, cancel_scope, checkpoint
from banger.core.errors import Cancelled, InvalidInput
from banger.core.validate import safe_component, safe_relative_path
from banger.host.files import flock_wait, name_lock, read_inside, sweep_scratch
from banger.host.proc import pid_alive, start_time
from banger.host.run import run


def test_a_cancelled_token_kills_the_running_child_and_raises() -> None:
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    started = time.monotonic()
    with cancel_scope(token), pytest.raises(Cancelled):
        run(["sleep", "37.5"], timeout=60)
    assert time.monotonic() - started < 3
    left = subprocess.run(["pgrep", "-f", "sleep 37.5"], capture_output=True)
    assert left.returncode == 1


def test_a_slow_child_fed_on_stdin_finishes_under_a_live_token() -> None:
    # The token makes run() wait in short steps; the input goes in once, not per step.
    with cancel_scope(CancelToken()):
        result = run(["sh", "-c", "sleep 0.6; wc -c"], timeout=30, input=b"x" * 100_000)
    assert result.stdout.strip() == b"100000"


def test_checkpoint_raises_only_under_a_cancelled_token() -> None:
    checkpoint()
    token = CancelToken()
    with cancel_scope(token):
        checkpoint()
        token.cancel()
        with pytest.raises(Cancelled):
            checkpoint()
    checkpoint()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../../etc/x", "nul\0byte"])
def test_unsafe_components_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="unsafe entry name"):
        safe_component(name, where="test")


@pytest.mark.parametrize("path", ["/etc/shadow", "a/../../b", "a//b", "", "./a"])
def test_unsafe_relative_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidInput, match="unsafe"):
        safe_relative_path(path, where="test")


def test_safe_names_pass_unchanged() -> None:
    assert safe_component("..a", where="t") == "..a"
    assert safe_relative_path("kernel/drivers/x.ko", where="t") == "kernel/drivers/x.ko"


def test_read_inside_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"s")
    root = tmp_path / "root"
    root.mkdir()
    (root / "in").write_bytes(b"ok")
    (root / "out").symlink_to(tmp_path / "secret")
    (root / "hop").symlink_to("in")
    assert read_inside(root, "hop", where="t") == b"ok"
    with pytest.raises(InvalidInput, match="resolves outside"):
        read_inside(root, "out", where="t")


def test_name_locks_serialise_and_leave_no_file(tmp_path: Path) -> None:
    lock = tmp_path / "tmp" / "kernel-k.lock"
    inside: list[int] = []
    overlap: list[bool] = []

    def worker() -> None:
        for _ in range(20):
            with name_lock(lock):
                inside.append(1)
                overlap.append(len(inside) > 1)
                time.sleep(0.001)
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not any(overlap)
    assert not lock.exists()


def test_a_cancel_stops_a_wait_for_a_name_lock(tmp_path: Path) -> None:
    lock = tmp_path / "k.lock"
    token = CancelToken()
    with name_lock(lock):
        threading.Timer(0.2, token.cancel).start()
        with cancel_scope(token), pytest.raises(Cancelled):
            with name_lock(lock):
                pass


def test_the_sweep_empties_the_scratch_dir_only(tmp_path: Path) -> None:
    (tmp_path / "tmp" / "import-x" / "d").mkdir(parents=True)
    (tmp_path / "tmp" / "import-x" / "d").chmod(0o500)
    (tmp_path / "tmp" / "kernel-k.lock").write_text("")
    (tmp_path / "images").mkdir()
    assert sweep_scratch(tmp_path) == 2
    assert list((tmp_path / "tmp").iterdir()) == []
    assert (tmp_path / "images").is_dir()


def test_a_lock_wait_gives_up_at_its_deadline_and_a_cancel_stops_it(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder, waiter = os.open(path, os.O_RDWR | os.O_CREAT), os.open(path, os.O_RDWR)
    try:
        assert flock_wait(holder, fcntl.LOCK_EX)
        assert flock_wait(waiter, fcntl.LOCK_SH, wait_s=0.2) is False
        token = CancelToken()
        threading.Timer(0.2, token.cancel).start()
        with cancel_scope(token), pytest.raises(Cancelled):
            flock_wait(waiter, fcntl.LOCK_SH)
    finally:
        os.close(holder)
        os.close(waiter)


def test_a_reused_pid_is_not_the_process_we_saw() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        started = start_time(child.pid)
        assert started is not None and pid_alive(child.pid, started)
        assert not pid_alive(child.pid, started + 1)  # same pid, another process
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid, started)
