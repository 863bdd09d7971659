"""``banger vm session ...``: long-lived guest processes that outlive the CLI and the daemon.

Reads (``logs``, ``attach --follow``, a pipe session's ``attach``) go through the
daemon, from a byte offset; an interactive attach runs the system ``ssh -t`` with
the fixed attach script (``core/session_scripts.py``), its argv built here from
the daemon's checked data. Output is written as the program wrote it; names,
commands and paths from the guest are escaped.
"""

from __future__ import annotations

import base64
import http.client
import os
import shlex
import subprocess
import sys
from datetime import datetime

import click

from banger.api.client import Client, ref_path
from banger.api.models import SessionList, SessionOutput, SessionSendRequest, SessionSent
from banger.api.models import SessionStartRequest as StartRequest
from banger.cli.context import CliContext, json_option, pass_ctx, quiet_option
from banger.cli.render import console, print_fields, print_json, print_table, warn
from banger.core import session_scripts as scripts
from banger.core.display import escape_text
from banger.core.errors import BangerError, Conflict, GuestError, InvalidInput, Unavailable
from banger.core.sessions import SEND_BYTES_MAX, SessionInfo
from banger.core.validate import validate_name, validate_new_name

ATTACH_CONTEXT = 8 << 10  # an interactive attach replays this much recent output by default
FOLLOW_WAIT = 10.0


def _path(vm: str, name: str | None = None, *rest: str) -> str:
    if name is None:
        return ref_path("VM", vm, "sessions")
    return ref_path("VM", vm, "sessions", validate_name(name, "session"), *rest)


def _show(client: Client, vm: str, name: str) -> SessionInfo:
    return client.get_model(_path(vm, name), SessionInfo)


def _state(s: SessionInfo) -> str:
    if s.state == "running":
        return "running"
    if s.reason == "vm-stopped":
        return "ended: VM stopped"
    if s.reason == "lost":
        return "ended: lost (its supervisor was killed)"
    how = "stopped" if s.reason == "stopped" else "exited"
    return f"{how} with code {s.exit_code}"


def _command(s: SessionInfo) -> str:
    return escape_text(shlex.join(s.command))


def _when(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if moment else None


@click.group("session")
def session_group() -> None:
    """Long-lived processes in a VM: start, feed, read and attach to them.

    \b
    Examples:
      banger vm session start box --name agent --pipe -- sh -c 'while read l; do echo "$l"; done'
      banger vm session send box agent --data '{"type":"prompt"}'
      banger vm session logs box agent --since 0
      banger vm session attach box shell      (Ctrl-] detaches; the process runs on)
    """


@session_group.command("start")
@click.argument("vm")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="-- CMD ...")
@click.option("--name", help="Session name (default: generated).")
@click.option("--cwd", help="Directory to run in (default: the workspace, else /root).")
@click.option("--pipe", is_flag=True, help="stdin is a FIFO fed by `session send` (no terminal).")
@json_option
@pass_ctx
def session_start(ctx: CliContext, vm: str, command: tuple[str, ...], name: str | None,
                  cwd: str | None, pipe: bool, as_json: bool) -> None:
    """Start CMD in a VM as a named session that outlives this command.

    Without --pipe it runs on a terminal (attach to type into it); with --pipe
    its stdin is fed by `send` and its output is read with `logs`/`attach`.

    \b
    Examples:
      banger vm session start box --name shell -- bash
      banger vm session start box --name agent --cwd /root/repo --pipe -- pi --mode rpc
    """
    validate_name(vm, "VM")
    if name is not None:
        validate_new_name(name, "session")
    body = StartRequest(name=name, cwd=cwd, pipe=pipe, command=list(command))
    info = ctx.client().post_model(_path(vm), SessionInfo, body=body)
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    how = "send: banger vm session send" if pipe else "attach: banger vm session attach"
    console().print(f"session {info.name} started in VM {vm}; {how} {vm} {info.name}",
                    markup=False, highlight=False)


@session_group.command("list")
@click.argument("vm")
@json_option
@quiet_option
@pass_ctx
def session_list(ctx: CliContext, vm: str, as_json: bool, quiet: bool) -> None:
    """List a VM's sessions (read from the guest: they survive daemon restarts).

    \b
    Example:
      banger vm session list box
    """
    answer = ctx.client().get_model(_path(vm), SessionList)
    if as_json:
        print_json(answer.model_dump(mode="json"))
    elif quiet:
        for s in answer.sessions:
            click.echo(s.name)
    else:
        print_table(["NAME", "MODE", "STATE", "STARTED", "OUTPUT", "COMMAND"],
                    [[s.name, s.mode, _state(s), _when(s.started_at), s.output_end, _command(s)]
                     for s in answer.sessions])
    if answer.unparsed:
        warn(f"{answer.unparsed} session records from the guest were not understood")


@session_group.command("show")
@click.argument("vm")
@click.argument("name")
@json_option
@pass_ctx
def session_show(ctx: CliContext, vm: str, name: str, as_json: bool) -> None:
    """Show one session: state, exit code, output offsets, who is attached.

    \b
    Example:
      banger vm session show box agent
    """
    s = _show(ctx.client(), vm, name)
    if as_json:
        print_json(s.model_dump(mode="json"))
        return
    print_fields([
        ("name", s.name), ("vm", s.vm), ("mode", s.mode), ("state", _state(s)),
        ("command", _command(s)), ("cwd", escape_text(s.cwd)), ("pid", s.pid),
        ("started", _when(s.started_at)), ("ended", _when(s.ended_at)),
        ("output", f"offsets {s.output_start}..{s.output_end}"),
        ("log", "truncated: the guest's disk was full, some output was lost"
         if s.log_truncated else None),
        ("attached", s.attached),
    ])


@session_group.command("send")
@click.argument("vm")
@click.argument("name")
@click.option("--data", default="-", show_default=True,
              help="TEXT (a newline is added), or - for stdin as it is.")
@click.option("-n", "--no-newline", is_flag=True, help="Send TEXT without the newline.")
@pass_ctx
def session_send(ctx: CliContext, vm: str, name: str, data: str, no_newline: bool) -> None:
    """Write to a pipe session's stdin (writes up to 4 KiB are atomic).

    \b
    Examples:
      banger vm session send box agent --data '{"type":"prompt","message":"hi"}'
      printf '%s\\n' "$line" | banger vm session send box agent --data -
    """
    if data == "-":
        payload = sys.stdin.buffer.read(SEND_BYTES_MAX + 1)
    else:
        payload = data.encode("utf-8", "surrogateescape") + (b"" if no_newline else b"\n")
    if len(payload) > SEND_BYTES_MAX:
        raise InvalidInput(f"send takes at most {SEND_BYTES_MAX} bytes at once",
                           hint="split the data into several sends")
    body = SessionSendRequest(data_b64=base64.b64encode(payload).decode("ascii"))
    ctx.client().post_model(_path(vm, name, "send"), SessionSent, body=body)


@session_group.command("stop")
@click.argument("vm")
@click.argument("name")
@click.option("--grace", type=click.IntRange(0, 300), default=10, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
@pass_ctx
def session_stop(ctx: CliContext, vm: str, name: str, grace: int) -> None:
    """Stop a session: SIGTERM to its process group, SIGKILL after --grace seconds.

    \b
    Example:
      banger vm session stop box agent
    """
    s = ctx.client().post_model(_path(vm, name, "stop"), SessionInfo, params={"grace": grace})
    console().print(f"{s.name}: {_state(s)}", markup=False, highlight=False)


@session_group.command("delete")
@click.argument("vm")
@click.argument("name")
@pass_ctx
def session_delete(ctx: CliContext, vm: str, name: str) -> None:
    """Remove an ended session and its output from the guest (frees its name).

    \b
    Example:
      banger vm session delete box agent
    """
    s = SessionInfo.model_validate(ctx.client().request("DELETE", _path(vm, name)))
    console().print(f"{s.name}: deleted", markup=False, highlight=False)


def _read_on(client: Client, vm: str, name: str, since: int, follow: bool) -> SessionInfo:
    """Write the output from ``since`` to stdout; return the session as last seen.

    Ends at the end of the output, or (``follow``) once the session has ended and
    its output is all out. Prints the offset reached on stderr, however it ends.
    """
    offset = since
    try:
        while True:
            chunk = client.get_model(_path(vm, name, "output"), SessionOutput, params={
                "since": offset, "wait": FOLLOW_WAIT if follow else 0})
            if chunk.start > offset:
                _say(f"output {offset}..{chunk.start} was rotated away before it was read")
            data = base64.b64decode(chunk.data_b64)
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            offset = chunk.next
            if not data and (chunk.session.state == "ended" or not follow):
                _say(f"offset: {offset}")
                return chunk.session
    except KeyboardInterrupt:
        _say(f"offset: {offset}")
        sys.exit(0)
    except (Unavailable, OSError, http.client.HTTPException) as exc:
        raise Unavailable(
            f"lost the connection to bangerd at offset {offset} ({exc}); the session runs on",
            hint=f"read on: banger vm session attach {vm} {name} --follow --since {offset}",
        ) from None
    except BangerError:
        _say(f"offset: {offset}")
        raise


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _ended(s: SessionInfo) -> None:
    """Say how the session ended, and exit with its code (1 when it has none)."""
    _say(f"session {s.name} {_state(s)}")
    sys.exit(s.exit_code if s.exit_code is not None else 1)


@session_group.command("logs")
@click.argument("vm")
@click.argument("name")
@click.option("--since", type=click.IntRange(min=0), default=0, show_default=True,
              help="Byte offset into the output to start from.")
@click.option("-f", "--follow", "follow_log", is_flag=True, help="Keep printing until it ends.")
@pass_ctx
def session_logs(ctx: CliContext, vm: str, name: str, since: int, follow_log: bool) -> None:
    """Print a session's output from --since; the offset reached goes to stderr.

    \b
    Examples:
      banger vm session logs box agent --since 0
      banger vm session logs box agent -f --since 1234
    """
    _read_on(ctx.client(), vm, name, since, follow_log)


@session_group.command("attach")
@click.argument("vm")
@click.argument("name")
@click.option("--since", type=click.IntRange(min=0), default=None,
              help="Byte offset to start from (default: the last 8 KiB).")
@click.option("--follow", "read_only", is_flag=True,
              help="Only read the output, until the session ends (any number at once).")
@pass_ctx
def session_attach(ctx: CliContext, vm: str, name: str, since: int | None,
                   read_only: bool) -> None:
    """Live output of a session; a terminal session takes your keys (Ctrl-] detaches).

    A pipe session, or --follow, only reads (any number of readers); a terminal
    session has one interactive attach at a time. When the session has ended,
    the rest of its output is printed and its exit code is banger's.

    \b
    Examples:
      banger vm session attach box shell
      banger vm session attach box agent --follow --since 0
    """
    client = ctx.client()
    s = _show(client, vm, name)
    if since is None:
        since = max(s.output_start, s.output_end - ATTACH_CONTEXT)
    interactive = s.mode == "pty" and s.state == "running" and not read_only
    if interactive and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InvalidInput("an interactive attach needs a terminal",
                           hint=f"read its output instead: banger vm session attach {vm} "
                                f"{name} --follow")
    if interactive and _interactive(ctx, vm, name, since):
        s = _show(client, vm, name)
        _say(f"\noffset: {s.output_end}")  # the program's cursor may be mid-line
        if s.state == "ended":
            _ended(s)
        return
    s = _read_on(client, vm, name, since, follow=True)
    _ended(s)


def _interactive(ctx: CliContext, vm: str, name: str, since: int) -> bool:
    """Attach through ``ssh -t``; False when the session ended first (read it instead)."""
    from banger.cli.vm_cmd import checked_ssh_target, target_argv

    label = f"banger pid {os.getpid()} on {os.ttyname(0)}"
    command = scripts.script_argv(scripts.ATTACH, scripts.SESSIONS_DIR, name, str(since), label)
    argv = target_argv(checked_ssh_target(ctx, vm), tuple(command), tty=True)
    code = subprocess.run(argv, check=False).returncode
    if code in (scripts.ENDED, scripts.NOT_PIPE):
        return False
    if code == scripts.ATTACHED:
        holder = _show(ctx.client(), vm, name).attached or "another attach"
        raise Conflict(f"session '{name}' of VM '{vm}' is attached already: {holder}",
                       hint=f"detach that one (Ctrl-]), or read along: banger vm session attach "
                            f"{vm} {name} --follow")
    if code == scripts.NO_SESSION:
        raise GuestError(f"VM '{vm}' has no session '{name}' any more")
    if code != 0:
        raise GuestError(f"the attach to session '{name}' ended with status {code}",
                         hint=f"is the VM up? banger vm show {vm}")
    return True
