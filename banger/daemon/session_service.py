"""Sessions: long-lived guest processes with a name, kept by the guest itself.

The guest is the truth (``core/session_scripts.py``): the daemon keeps no rows,
so after a restart or a SIGKILL ``list``/``show`` are rebuilt from the guest's
answer (parsed as hostile, ``core/sessions.py``). Every call is one fixed script
over the VM's shared SSH connection, its values only as ``$1..``.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import structlog

from banger.api.models import (
    SessionList,
    SessionOutput,
    SessionSent,
    SessionStartRequest,
)
from banger.core import session_scripts as scripts
from banger.core.cancel import to_thread_joined
from banger.core.display import escape_text
from banger.core.errors import Conflict, GuestError, InvalidInput, NotFound
from banger.core.names import generate_vm_name
from banger.core.sessions import COMMAND_BYTES_MAX, SessionInfo, SessionMeta, parse_list, parse_read
from banger.core.states import VMState
from banger.core.validate import validate_new_name
from banger.daemon.vm_runtime import VMRuntime
from banger.host.files import remove_tree
from banger.host.ssh import GuestCommandError
from banger.store.records import VMRecord

log = structlog.get_logger("banger.daemon.sessions")

START_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0
LIST_LIMIT = 4 << 20
READ_LIMIT = 1 << 20  # output bytes per read
READ_WAIT_MAX = 30.0
STOP_GRACE = 10


class SessionService:
    def __init__(self, rt: VMRuntime, segment: int = scripts.SEGMENT_BYTES) -> None:
        self.rt = rt
        self.segment = segment
        self.top = scripts.SESSIONS_DIR

    def _running(self, ref: str) -> VMRecord:
        vm = self.rt.store.vms.get(ref)
        if vm.state is not VMState.RUNNING:
            raise Conflict(
                f"VM '{vm.name}' is {vm.state}: sessions live in the running guest",
                hint=f"start it: banger vm start {vm.name} (sessions from before show as ended)",
            )
        return vm

    async def _run(self, vm: VMRecord, name: str, argv: list[str], *,
                   stdin: Path | None = None, timeout: float = CALL_TIMEOUT,
                   asked: tuple[str, str] | None = None) -> None:
        try:
            await self.rt.guest.run(self.rt.guest_target(vm), argv, stdin=stdin, timeout=timeout)
        except GuestCommandError as exc:
            raise guest_failure(vm, name, exc, asked) from None

    async def _read(self, vm: VMRecord, name: str, argv: list[str], limit: int,
                    timeout: float = CALL_TIMEOUT) -> bytes:
        try:
            return await self.rt.guest.read(self.rt.guest_target(vm), argv, limit=limit,
                                            timeout=timeout)
        except GuestCommandError as exc:
            raise guest_failure(vm, name, exc) from None

    async def start(self, ref: str, req: SessionStartRequest) -> SessionInfo:
        """Preflight (cwd, command, tools) and start in the guest; a taken name is a Conflict."""
        vm = self._running(ref)
        name = validate_new_name(req.name, "session") if req.name else generate_vm_name(())
        cwd = req.cwd if req.cwd is not None else (
            vm.workspace.guest_path if vm.workspace else "/root")
        check_command(req.command, cwd)
        meta = SessionMeta(command=req.command, cwd=cwd, started=int(time.time())).line()
        mode = "pipe" if req.pipe else "pty"
        argv = scripts.start_argv(self.top, name, cwd, mode, meta, req.command, self.segment)
        await self._run(vm, name, argv, timeout=START_TIMEOUT, asked=(cwd, req.command[0]))
        log.info("session started", vm=vm.name, session=name, mode=mode)
        return await self.show(ref, name)

    async def list_all(self, ref: str) -> SessionList:
        vm = self._running(ref)
        out = await self._read(vm, "", scripts.script_argv(scripts.LIST, self.top, ""),
                               LIST_LIMIT)
        sessions, bad = await to_thread_joined(parse_list, vm.name, out)
        return SessionList(vm=vm.name, sessions=sessions, unparsed=bad)

    async def running_count(self, vm: VMRecord) -> int:
        """How many of ``vm``'s sessions are still running (auto-stop counts them)."""
        listed = await self.list_all(vm.id)
        return sum(1 for session in listed.sessions if session.state == "running")

    async def show(self, ref: str, name: str) -> SessionInfo:
        vm = self._running(ref)
        out = await self._read(vm, name, scripts.script_argv(scripts.LIST, self.top, name),
                               LIST_LIMIT)
        sessions, bad = parse_list(vm.name, out)
        if bad or len(sessions) != 1 or sessions[0].name != name:
            raise _not_understood(vm, name)
        return sessions[0]

    async def output(self, ref: str, name: str, since: int, limit: int,
                     wait: float) -> SessionOutput:
        """Output from ``since`` (at most ``limit`` bytes), waiting up to ``wait`` s for some."""
        vm = self._running(ref)
        limit = min(limit, READ_LIMIT)
        ticks = int(min(max(wait, 0.0), READ_WAIT_MAX) * 5)
        argv = scripts.script_argv(scripts.READ, self.top, name, str(since), str(limit),
                                   str(ticks))
        out = await self._read(vm, name, argv, LIST_LIMIT + limit,
                               timeout=CALL_TIMEOUT + ticks / 5)
        try:
            session, start, chunk = parse_read(vm.name, out, limit)
        except ValueError:
            raise _not_understood(vm, name) from None
        return SessionOutput(session=session, since=since, start=start, next=start + len(chunk),
                             data_b64=base64.b64encode(chunk).decode("ascii"))

    async def send(self, ref: str, name: str, data_b64: str) -> SessionSent:
        """Write to a pipe session's stdin (one write per MiB; banger's senders serialised)."""
        try:
            data = base64.b64decode(data_b64, validate=True)
        except ValueError:  # binascii.Error, or a str that is not ASCII
            raise InvalidInput("data_b64 is not base64") from None
        vm = self._running(ref)
        scratch = self.rt.scratch("session-send-")
        try:
            (scratch / "data").write_bytes(data)
            await self._run(vm, name, scripts.script_argv(scripts.SEND, self.top, name),
                            stdin=scratch / "data")
        finally:
            await to_thread_joined(remove_tree, scratch)
        return SessionSent(vm=vm.name, name=name, bytes=len(data))

    async def stop(self, ref: str, name: str, grace: int = STOP_GRACE) -> SessionInfo:
        """TERM to the program's process group, KILL after ``grace`` s; its exit recorded."""
        vm = self._running(ref)
        argv = scripts.script_argv(scripts.STOP, self.top, name, str(grace))
        await self._run(vm, name, argv, timeout=CALL_TIMEOUT + grace)
        log.info("session stopped", vm=vm.name, session=name)
        return await self.show(ref, name)

    async def delete(self, ref: str, name: str) -> SessionInfo:
        """Remove an ended session and its output from the guest."""
        info = await self.show(ref, name)
        await self._run(self._running(ref), name,
                        scripts.script_argv(scripts.DELETE, self.top, name))
        return info


def check_command(command: list[str], cwd: str) -> None:
    """InvalidInput unless ``command`` and ``cwd`` can travel to the guest as argv."""
    if not cwd.startswith("/") or any(not c.isprintable() for c in cwd):
        raise InvalidInput(f"--cwd {escape_text(cwd)!r} must be an absolute path without "
                           "control characters", hint="for example: --cwd /root/repo")
    if not command[0] or command[0].startswith("-"):
        raise InvalidInput(f"the command must name a program, not {escape_text(command[0])!r}",
                           hint="for example: banger vm session start VM -- sh -c 'make watch'")
    if any("\0" in arg for arg in command):
        raise InvalidInput("an argument of the command holds a NUL byte",
                           hint="a NUL cannot travel in argv")
    if sum(len(a.encode("utf-8", "surrogateescape")) + 1 for a in command) > COMMAND_BYTES_MAX:
        raise InvalidInput(f"the command is longer than {COMMAND_BYTES_MAX} bytes",
                           hint="put it in a script in the guest and run that")


def _not_understood(vm: VMRecord, name: str) -> GuestError:
    return GuestError(f"VM '{vm.name}': the guest's answer about session '{name}' was not "
                      "understood", hint=f"see the guest: banger vm ssh {vm.name}")


def guest_failure(vm: VMRecord, name: str, exc: GuestCommandError,
                  asked: tuple[str, str] | None = None) -> Exception:
    """The one-line error for a session script's exit status (``asked``: a start's cwd and
    program, named as the user gave them rather than as the guest echoed them)."""
    said = escape_text(exc.said[:200])
    cwd, program = (escape_text(a[:200]) for a in asked) if asked else (said, said)
    s, v = f"session '{name}' of VM '{vm.name}'", vm.name
    known: dict[int, Exception] = {
        scripts.NO_SESSION: NotFound(f"VM '{v}' has no session '{name}'",
                                     hint=f"see its sessions: banger vm session list {v}"),
        scripts.TAKEN: Conflict(f"VM '{v}' already has a session '{name}'",
                                hint=f"pick another --name, or remove the ended one: banger vm "
                                     f"session delete {v} {name}"),
        scripts.NO_CWD: InvalidInput(f"the directory {cwd!r} does not exist in VM '{v}'",
                                     hint=f"make it first: banger vm ssh {v} -- mkdir -p DIR"),
        scripts.NO_COMMAND: InvalidInput(
            f"the command {program!r} is not found in VM '{v}' (its PATH, from the session's cwd)",
            hint="install it in the guest, or give its full path"),
        scripts.NO_TOOL: GuestError(
            f"VM '{v}': the guest has no {said} (sessions need util-linux and coreutils)",
            hint="use an image that has them: banger image build NAME --packages util-linux"),
        scripts.ENDED: Conflict(f"{s} has ended",
                                hint=f"read its output: banger vm session logs {v} {name}"),
        scripts.NOT_PIPE: InvalidInput(
            f"{s} was not started with --pipe: send writes only to a pipe session's input",
            hint=f"type into it instead: banger vm session attach {v} {name}"),
        scripts.NOT_READ: GuestError(
            f"{s} did not read its input within 10 s (part of it may have been written)",
            hint="is the program reading its stdin? see: banger vm session logs"),
        scripts.RUNNING: Conflict(f"{s} is still running",
                                  hint=f"stop it first: banger vm session stop {v} {name}"),
    }
    return known.get(exc.status) or GuestError(
        f"VM '{v}': the session command failed ({exc.status}): {said}",
        hint=f"see the guest: banger vm ssh {v}")
