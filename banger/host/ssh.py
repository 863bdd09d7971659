"""SSH to guests: the managed client key, per-VM host keys and known_hosts, argv and readiness.

The CLI builds ``vm ssh``'s system ``ssh`` argv itself (``core.sshcmd``); the daemon talks
to guests through asyncssh (``wait_for_ssh``, ``ssh_exec``). Each VM gets its
own known_hosts file holding the host key banger generated for it, so no
prompt ever appears and a reused IP never trips a "host key changed" error.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shlex
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import asyncssh

from banger.core.errors import GuestError, InvalidInput, StoreError
from banger.core.sshcmd import CONNECT_TIMEOUT, ssh_argv
from banger.core.validate import approx_size
from banger.core.wait import Backoff
from banger.host.files import atomic_write_text, flock_wait, log_tail, open_nofollow, write_private
from banger.host.run import (
    CommandError,
    OutputTooLarge,
    arun,
    arun_to_log,
    require_tool,
    run,
    run_untrusted,
)

log = logging.getLogger("banger.host.ssh")

HOST_KEY_FILE = "ssh_host_ed25519_key"
"""The file name of an sshd host key, in an image's /etc/ssh and on a work disk's .banger/."""
_PRIVATE_KEY_HEADER = b"-----BEGIN OPENSSH PRIVATE KEY-----"
# ssh binds the master socket as "<ControlPath>.<16 random chars>" first.
_CONTROL_SUFFIX = 17
_SUN_PATH_MAX = 107


def control_path_for(run_dir: Path) -> Path | None:
    """The VM's ControlMaster socket, or None when the path is too long for a socket."""
    path = run_dir / "ssh"
    return path if len(os.fsencode(path)) + _CONTROL_SUFFIX <= _SUN_PATH_MAX else None


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = open_nofollow(lock_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        flock_wait(fd, fcntl.LOCK_EX)  # a cancelled create stops waiting here
        yield
    finally:
        os.close(fd)


def _keygen(dest: Path, comment: str) -> None:
    keygen = require_tool("ssh-keygen", "openssh-client")
    run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", os.fspath(dest)], timeout=30)


def _corrupt(path: Path, why: str) -> StoreError:
    return StoreError(
        f"SSH key {path} is {why}",
        hint=f"restore it, or move it away (mv {path} {path}.bad) and banger makes a new one",
    )


def ensure_ssh_key(path: Path) -> bytes:
    """Return the public key line of the managed key at ``path``, generating it on first use.

    An existing file is never overwritten, even when corrupt: that raises
    StoreError, because regenerating would lock the user out of every VM.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pub = path.with_name(path.name + ".pub")
    with _locked(path.with_name(f".{path.name}.lock")):
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            for p in (tmp, tmp.with_name(tmp.name + ".pub")):
                p.unlink(missing_ok=True)
            _keygen(tmp, "banger")
            os.replace(tmp.with_name(tmp.name + ".pub"), pub)
            os.replace(tmp, path)
            log.info("generated SSH key %s", path)
        try:
            head = path.read_bytes()[: len(_PRIVATE_KEY_HEADER)]
        except OSError as exc:
            raise _corrupt(path, f"unreadable ({exc.strerror})") from exc
        if head != _PRIVATE_KEY_HEADER:
            raise _corrupt(path, "not an OpenSSH private key")
        if not pub.exists():
            write_private(pub, _public_from_private(path))
        return pub.read_bytes()


def _public_from_private(path: Path) -> bytes:
    keygen = require_tool("ssh-keygen", "openssh-client")
    try:
        return run([keygen, "-y", "-f", os.fspath(path)], timeout=30).stdout
    except CommandError as exc:
        raise _corrupt(path, "corrupt (ssh-keygen cannot read it)") from exc


def fresh_host_key(comment: str) -> tuple[bytes, bytes]:
    """A fresh ed25519 sshd host key kept nowhere on the host: (private, public)."""
    with tempfile.TemporaryDirectory(prefix="banger-hostkey-") as tmp:
        key = Path(tmp) / HOST_KEY_FILE
        _keygen(key, comment)
        return key.read_bytes(), key.with_name(key.name + ".pub").read_bytes()


def require_keygen() -> None:
    """Raise HostToolError (with the package to install) unless ssh-keygen is installed."""
    require_tool("ssh-keygen", "openssh-client")


def known_hosts_line(host: str, port: int, pubkey: bytes | str) -> str:
    """One known_hosts line binding ``host:port`` to ``pubkey`` (an ``.pub`` line)."""
    text = pubkey.decode() if isinstance(pubkey, bytes) else pubkey
    fields = text.split()
    if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise InvalidInput(f"not an SSH public key: {text[:40]!r}")
    pattern = host if port == 22 else f"[{host}]:{port}"
    return f"{pattern} {fields[0]} {fields[1]}\n"


def write_known_hosts(path: Path, host: str, port: int, pubkey: bytes | str) -> None:
    """Replace ``path`` with a single line for the VM (write to temp, then rename)."""
    atomic_write_text(path, known_hosts_line(host, port, pubkey))


@dataclass(frozen=True)
class ExecResult:
    exit_status: int
    stdout: bytes
    stderr: bytes


def _connect_options(key: Path, known_hosts: Path | None, timeout: float) -> dict[str, object]:
    return {
        "username": "root",
        "client_keys": [os.fspath(key)],
        "known_hosts": os.fspath(known_hosts) if known_hosts is not None else None,
        "agent_path": None,
        "config": [],  # ignore ~/.ssh/config, like ssh_argv's -F /dev/null
        "connect_timeout": timeout,
        "login_timeout": timeout,
    }


PROBE_CONNECT_TIMEOUT = 2  # seconds: a guest whose network is not up yet is tried again soon
SLOW_GREETING_TIMEOUT = 12  # the most it grows to for an sshd slow to greet (open_master)


async def open_master(
    host: str,
    port: int,
    key: Path,
    known_hosts: Path,
    control_path: Path,
    *,
    deadline: float,
    log_path: Path,
    alive: Callable[[], bool] | None = None,
    held: bool = False,
) -> None:
    """Return once sshd accepts our key, leaving the VM's shared connection up.

    The readiness probe *is* the connection later ``ssh`` calls reuse, so
    ``vm run`` pays for one key exchange, not two (~0.6 s each under TCG).
    Each try is an ``ssh -N``: it opens no session (a shell in the guest costs
    ~0.2 s under TCG) and returns as soon as sshd accepted the key, its master
    backgrounding itself; so its output goes to ``log_path``, never to a pipe
    the master would hold open. A master left from an earlier boot is closed
    first: ``ssh -N`` through a master would open a shell session. A ``held`` master
    (``ssh_argv``) outlives a pause of its guest.
    """
    await close_master(control_path)
    connect_timeout = PROBE_CONNECT_TIMEOUT

    def said() -> str:
        """ssh's last line in the log (why it gave up), escaped when shown: the log goes
        with a failed create's VM, the error stays."""
        lines = log_tail(log_path, 1024).splitlines()
        return f"ssh said: {lines[-1]}" if lines else "ssh said nothing"

    async def attempt(remaining: float) -> str | None:
        nonlocal connect_timeout
        argv = ssh_argv(host, port, key, known_hosts, connect_timeout=connect_timeout,
                        control_path=control_path, authenticate_only=True, held=held)
        try:
            status = await arun_to_log(argv, log_path=log_path, timeout=min(remaining, 15))
        except CommandError as exc:  # a try that timed out: try again
            return f"{exc.message} ({said()})"
        if status == 0:
            return None
        why = said()
        if "banner exchange" in why:
            # sshd took the connection but did not greet in time (a loaded TCG guest's sshd
            # starting anew for each connection): every abandoned try costs the guest one
            # more sshd start, so trying as often again only adds to its load (CI saw a
            # guest never catch up in 120 s). Wait longer for the next greeting instead.
            connect_timeout = min(connect_timeout * 2, SLOW_GREETING_TIMEOUT)
        return f"ssh exited with status {status} ({why})"

    await _until_ssh_accepts(host, port, deadline=deadline, alive=alive, attempt=attempt)


async def _until_ssh_accepts(
    host: str,
    port: int,
    *,
    deadline: float,
    alive: Callable[[], bool] | None,
    attempt: Callable[[float], Awaitable[str | None]],
) -> None:
    """Retry ``attempt`` (None: success, else why it failed) with a backoff until ``deadline``.

    ``alive`` (e.g. the VMM handle's ``running``) ends the wait early when the VM died.
    """
    backoff = Backoff(deadline - time.monotonic())
    last = "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GuestError(
                f"SSH on {host}:{port} did not accept our key in time: {last}",
                hint="see the VM's console log (banger vm logs)",
            )
        if alive is not None and not alive():
            raise GuestError(f"the VM behind {host}:{port} exited before SSH came up")
        failure = await attempt(remaining)
        if failure is None:
            return
        last = failure
        pause = backoff.next_pause()
        if pause:
            await asyncio.sleep(pause)


async def master_up(control_path: Path | None) -> bool:
    """Whether the VM's shared connection is up (``ssh -O check``: asks the master only)."""
    if control_path is None or not control_path.exists():
        return False
    try:
        return (await arun(_to_master(control_path, "check"), timeout=5, check=False)
                ).returncode == 0
    except CommandError:
        return False


async def close_master(control_path: Path | None) -> None:
    """End the VM's shared connection, if one is up (idempotent)."""
    if control_path is None or not control_path.exists():
        return
    with contextlib.suppress(CommandError):
        await arun(_to_master(control_path, "exit"), timeout=5, check=False)


def _to_master(control_path: Path, command: str) -> list[str]:
    """``ssh -O command`` to the master at ``control_path`` (nothing reaches the guest)."""
    return ["ssh", "-F", "/dev/null", "-o", f"ControlPath={control_path}", "-O", command, "vm"]


async def wait_for_ssh(
    host: str,
    port: int,
    key: Path,
    *,
    deadline: float,
    known_hosts: Path | None = None,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Return once sshd at ``host:port`` accepts ``key``; GuestError at ``deadline`` (monotonic).

    ``alive`` (e.g. the VMM handle's ``running``) ends the wait early when the VM died.

    Bounded retries with a short backoff: the guest's sshd comes up at an
    unknown moment and every 100 ms of slack is visible in ``vm run``.
    """

    async def attempt(remaining: float) -> str | None:
        try:
            opts = _connect_options(key, known_hosts, min(remaining, CONNECT_TIMEOUT))
            async with asyncio.timeout(remaining):
                conn = await asyncssh.connect(host, port, **opts)
            conn.close()
            await conn.wait_closed()
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            return str(exc) or type(exc).__name__
        return None

    await _until_ssh_accepts(host, port, deadline=deadline, alive=alive, attempt=attempt)


async def ssh_exec(
    host: str,
    port: int,
    key: Path,
    command: Sequence[str],
    *,
    known_hosts: Path | None = None,
    timeout: float = 60,
    input: bytes | None = None,
) -> ExecResult:
    """Run ``command`` (argv, quoted for the remote shell) in the guest; its status and output."""
    opts = _connect_options(key, known_hosts, min(timeout, CONNECT_TIMEOUT))
    try:
        async with asyncio.timeout(timeout):
            async with asyncssh.connect(host, port, **opts) as conn:
                res = await conn.run(shlex.join(command), input=input, encoding=None, check=False)
    except TimeoutError as exc:
        raise GuestError(
            f"command in the guest at {host}:{port} timed out after {timeout}s"
        ) from exc
    except (OSError, asyncssh.Error) as exc:
        raise GuestError(f"cannot run a command over SSH on {host}:{port}: {exc}") from exc
    status = res.exit_status if res.exit_status is not None else 255
    return ExecResult(status, _as_bytes(res.stdout), _as_bytes(res.stderr))


@dataclass(frozen=True)
class GuestTarget:
    """A running guest's sshd and the files that reach it (its shared connection, if up)."""

    host: str
    port: int
    key: Path
    known_hosts: Path
    control_path: Path | None

    def argv(self, command: Sequence[str]) -> list[str]:
        return ssh_argv(self.host, self.port, self.key, self.known_hosts, command=command,
                        control_path=self.control_path, start_master=False)


class GuestCommandError(GuestError):
    """A command in the guest exited non-zero: its status and the last line it said."""

    def __init__(self, status: int, said: str) -> None:
        self.status = status
        self.said = said
        super().__init__(f"a command in the guest exited with status {status}: {said}")

    @classmethod
    def of(cls, exc: CommandError) -> GuestCommandError:
        lines = exc.stderr_tail.strip().splitlines()
        return cls(exc.returncode, lines[-1][:300] if lines else "")


# What a workspace script may print on stdout while it runs (it prints nothing).
_RUN_STDOUT_LIMIT = 64 << 10


def run_in_guest(target: GuestTarget, command: Sequence[str], stdin: IO[bytes] | None,
                 timeout: float) -> None:
    """Run ``command`` in the guest with ``stdin`` (a file); GuestCommandError if it fails."""
    _from_guest(target, command, stdin, _RUN_STDOUT_LIMIT, timeout)


def read_from_guest(target: GuestTarget, command: Sequence[str], limit: int,
                    timeout: float, stdin: IO[bytes] | None = None) -> bytes:
    """The stdout of ``command`` in the guest (with ``stdin``, a file), at most ``limit``
    bytes (else GuestError)."""
    return _from_guest(target, command, stdin, limit, timeout)


def _from_guest(target: GuestTarget, command: Sequence[str], stdin: IO[bytes] | None,
                limit: int, timeout: float) -> bytes:
    """``command``'s stdout: bounded in size and time, only a tail of its stderr kept."""
    try:
        return run_untrusted(target.argv(command), input=stdin, stdout_limit=limit,
                             timeout=timeout)
    except OutputTooLarge:
        raise GuestError(f"the guest sent more than {approx_size(limit)} on a command's output",
                         hint="a guest answer this large is refused; see the VM") from None
    except CommandError as exc:
        raise GuestCommandError.of(exc) from None


def _as_bytes(data: object) -> bytes:
    if data is None:
        return b""
    return data if isinstance(data, bytes) else str(data).encode()
