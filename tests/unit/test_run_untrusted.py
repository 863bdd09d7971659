"""host.run with a hostile child: run_untrusted and stream_stdout stay bounded in time and memory.

The children are small Python scripts that do what a broken or hostile
guest does behind ``ssh``: flood stderr, say nothing, trickle, send too much,
or keep a grandchild holding the pipes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from banger.core.cancel import CancelToken, cancel_scope
from banger.core.errors import Cancelled
from banger.host.run import CommandError, OutputTooLarge, run_untrusted, stream_stdout

FLOOD_STDERR = "import sys\nfor _ in range(320): sys.stderr.write('w' * 65535 + '\\n')\n"
# The grandchild's argv is this run's own (another test run on the host has its own)
GRANDCHILD_SLEEP = f"31.{os.getpid()}"
SILENT_WITH_GRANDCHILD = f"import subprocess\nsubprocess.run(['sleep', '{GRANDCHILD_SLEEP}'])\n"
TRICKLE = "import sys, time\nwhile True:\n print('x', flush=True)\n time.sleep(0.2)\n"
ENDLESS = "import sys\nwhile True: sys.stdout.write('y' * 65536)\n"


def py(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def _children() -> set[bytes]:
    found = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, check=False)
    return set(found.stdout.split())


@pytest.fixture(autouse=True)
def no_child_left() -> Iterator[None]:
    before = _children()  # earlier tests' long-lived children (a daemon) are not this test's
    yield
    assert _children() - before == set(), "a child (or its group) outlived the call"
    sleepers = subprocess.run(["pgrep", "-f", f"^sleep {GRANDCHILD_SLEEP}$"],
                              capture_output=True, check=False)
    assert sleepers.stdout == b"", "a grandchild outlived the call"


def test_a_stderr_flood_is_drained_and_only_its_tail_kept() -> None:
    script = FLOOD_STDERR + "print('answer')\n"
    tracemalloc.start()
    try:
        out = run_untrusted(py(script), timeout=60, stdout_limit=1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == b"answer\n"
    assert peak < 2 << 20  # 20 MiB went through stderr


def test_a_failure_after_a_stderr_flood_reports_the_last_line() -> None:
    script = FLOOD_STDERR + "sys.stderr.write('the reason\\n'); sys.exit(3)\n"
    with pytest.raises(CommandError) as exc:
        run_untrusted(py(script), timeout=60, stdout_limit=1024)
    assert exc.value.returncode == 3
    assert str(exc.value).endswith(": the reason")
    assert len(exc.value.stderr_tail) <= 2000


@pytest.mark.parametrize("script", [SILENT_WITH_GRANDCHILD, TRICKLE], ids=["silent", "trickle"])
def test_a_silent_or_trickling_child_is_killed_at_the_deadline(script: str) -> None:
    start = time.monotonic()
    with pytest.raises(CommandError) as exc:
        run_untrusted(py(script), timeout=1, stdout_limit=1 << 20)
    assert exc.value.returncode == 124
    assert time.monotonic() - start < 5


def test_stdout_past_the_limit_kills_the_child() -> None:
    start = time.monotonic()
    with pytest.raises(OutputTooLarge) as exc:
        run_untrusted(py(ENDLESS), timeout=60, stdout_limit=1 << 20)
    assert exc.value.limit == 1 << 20
    assert "wrote more than 1048576 bytes" in str(exc.value)
    assert time.monotonic() - start < 10


def test_a_cancel_kills_a_silent_child() -> None:
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    start = time.monotonic()
    with cancel_scope(token), pytest.raises(Cancelled):
        run_untrusted(py(SILENT_WITH_GRANDCHILD), timeout=60, stdout_limit=1024)
    assert time.monotonic() - start < 5


def test_stdin_may_be_given() -> None:
    out = run_untrusted(py("import sys; print(sys.stdin.read().upper())"), input=b"in",
                        timeout=30, stdout_limit=1024)
    assert out == b"IN\n"


def read_all(argv: list[str], timeout: float) -> bytes:
    with stream_stdout(argv, timeout=timeout) as out:
        return out.read()


def test_stream_stdout_drains_a_stderr_flood() -> None:
    assert read_all(py(FLOOD_STDERR + "print('answer')\n"), 60) == b"answer\n"


@pytest.mark.parametrize("script", [SILENT_WITH_GRANDCHILD, TRICKLE], ids=["silent", "trickle"])
def test_stream_stdout_times_out_while_the_block_is_reading(script: str) -> None:
    start = time.monotonic()
    with pytest.raises(CommandError) as exc:
        read_all(py(script), 1)
    assert exc.value.returncode == 124
    assert time.monotonic() - start < 5


def test_stream_stdout_reports_the_timeout_not_the_short_read_it_caused() -> None:
    class Truncated(Exception):
        pass

    with pytest.raises(CommandError) as exc:
        with stream_stdout(py(SILENT_WITH_GRANDCHILD), timeout=1) as out:
            if not out.read():
                raise Truncated
    assert exc.value.returncode == 124
    assert isinstance(exc.value.__cause__, Truncated)


def test_stream_stdout_stops_on_a_cancel_while_the_block_is_reading() -> None:
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    with cancel_scope(token), pytest.raises(Cancelled):
        read_all(py(SILENT_WITH_GRANDCHILD), 60)
