"""host.run: run(), arun() and arun_to_log() share one contract for argv, errors and timeouts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from banger.host.run import CommandError, EnvPolicy, arun, arun_to_log, run


def test_run_returns_captured_output_and_feeds_input() -> None:
    proc = run(["sh", "-c", "cat; echo err >&2"], timeout=10, input=b"in\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"in\n", b"err\n")
    assert proc.args == ["sh", "-c", "cat; echo err >&2"]


def test_arun_returns_captured_output_and_feeds_input() -> None:
    proc = asyncio.run(arun(["sh", "-c", "cat; echo err >&2"], timeout=10, input=b"in\n"))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"in\n", b"err\n")


def test_stdin_is_closed_unless_input_is_given() -> None:
    assert run(["cat"], timeout=10).stdout == b""
    assert asyncio.run(arun(["cat"], timeout=10)).stdout == b""


def test_argv_may_hold_paths(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert run(["cat", tmp_path / "f"], timeout=10).stdout == b"x"  # type: ignore[list-item]


def invoke(
    runner: str, argv: list[str], tmp_path: Path, *, timeout: float = 10, check: bool = True
) -> Any:
    """Run ``argv`` through one of the three entry points, the async ones to completion."""
    if runner == "run":
        return run(argv, timeout=timeout, check=check)
    if runner == "arun":
        return asyncio.run(arun(argv, timeout=timeout, check=check))
    return asyncio.run(arun_to_log(argv, log_path=tmp_path / "log", timeout=timeout))


@pytest.mark.parametrize("runner", ["run", "arun"])
def test_a_failing_command_raises_with_its_status_and_last_stderr_line(
    runner: str, tmp_path: Path
) -> None:
    argv = ["sh", "-c", "echo first >&2; echo 'the reason' >&2; exit 3"]
    with pytest.raises(CommandError) as exc:
        invoke(runner, argv, tmp_path)
    assert (exc.value.returncode, exc.value.argv) == (3, argv)
    assert str(exc.value) == "sh exited with status 3: the reason"
    assert exc.value.stderr_tail == "first\nthe reason\n"


@pytest.mark.parametrize("runner", ["run", "arun"])
def test_check_false_returns_the_failure_instead(runner: str, tmp_path: Path) -> None:
    assert invoke(runner, ["sh", "-c", "exit 4"], tmp_path, check=False).returncode == 4


@pytest.mark.parametrize("runner", ["run", "arun", "arun_to_log"])
def test_a_missing_program_fails_with_status_127(runner: str, tmp_path: Path) -> None:
    with pytest.raises(CommandError) as exc:
        invoke(runner, ["banger-no-such-program"], tmp_path)
    assert exc.value.returncode == 127
    assert exc.value.stderr_tail == "banger-no-such-program: not found"


@pytest.mark.parametrize("runner", ["run", "arun", "arun_to_log"])
def test_a_command_past_its_timeout_is_killed_with_status_124(runner: str, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(CommandError) as exc:
        invoke(runner, ["sleep", "30"], tmp_path, timeout=0.3)
    assert time.monotonic() - start < 10
    assert exc.value.returncode == 124
    assert exc.value.stderr_tail.startswith("timed out after 0.3s")
    left = subprocess.run(["pgrep", "-P", str(os.getpid()), "-x", "sleep"], check=False)
    assert left.returncode == 1  # killed and reaped: no child of ours left running


def test_arun_to_log_appends_both_streams_and_returns_the_status(tmp_path: Path) -> None:
    log = tmp_path / "vmm.log"
    log.write_bytes(b"earlier\n")
    argv = ["sh", "-c", "echo out; echo err >&2; exit 5"]
    assert asyncio.run(arun_to_log(argv, log_path=log, timeout=10)) == 5
    assert log.read_bytes() == b"earlier\nout\nerr\n"


def test_the_environment_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANGER_SECRET_FOR_TEST", "leak")
    out = run(["sh", "-c", "echo ${BANGER_SECRET_FOR_TEST:-clean}"], timeout=10).stdout
    assert out == b"clean\n"
    extra = run(["sh", "-c", "echo $X"], timeout=10, env={"X": "given"}).stdout
    assert extra == b"given\n"


def test_a_detached_program_never_writes_through_a_planted_log_symlink(tmp_path: Path) -> None:
    from banger.core.errors import Forbidden
    from banger.host.run import spawn_detached

    target = tmp_path / "victim"
    target.write_text("keep")
    (tmp_path / "vmm.log").symlink_to(target)
    with pytest.raises(Forbidden):
        spawn_detached(["echo", "hi"], log_path=tmp_path / "vmm.log", cwd=tmp_path, env="clean")
    assert target.read_text() == "keep"


def test_a_detached_program_runs_in_its_own_session_and_kill_detached_reaps_it(
    tmp_path: Path,
) -> None:
    from banger.host import proc_identity
    from banger.host.run import kill_detached, spawn_detached

    pid = spawn_detached(["sleep", "30"], log_path=tmp_path / "log", cwd=tmp_path,
                         env="clean").pid
    assert os.getsid(pid) == pid  # its own session: no terminal's signals reach it
    started = proc_identity.start_time(pid)
    assert started is not None and proc_identity.is_running(pid, started, ())
    kill_detached(pid)
    assert not proc_identity.is_running(pid, started, ())
    kill_detached(os.getpid())  # not one it started: a no-op


@pytest.mark.parametrize(("policy", "seen"), [("clean", "clean"), ("inherit", "leak")])
def test_a_detached_program_gets_the_environment_its_caller_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: EnvPolicy, seen: str
) -> None:
    """A VMM gets a clean environment; the daemon the CLI starts gets ours (BANGER_*)."""
    from banger.host.run import spawn_detached

    monkeypatch.setenv("BANGER_SECRET_FOR_TEST", "leak")
    log = tmp_path / "log"
    proc = spawn_detached(["sh", "-c", "echo ${BANGER_SECRET_FOR_TEST:-clean} $PWD"],
                          log_path=log, cwd="/", env=policy)
    assert proc.wait(timeout=10) == 0
    assert log.read_text() == f"{seen} /\n"
    assert (log.stat().st_mode & 0o777) == 0o600
