"""The one way banger runs a host program.

argv lists only (never a shell), stdin closed unless given, a clean
environment (a detached program inherits ours only when its caller says so:
``spawn_detached``), the command logged at debug, and a non-zero exit raised as
``CommandError``. Only ``host/`` and ``vmm/`` call it, and ``cli/lifecycle.py`` to
start the daemon (``tests/unit/test_layers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal, TypeVar

from banger.core.cancel import current_token
from banger.core.errors import Cancelled, HostToolError
from banger.host.files import open_nofollow

log = logging.getLogger("banger.host.run")
T = TypeVar("T")
EnvPolicy = Literal["clean", "inherit"]  # a detached program's environment: spawn_detached

_CLEAN_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME", "XDG_RUNTIME_DIR")
_STDERR_TAIL = 2000
_CANCEL_POLL_S = 0.2
_CHUNK = 1 << 16


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
    pass_fds: tuple[int, ...] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion and return its captured output.

    ``input`` is bytes, or an open file the child reads its stdin from;
    ``pass_fds`` stay open in the child at the same numbers (``/dev/fd/N``).

    Under a cancelled :class:`~banger.core.cancel.CancelToken` the child is
    killed and reaped, and ``Cancelled`` is raised.
    """
    argv = _logged_argv(argv)
    with _stdin_from(input) as stdin:
        proc = _spawn(argv, stdin, env, cwd, pass_fds)
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


class OutputTooLarge(HostToolError):
    """A command wrote more to stdout than its caller keeps; it was killed."""

    def __init__(self, argv: Sequence[str], limit: int) -> None:
        self.argv = list(argv)
        self.limit = limit
        super().__init__(f"{argv[0]} wrote more than {limit} bytes to its output; it was stopped")


class _Sink:
    """What is kept of one pipe: all of it, at most ``limit`` bytes, or (``tail``) its end."""

    def __init__(self, limit: int | None = None, *, tail: bool = False) -> None:
        self.data = bytearray()
        self.limit = limit
        self.tail = tail

    def add(self, chunk: bytes) -> bool:
        """Keep ``chunk``; False when the pipe said more than its limit."""
        self.data += chunk
        if self.tail and len(self.data) > 2 * _STDERR_TAIL:
            del self.data[:-_STDERR_TAIL]
        return self.limit is None or len(self.data) <= self.limit


def _pump(proc: subprocess.Popen[bytes], argv: list[str], timeout: float,
          sinks: Mapping[IO[bytes], _Sink], err: _Sink) -> None:
    """Read ``proc``'s pipes into ``sinks`` until they close and ``proc`` exits.

    Bounded by ``timeout`` and by the current cancel token, and by each sink's
    limit: past any of them ``proc`` is killed and reaped, and the error raised
    (``err`` is the sink whose tail a timeout reports).
    """
    token = current_token()
    deadline = time.monotonic() + timeout

    def stop(error: BaseException) -> BaseException:
        _kill(proc)
        return error

    def check() -> float:
        if token is not None and token.cancelled:
            raise stop(Cancelled("operation cancelled"))
        left = deadline - time.monotonic()
        if left <= 0:
            raise stop(_timed_out(argv, timeout, bytes(err.data)))
        return min(left, _CANCEL_POLL_S)

    try:
        with selectors.DefaultSelector() as sel:
            for pipe, sink in sinks.items():
                sel.register(pipe, selectors.EVENT_READ, sink)
            while sel.get_map():
                for key, _ in sel.select(check()):
                    chunk = os.read(key.fd, _CHUNK)
                    if not chunk:
                        sel.unregister(key.fileobj)
                    elif not key.data.add(chunk):
                        raise stop(OutputTooLarge(argv, key.data.limit or 0))
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=check())
                return
    except BaseException:  # Ctrl-C included: never leave the child running
        _kill(proc)
        raise


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` and its process group, and reap it.

    The group too: a shell's own child (``sh -c 'sleep 30'``) holds the pipes
    open after the shell is gone.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _communicate(
    proc: subprocess.Popen[bytes], argv: list[str], timeout: float
) -> tuple[bytes, bytes]:
    """``proc.communicate`` bounded by ``timeout`` and by the current cancel token."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Sink(), _Sink()
    _pump(proc, argv, timeout, {proc.stdout: out, proc.stderr: err}, err)
    return bytes(out.data), bytes(err.data)


def _spawn(argv: list[str], stdin: int | IO[bytes], env: Mapping[str, str] | None = None,
           cwd: str | os.PathLike[str] | None = None,
           pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """Start ``argv`` (dying with us) with both output streams piped."""
    if shutil.which(argv[0], path=clean_env(env)["PATH"]) is None:
        raise CommandError(argv, 127, f"{argv[0]}: not found")  # not setpriv's words for it
    with _starting(argv):
        return subprocess.Popen(
            [*_dies_with_us(), *argv], stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=clean_env(env), cwd=cwd, process_group=0,
            pass_fds=pass_fds,
        )


def run_untrusted(
    argv: Sequence[str], *, timeout: float, stdout_limit: int,
    input: bytes | IO[bytes] | None = None,
) -> bytes:
    """Run ``argv`` whose output is untrusted (a guest's): its stdout, at most ``stdout_limit``.

    Only a tail of stderr is kept, however much the child writes; past
    ``stdout_limit`` bytes of stdout the child is killed and ``OutputTooLarge``
    raised. Timeout, cancel and a non-zero exit behave as in :func:`run`.
    """
    argv = _logged_argv(argv)
    with _stdin_from(input) as stdin:
        proc = _spawn(argv, stdin)
    with proc:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = _Sink(stdout_limit), _Sink(tail=True)
        _pump(proc, argv, timeout, {proc.stdout: out, proc.stderr: err}, err)
    return _result(argv, proc.returncode, bytes(out.data), bytes(err.data), True).stdout


@contextlib.contextmanager
def stream_stdout(argv: Sequence[str], *, timeout: float) -> Iterator[IO[bytes]]:
    """Run ``argv`` with its stdout as a stream read inside the block.

    A thread keeps the tail of stderr, and kills the child at ``timeout`` or
    on a cancel (a read in the block then ends, and the timeout or
    ``Cancelled`` is raised, not what the short read caused). The child is
    killed if the block raises; a non-zero exit raises ``CommandError``.
    Data flows into this process, so nothing the child does outlives a killed daemon.
    """
    argv = _logged_argv(argv)
    proc = _spawn(argv, subprocess.DEVNULL)
    err = _Sink(tail=True)
    failed: list[BaseException] = []

    def watch() -> None:
        assert proc.stderr is not None
        try:
            _pump(proc, argv, timeout, {proc.stderr: err}, err)
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)

    watcher = threading.Thread(target=contextvars.copy_context().run, args=(watch,),
                               name="stream-stdout", daemon=True)
    with proc:
        assert proc.stdout is not None
        watcher.start()
        try:
            yield proc.stdout
        except BaseException as exc:
            _kill(proc)
            watcher.join()
            if failed:
                raise failed[0] from exc
            raise
        finally:
            proc.stdout.close()
        watcher.join()
        if failed:
            raise failed[0]
    _result(argv, proc.returncode, b"", bytes(err.data), True)


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
    daemonizes: bool = False,
) -> int:
    """Run ``argv`` with stdout/stderr appended to ``log_path`` and return its exit status.

    For programs that daemonize (``qemu -daemonize``): their long-lived child
    keeps writing to the log, which a pipe would hold open forever. The
    program starts in a new session so a terminal's signals never reach it.
    ``daemonizes``: a cancel waits (at most ``timeout``) for the first process
    to exit, so the caller can find the child it left by its pidfile and end it.
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
    try:
        return await _wait_or_kill(proc, proc.wait(), argv, timeout)
    except asyncio.CancelledError:
        if daemonizes:
            await _settle_cancelled(proc, timeout)
        raise


async def _settle_cancelled(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """A cancelled daemonizing program: wait for its first process to exit (at most
    ``timeout``; it exits once its child is set up and wrote its pidfile), so the caller
    can find that child and end it; past that, kill and reap it."""
    waiting = asyncio.ensure_future(proc.wait())
    try:
        await asyncio.wait({waiting}, timeout=timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(waiting)


_DETACHED: set[subprocess.Popen[bytes]] = set()  # what spawn_detached started, until it exits
_DETACHED_LOCK = threading.Lock()


def spawn_detached(
    argv: Sequence[str],
    *,
    log_path: str | os.PathLike[str],
    cwd: str | os.PathLike[str],
    env: EnvPolicy,
) -> subprocess.Popen[bytes]:
    """Start a long-lived program that outlives its starter; return its ``Popen``.

    A VMM that does not daemonize itself (Firecracker) or the daemon the CLI
    starts: a new session (no terminal's signals, no parent-death signal),
    stdin closed, stdout and stderr appended to ``log_path`` (opened without
    following a symlink; its directory must exist). ``env``: ``"clean"``
    (:func:`clean_env`, a VMM) or ``"inherit"`` (this process's own, so the
    ``BANGER_*`` settings reach the daemon the CLI starts). Nobody waits for it:
    it is kept here until it exited (or the next spawn) reaps it, so it is never
    reported as leaked, and :func:`kill_detached` can end it; once its starter
    is gone it is init's child.
    """
    argv = _logged_argv(argv, f" >> {os.fspath(log_path)} (detached, {env} env)")
    fd = open_nofollow(Path(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        with _starting(argv):
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                    env=clean_env() if env == "clean" else None, cwd=cwd,
                                    start_new_session=True)
    finally:
        os.close(fd)
    with _DETACHED_LOCK:
        _DETACHED.difference_update([p for p in _DETACHED if p.poll() is not None])
        _DETACHED.add(proc)
    return proc


def kill_detached(pid: int, *, timeout: float = 10.0) -> None:
    """SIGKILL and reap a program ``spawn_detached`` started in this process (a no-op for
    any other pid): its ``Popen`` still holds it, so the pid cannot name another process."""
    with _DETACHED_LOCK:
        procs = [p for p in _DETACHED if p.pid == pid]
        _DETACHED.difference_update(procs)
    for p in procs:
        p.kill()
        p.wait(timeout)
