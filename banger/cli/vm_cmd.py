"""``banger vm ...``: the commands that act on VMs (``vm list``/``ps`` are in ``vm_list.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from banger.api.client import Client, ref_path
from banger.api.models import (
    LogChunk,
    Operation,
    SSHTarget,
    VMCreateRequest,
    VMInfo,
    VMKillRequest,
    VMList,
    VMSetRequest,
)
from banger.cli.context import CliContext, json_option, pass_ctx
from banger.cli.progress import follow
from banger.cli.render import console, print_error, print_fields, print_json
from banger.core.errors import BangerError, InvalidInput, NotFound
from banger.core.publish import parse_publish_list
from banger.core.signals import VMM_SIGNALS
from banger.core.sshcmd import ssh_argv
from banger.core.validate import (
    format_size,
    parse_memory_mib,
    parse_size,
    validate_name,
    validate_new_name,
    validate_vcpu,
)


def _cold_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--cold", is_flag=True,
                        help="Boot even when a warm snapshot of this shape exists.")(func)


def _size_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--disk", help="Work disk (/root) size, e.g. 8G.")(func)
    func = click.option("--memory", "memory", help="Memory in MiB (or with a unit: 2G).")(func)
    return click.option("--vcpu", type=int, help="Number of vCPUs.")(func)


def _net_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "-p", "--publish", "publish", multiple=True, metavar="[IP:]HOST:GUEST[/udp]",
        help="Publish a guest port on the host (default address 127.0.0.1); repeatable.",
    )(func)
    return click.option("--nat", is_flag=True,
                        help="Let the guest reach the outside network (masqueraded).")(func)


def _create_body(
    name: str | None, image: str | None, vcpu: int | None, memory: str | None,
    disk: str | None, start: bool = True, nat: bool = False, publish: tuple[str, ...] = (),
) -> VMCreateRequest:
    """Validate flags before any request (nothing is created on bad input)."""
    if name is not None:
        validate_new_name(name, "VM")
    if vcpu is not None:
        validate_vcpu(vcpu)
    memory_mib = parse_memory_mib(memory) if memory is not None else None
    if disk is not None:
        parse_size(disk, "disk")
    parse_publish_list(publish)
    return VMCreateRequest(name=name, image=image, vcpu=vcpu, memory_mib=memory_mib, disk=disk,
                           start=start, nat=nat, publish=list(publish))


def _create(client: Client, body: VMCreateRequest) -> VMInfo:
    op = client.post_model("/vms", Operation, body=body)
    return VMInfo.model_validate(follow(client, op).result)


@click.command("create")
@click.option("--name", help="VM name (default: generated).")
@click.option("--image", help="Image name or id (default: the default image).")
@_size_options
@_cold_option
@_net_options
@click.option("--no-start", is_flag=True, help="Only reserve and make the disks.")
@json_option
@pass_ctx
def vm_create(ctx: CliContext, name: str | None, image: str | None, vcpu: int | None,
              memory: str | None, disk: str | None, cold: bool, nat: bool,
              publish: tuple[str, ...], no_start: bool, as_json: bool) -> None:
    """Create a VM and boot it until SSH accepts our key.

    \b
    Examples:
      banger vm create --name box --vcpu 2 --memory 2048 --disk 16G
      banger vm create --name web --nat -p 8080:80 -p 5353:53/udp
    """
    body = _create_body(name, image, vcpu, memory, disk, not no_start, nat, publish)
    body.cold = cold
    info = _create(ctx.client(), body)
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        console().print(f"VM {info.name} is {info.state}; connect: banger vm ssh {info.name}")


def _each(ctx: CliContext, refs: tuple[str, ...], begin: Callable[[Client, str], Operation],
          done: str) -> None:
    """Begin one operation per VM (they run concurrently), then report in argument order.

    Every ref is checked first: one malformed ref means nothing is started.
    """
    for ref in refs:
        validate_name(ref, "VM")
    client = ctx.client()
    started: list[Operation | BangerError] = []
    for ref in refs:
        try:
            started.append(begin(client, ref))
        except BangerError as exc:
            started.append(exc)
    failed: BangerError | None = None
    for op in started:
        try:
            if isinstance(op, BangerError):
                raise op
            info = VMInfo.model_validate(follow(client, op).result)
            console().print(f"{info.name}: {done} ({info.state})")
        except BangerError as exc:
            print_error(exc)
            failed = failed or exc
    if failed is not None:
        sys.exit(failed.exit_code)


def _verb(path: str, done: str, doc: str) -> click.Command:
    @click.argument("vms", nargs=-1, required=True)
    @pass_ctx
    def command(ctx: CliContext, vms: tuple[str, ...]) -> None:
        _each(ctx, vms, lambda c, ref: c.post_model(ref_path("VM", ref, path), Operation), done)

    command.__doc__ = doc
    return click.command(path)(command)


vm_start = _verb("start", "started", """Start stopped VMs.

    \b
    Example:
      banger vm start box other
    """)
vm_stop = _verb("stop", "stopped", """Stop VMs gracefully; files under /root survive.

    Guest sync + poweroff over SSH first, then ACPI powerdown, then SIGKILL.

    \b
    Example:
      banger vm stop box
    """)
vm_restart = _verb("restart", "restarted", """Stop, then start VMs (a new boot).

    \b
    Example:
      banger vm restart box
    """)


def _begin_delete(client: Client, ref: str) -> Operation:
    return Operation.model_validate(client.request("DELETE", ref_path("VM", ref)))


@click.command("delete")
@click.argument("vms", nargs=-1, required=True)
@pass_ctx
def vm_delete(ctx: CliContext, vms: tuple[str, ...]) -> None:
    """Delete VMs (running ones are killed) and everything they hold.

    \b
    Example:
      banger vm delete box
    """
    _each(ctx, vms, _begin_delete, "deleted")


@click.command("kill")
@click.option("--signal", "signame", default="KILL", show_default=True,
              type=click.Choice(VMM_SIGNALS, case_sensitive=False), help="Signal for the VMM.")
@click.argument("vms", nargs=-1, required=True)
@pass_ctx
def vm_kill(ctx: CliContext, signame: str, vms: tuple[str, ...]) -> None:
    """Send a signal to VMs' VMM processes (KILL leaves them stopped and cleaned up).

    \b
    Example:
      banger vm kill --signal TERM box
    """
    _each(ctx, vms, lambda c, ref: c.post_model(
        ref_path("VM", ref, "kill"), Operation, body=VMKillRequest(signal=signame.upper())),
        "signalled")


@click.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask.")
@pass_ctx
def vm_prune(ctx: CliContext, force: bool) -> None:
    """Delete every VM that is not running.

    \b
    Example:
      banger vm prune -f
    """
    client = ctx.client()
    doomed = [v.name for v in client.get_model("/vms", VMList).vms if v.state != "running"]
    if not doomed:
        console().print("nothing to prune")
        return
    if not force:
        if not sys.stdin.isatty():
            raise InvalidInput("vm prune asks before deleting", hint="pass -f to skip the question")
        click.confirm(f"Delete {len(doomed)} VMs: {', '.join(doomed)}?", abort=True)
    _each(ctx, tuple(doomed), _begin_delete, "deleted")


@click.command("set")
@click.argument("vm")
@_size_options
@click.option("--nat/--no-nat", default=None, help="Let the guest reach the outside, or not.")
@json_option
@pass_ctx
def vm_set(ctx: CliContext, vm: str, vcpu: int | None, memory: str | None, disk: str | None,
           nat: bool | None, as_json: bool) -> None:
    """Change a stopped VM's vCPUs, memory, disk (the disk only grows) or NAT.

    \b
    Example:
      banger vm set box --vcpu 2 --disk 16G --nat
    """
    checked = _create_body(None, None, vcpu, memory, disk)
    changes = VMSetRequest(vcpu=checked.vcpu, memory_mib=checked.memory_mib, disk=checked.disk,
                           nat=nat)
    answer = ctx.client().request("PATCH", ref_path("VM", vm), body=changes)
    info = VMInfo.model_validate(answer)
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        console().print(f"{info.name}: {info.vcpu} vCPU, {info.memory_mib} MiB, "
                        f"disk {format_size(info.disk_bytes)}, NAT {'on' if info.nat else 'off'}")


@click.command("show")
@click.argument("vm")
@json_option
@pass_ctx
def vm_show(ctx: CliContext, vm: str, as_json: bool) -> None:
    """Show one VM.

    \b
    Example:
      banger vm show box --json
    """
    v = ctx.client().get_model(ref_path("VM", vm), VMInfo)
    if as_json:
        print_json(v.model_dump(mode="json"))
        return
    if v.net_mode == "tap":
        network = f"tap {v.tap_name}" if v.tap_name else "tap (attached at start)"
    else:
        network = "user-mode (slirp)"
    print_fields([
        ("name", v.name), ("id", v.id), ("state", v.state), ("image", v.image_name or v.image_id),
        ("kernel", v.kernel_name), ("backend", v.backend), ("vcpu", v.vcpu),
        ("memory", f"{v.memory_mib} MiB"), ("disk", format_size(v.disk_bytes)),
        ("network", network), ("nat", "on" if v.nat else "off"), ("ip", v.guest_ip),
        ("published", ", ".join(str(p) for p in v.ports) or None),
        ("ssh", f"{v.ssh_host}:{v.ssh_port}" if v.ssh_host else None), ("pid", v.pid),
        ("created", _when(v.created_at)), ("started", _started(v)),
        ("last error", v.last_error),
        ("last change", _last_change(v)),
        ("workspace", _workspace(v)),
    ])


def _workspace(v: VMInfo) -> str | None:
    ws = v.workspace
    if ws is None:
        return None
    at = f" @ {ws.head_commit[:12]}" if ws.head_commit else ""
    branch = f" ({ws.branch})" if ws.branch else ""
    return f"{ws.guest_path} <- {ws.host_path} [{ws.mode}]{branch}{at}, {ws.files} files"


def _when(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if moment else None


def _started(v: VMInfo) -> str | None:
    """How and when the VM last started: ``snapshot <id> at ...`` or ``cold (<why>) at ...``."""
    when = _when(v.started_at)
    if v.started_from is None:
        return when
    return f"{v.started_from} at {when}" if when else v.started_from


def _last_change(v: VMInfo) -> str | None:
    """When the VM entered its state, and why."""
    when = _when(v.state_changed_at)
    if when is None:
        return v.state_reason
    return f"{when}: {v.state_reason}" if v.state_reason else when


@click.command("logs")
@click.argument("vm")
@click.option("-f", "--follow", "follow_log", is_flag=True, help="Keep printing new output.")
@pass_ctx
def vm_logs(ctx: CliContext, vm: str, follow_log: bool) -> None:
    """Print a VM's serial console log.

    \b
    Example:
      banger vm logs box -f
    """
    client = ctx.client()
    offset = 0
    while True:
        chunk = client.get_model(ref_path("VM", vm, "logs"), LogChunk, params={"offset": offset})
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        if chunk.offset == offset and not follow_log:
            return
        if chunk.offset == offset:
            time.sleep(0.5)
        offset = chunk.offset


def _inside(path: Path, base: Path) -> bool:
    return path.is_absolute() and ".." not in path.parts and path.is_relative_to(base)


def checked_ssh_target(ctx: CliContext, vm: str) -> SSHTarget:
    """The VM's SSH data from the daemon, its paths checked (a stopped VM is a Conflict)."""
    target = ctx.client().get_model(ref_path("VM", vm, "ssh"), SSHTarget)
    paths = ctx.settings.paths
    for label, path, base in (("key", target.key, paths.state_dir),
                              ("known_hosts", target.known_hosts, paths.state_dir),
                              ("control socket", target.control_path, paths.runtime_dir)):
        if path is not None and not _inside(path, base):
            raise BangerError(f"bangerd sent an SSH {label} path outside {base}: {path}",
                              hint="is that your own bangerd? see: banger daemon status")
    return target


def target_argv(target: SSHTarget, command: tuple[str, ...], tty: bool) -> list[str]:
    """The ssh argv, built here from the daemon's checked data: never an argv it sent."""
    return ssh_argv(str(target.host), target.port, target.key, target.known_hosts, target.user,
                    command=command or None, batch=not tty, tty=tty,
                    control_path=target.control_path)


# Options are parsed strictly up to "--": a mistyped flag is a usage error, never a command.
@click.command("ssh")
@click.argument("vm")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD ...]")
@pass_ctx
def vm_ssh(ctx: CliContext, vm: str, command: tuple[str, ...]) -> None:
    """Open a shell in a VM, or run one command; its exit code is banger's.

    \b
    Examples:
      banger vm ssh box
      banger vm ssh box -- sh -c 'exit 42'; echo $?
    """
    argv = target_argv(checked_ssh_target(ctx, vm), command,
                       tty=not command and sys.stdin.isatty())
    sys.stdout.flush()
    os.execvp(argv[0], argv)


class _SplitAtDashDash(click.Command):
    """``vm run [PATH] [-- CMD ...]``: everything after the first ``--`` is CMD, never PATH."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta["command"] = tuple(args[cut + 1:])
            args = args[:cut]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- CMD ...]"]


@click.command("run", cls=_SplitAtDashDash)
@click.option("--rm", "remove", is_flag=True, help="Delete the VM afterwards (also on failure).")
@click.option("--name", help="VM name (default: generated).")
@click.option("--image", help="Image name or id (default: the default image).")
@_size_options
@_cold_option
@_net_options
@click.option("--mode", type=click.Choice(["git", "full_copy"]), default="git",
              show_default=True, help="How PATH is shipped (see: banger vm workspace prepare).")
@click.option("--include-untracked", is_flag=True,
              help="Also ship files git does not track (ignored ones never ship).")
@click.argument("path", required=False, type=click.Path(file_okay=False))
@pass_ctx
def vm_run(ctx: CliContext, remove: bool, name: str | None, image: str | None, vcpu: int | None,
           memory: str | None, disk: str | None, cold: bool, nat: bool,
           publish: tuple[str, ...], mode: str, include_untracked: bool,
           path: str | None) -> None:
    """Create and boot a VM, run CMD in it, and exit with CMD's exit code.

    With PATH, its repository is the workspace at /root/repo and CMD runs
    there. Without CMD, print how to connect.

    \b
    Examples:
      banger vm run ./repo --rm -- make test
      banger vm run --rm -- uname -a
      banger vm run ./repo --name box
      banger vm run ./repo --nat --rm -- make test
    """
    from banger.cli.workspace_cmd import workspace_request
    from banger.core.workspace import exec_argv

    command: tuple[str, ...] = click.get_current_context().meta.get("command", ())
    body = _create_body(name, image, vcpu, memory, disk, nat=nat, publish=publish)
    body.cold = cold
    if path is not None:
        body.workspace = workspace_request(path, mode, include_untracked)
    client = ctx.client()
    op = client.post_model("/vms", Operation, body=body)
    code = 0
    vm_name = op.target
    try:
        info = VMInfo.model_validate(_follow_or_cancel(client, op).result)
        if command and info.workspace is not None:
            command = tuple(exec_argv(info.workspace.guest_path, command))
        if command:
            argv = target_argv(checked_ssh_target(ctx, info.name), command, tty=False)
            code = subprocess.run(argv, check=False).returncode
        else:
            console().print(f"VM {info.name} is running; connect: banger vm ssh {info.name}")
    finally:
        if remove and vm_name is not None:
            _remove_quietly(client, vm_name)
    sys.exit(code)


def _follow_or_cancel(client: Client, op: Operation) -> Operation:
    """Follow ``op``; when the user interrupts, cancel it (its undo removes what it made)."""
    try:
        return follow(client, op)
    except KeyboardInterrupt:
        client.request("POST", f"/operations/{op.id}/cancel")
        follow(client, client.operation(op.id), quiet=True)
        raise


def _remove_quietly(client: Client, name: str) -> None:
    try:
        follow(client, _begin_delete(client, name), quiet=True)
    except NotFound:
        pass  # a create that failed or was cancelled already took it away
