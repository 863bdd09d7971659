"""The one way banger runs a host program.

argv lists only (never a shell), stdin closed unless given, a clean
environment, the command logged at debug, and a non-zero exit raised as
``CommandError``. Only ``host/`` and ``vmm/`` call it (``tests/unit/test_layers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

from banger.core.cancel import current_token
from banger.core.errors import Cancelled, HostToolError
from banger.host.files import open_nofollow

log = logging.getLogger("banger.host.run")
T = TypeVar("T")

_CLEAN_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME", "XDG_RUNTIME_DIR")
_STDERR_TAIL = 2000
_CANCEL_POLL_S = 0.2


class CommandError(HostToolError):
    """A host command exited non-zero (or could not be started)."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr_tail: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        tail = stderr_tail.strip().splitlines()[-1:] if stderr_tail.strip() else []
        detail = f": {tail[0]}" if tail else ""
        super().__init__(f"{argv[0]} exited with status {returncode}{detail}")


_SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _search_path() -> str:
    """The caller's PATH plus the sbin dirs a non-root user's PATH lacks (mkfs.ext4, nft)."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    dirs += [d for d in _SYSTEM_PATH if d not in dirs]
    return os.pathsep.join(dirs)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _CLEAN_ENV_KEYS if k in os.environ and k != "PATH"}
    env["PATH"] = _search_path()
    env.setdefault("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def require_tool(name: str, package: str) -> str:
    """Return the path of ``name`` or raise with the package that provides it."""
    path = shutil.which(name, path=clean_env()["PATH"])
    if path is None:
        raise HostToolError(
            f"{name} is not installed",
            hint=f"install it: sudo apt-get install {package}",
        )
    return path


def _tail(data: bytes | None) -> str:
    return (data or b"")[-_STDERR_TAIL:].decode("utf-8", "replace")


def _logged_argv(argv: Sequence[str | os.PathLike[str]], note: str = "") -> list[str]:
    """``argv`` as strings, logged at debug the way a shell would show it."""
    strs = [os.fspath(a) for a in argv]
    log.debug("run %s%s", shlex.join(strs), note)
    return strs


@contextlib.contextmanager
def _starting(argv: list[str]) -> Iterator[None]:
    """A program that is not installed fails like a shell's: status 127."""
    try:
        yield
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, f"{argv[0]}: not found") from exc


def _timed_out(argv: list[str], timeout: float, stderr: bytes | None = None) -> CommandError:
    detail = f"timed out after {timeout}s"
    return CommandError(argv, 124, detail if stderr is None else f"{detail}\n{_tail(stderr)}")


def _result(
    argv: list[str], returncode: int, stdout: bytes, stderr: bytes, check: bool
) -> subprocess.CompletedProcess[bytes]:
    if check and returncode != 0:
        raise CommandError(argv, returncode, _tail(stderr))
    return subprocess.CompletedProcess(argv, returncode, stdout, stderr)


async def _wait_or_kill(
    proc: asyncio.subprocess.Process, waiting: Awaitable[T], argv: list[str], timeout: float
) -> T:
    """Await ``waiting`` for at most ``timeout``; past it, kill and reap ``proc`` and raise."""
    try:
        return await asyncio.wait_for(waiting, timeout)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise _timed_out(argv, timeout) from exc


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion and return its captured output.

    ``input`` is bytes, or an open file the child reads its stdin from.

    Under a cancelled :class:`~banger.core.cancel.CancelToken` the child is
    killed and reaped, and ``Cancelled`` is raised.
    """
    argv = _logged_argv(argv)
    if shutil.which(argv[0], path=clean_env(env)["PATH"]) is None:
        raise CommandError(argv, 127, f"{argv[0]}: not found")  # not setpriv's words for it
    with _stdin_from(input) as stdin, _starting(argv):
        proc = subprocess.Popen(
            [*_dies_with_us(), *argv],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(env),
            cwd=cwd,
        )
    with proc:
        out, err = _communicate(proc, argv, timeout)
    return _result(argv, proc.returncode, out, err, check)


@contextlib.contextmanager
def _stdin_from(data: bytes | IO[bytes] | None) -> Iterator[int | IO[bytes]]:
    """The child's stdin: closed, the file given, or ``data`` in an unlinked temporary file.

    A file rather than a pipe because ``_communicate`` waits in short steps
    (to notice a cancel), and ``Popen.communicate`` can neither resend input on
    a retry nor keep writing it without being passed it again.
    """
    if data is None:
        yield subprocess.DEVNULL
        return
    if not isinstance(data, bytes):
        yield data
        return
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(0)
        yield f


@functools.cache
def _dies_with_us() -> tuple[str, ...]:
    """An argv prefix that kills the child when its parent dies (SIGKILL included).

    ``run`` always waits for its child in the thread that started it, so the
    parent-death signal (which follows that thread) fires only when the daemon
    itself dies: a killed daemon leaves no ``dpkg-deb`` or ``mkfs`` writing on
    into the scratch dir the next start sweeps.
    """
    setpriv = shutil.which("setpriv", path=clean_env()["PATH"])
    return (setpriv, "--pdeathsig", "KILL", "--") if setpriv else ()


def _communicate(
    proc: subprocess.Popen[bytes], argv: list[str], timeout: float
) -> tuple[bytes, bytes]:
    """``proc.communicate`` bounded by ``timeout`` and by the current cancel token."""
    token = current_token()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        step = left if token is None else min(left, _CANCEL_POLL_S)
        try:
            return proc.communicate(timeout=max(step, 0))
        except subprocess.TimeoutExpired:
            cancelled = token is not None and token.cancelled
            if not cancelled and time.monotonic() < deadline:
                continue
            proc.kill()
            _, err = proc.communicate()
            if cancelled:
                raise Cancelled("operation cancelled") from None
            raise _timed_out(argv, timeout, err) from None


@contextlib.contextmanager
def stream_stdout(argv: Sequence[str], *, timeout: float) -> Iterator[IO[bytes]]:
    """Run ``argv`` with its stdout as a stream read inside the block.

    The child is killed if the block raises (or it outlives ``timeout`` past
    the block); a non-zero exit raises ``CommandError``. Data flows into this
    process, so nothing the child does outlives a killed daemon.
    """
    argv = _logged_argv(argv)
    if shutil.which(argv[0], path=clean_env()["PATH"]) is None:
        raise CommandError(argv, 127, f"{argv[0]}: not found")
    proc = subprocess.Popen(
        [*_dies_with_us(), *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=clean_env(),
    )
    with proc:
        assert proc.stdout is not None
        try:
            yield proc.stdout
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
        _, err = _communicate(proc, argv, timeout)
    _result(argv, proc.returncode, b"", err, True)


async def arun(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """The async twin of :func:`run`."""
    argv = _logged_argv(argv)
    with _starting(argv):
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(env),
            cwd=cwd,
        )
    out, err = await _wait_or_kill(proc, proc.communicate(input), argv, timeout)
    assert proc.returncode is not None
    return _result(argv, proc.returncode, out, err, check)


async def arun_to_log(
    argv: Sequence[str],
    *,
    log_path: str | os.PathLike[str],
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``argv`` with stdout/stderr appended to ``log_path`` and return its exit status.

    For programs that daemonize (``qemu -daemonize``): their long-lived child
    keeps writing to the log, which a pipe would hold open forever. The
    program starts in a new session so a terminal's signals never reach it.
    """
    argv = _logged_argv(argv, f" >> {os.fspath(log_path)}")
    fd = open_nofollow(Path(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "ab") as out, _starting(argv):
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(env),
            start_new_session=True,
        )
    return await _wait_or_kill(proc, proc.wait(), argv, timeout)
