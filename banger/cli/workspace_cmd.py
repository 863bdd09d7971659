"""``banger vm workspace prepare|export`` and ``banger vm exec``: a host repository in a VM."""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import click

from banger.api.client import Client, ref_path
from banger.api.models import (
    Operation,
    VMInfo,
    WorkspaceExport,
    WorkspaceExportRequest,
    WorkspaceInfo,
    WorkspacePlanInfo,
    WorkspaceRequest,
)
from banger.cli.context import CliContext, json_option, pass_ctx
from banger.cli.progress import follow
from banger.cli.render import console, print_json, warn
from banger.cli.vm_cmd import checked_ssh_target, target_argv
from banger.core.errors import InvalidInput
from banger.core.validate import approx_size, validate_name
from banger.core.workspace import WorkspaceMode, exec_argv, validate_commit_id

MODES = [m.value for m in WorkspaceMode]


def workspace_request(path: str, mode: str, include_untracked: bool, branch: str | None = None,
                      from_ref: str | None = None) -> WorkspaceRequest:
    """The request for ``path`` as typed (made absolute here: the daemon runs at /)."""
    return WorkspaceRequest(path=os.path.abspath(path), mode=WorkspaceMode(mode),
                            include_untracked=include_untracked, branch=branch,
                            from_ref=from_ref)


def prepare(client: Client, vm: str, body: WorkspaceRequest, *, quiet: bool = False) -> VMInfo:
    """Prepare ``body`` in ``vm`` (an operation followed to its end)."""
    op = client.post_model(ref_path("VM", vm, "workspace"), Operation, body=body)
    return VMInfo.model_validate(follow(client, op, quiet=quiet).result)


def describe(info: VMInfo) -> str:
    ws = info.workspace
    if ws is None:
        return f"{info.name}: no workspace"
    at = f" at {ws.head_commit[:12]}" if ws.head_commit else ""
    on = f" on branch {ws.branch}" if ws.branch else ""
    return (f"{info.name}: {ws.guest_path} <- {ws.host_path} ({ws.mode}, {ws.files} files, "
            f"{approx_size(ws.bytes)}{on}{at})")


@click.group("workspace")
def workspace_group() -> None:
    """A host directory in a VM, and the guest's changes back as a patch.

    \b
    Examples:
      banger vm workspace prepare box .
      banger vm workspace export box > fix.patch
    """


@workspace_group.command("prepare")
@click.argument("vm")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--mode", type=click.Choice(MODES), default="git", show_default=True,
              help="git: tracked files as on disk plus .git at HEAD; full_copy: everything.")
@click.option("--include-untracked", is_flag=True,
              help="Also ship files git does not track (ignored ones never ship).")
@click.option("--branch", help="The guest works on this new branch.")
@click.option("--from", "from_ref", metavar="REF",
              help="Ship REF's committed files (default: the working tree as it is).")
@click.option("--dry-run", is_flag=True, help="List what would ship and its size; no VM needed.")
@json_option
@pass_ctx
def workspace_prepare(ctx: CliContext, vm: str, path: str, mode: str, include_untracked: bool,
                      branch: str | None, from_ref: str | None, dry_run: bool,
                      as_json: bool) -> None:
    """Copy PATH's repository into a running VM at /root/repo (replacing what was there).

    \b
    Examples:
      banger vm workspace prepare box .
      banger vm workspace prepare box ../other --branch try-1 --from main
      banger vm workspace prepare box . --dry-run
    """
    validate_name(vm, "VM")
    body = workspace_request(path, mode, include_untracked, branch, from_ref)
    client = ctx.client()
    if dry_run:
        plan = client.post_model("/workspace/plan", WorkspacePlanInfo, body=body)
        if as_json:
            print_json(plan.model_dump(mode="json"))
            return
        for entry in plan.entries:
            if entry.kind != "dir":
                click.echo(f"{entry.size:>12}  {entry.path}")
        console().print(f"{plan.files} files, {approx_size(plan.bytes)} from {plan.top} "
                        f"({plan.mode})")
        return
    info = prepare(client, vm, body)
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        console().print(describe(info))


@workspace_group.command("export")
@click.argument("vm")
@click.option("--base-commit", metavar="SHA",
              help="Diff from this commit of the guest's repository (its commits included).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write the patch here (default: standard output).")
@json_option
@pass_ctx
def workspace_export(ctx: CliContext, vm: str, base_commit: str | None, output: str | None,
                     as_json: bool) -> None:
    """Print the guest's changes since prepare as a binary patch for git apply.

    The changed files go to standard error (with --json: a JSON document on
    standard output, the patch in it unless -o is given). Standard output must
    not be a terminal: redirect it, or use -o.

    \b
    Examples:
      banger vm workspace export box > fix.patch && git apply fix.patch
      banger vm workspace export box -o fix.patch --json
    """
    validate_name(vm, "VM")
    if base_commit is not None:
        validate_commit_id(base_commit)
    if output is None and not as_json and sys.stdout.isatty():
        raise InvalidInput("the patch is not printed to a terminal (it is binary, and the guest's)",
                           hint=f"redirect it: banger vm workspace export {vm} > fix.patch, "
                                "or give -o fix.patch")
    body = WorkspaceExportRequest(base_commit=base_commit)
    result = ctx.client().post_model(ref_path("VM", vm, "workspace", "export"), WorkspaceExport,
                                     body=body)
    patch = base64.b64decode(result.patch_b64)
    if output is not None:
        Path(output).write_bytes(patch)
    if as_json:
        doc = result.model_dump(mode="json", exclude={"patch_b64"} if output else set())
        print_json(doc | {"output": output})
        return
    if output is None:
        sys.stdout.buffer.write(patch)
        sys.stdout.flush()
    err = console(stderr=True)
    for change in result.files:
        moved = f"{change.old_path} -> " if change.old_path else ""
        err.print(f"{change.status:<4} {moved}{change.path}", markup=False, highlight=False)
    if not result.files:
        err.print("no changes")


# Options are parsed strictly up to "--": a mistyped flag is a usage error, never a command.
@click.command("exec")
@click.argument("vm")
@click.option("--auto-prepare", is_flag=True,
              help="Prepare the workspace again from the host first (guest edits are replaced).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="-- CMD ...")
@pass_ctx
def vm_exec(ctx: CliContext, vm: str, auto_prepare: bool, command: tuple[str, ...]) -> None:
    """Run CMD in the VM's workspace (through mise when the guest has it); exit with its code.

    \b
    Examples:
      banger vm exec box -- pytest -x
      banger vm exec box --auto-prepare -- make test
    """
    validate_name(vm, "VM")
    client = ctx.client()
    target = checked_ssh_target(ctx, vm)  # a stopped VM is refused before anything else
    info = client.get_model(ref_path("VM", vm, "workspace"), WorkspaceInfo)
    ws = info.workspace
    if auto_prepare:
        body = WorkspaceRequest(path=str(ws.host_path), mode=ws.mode,
                                include_untracked=ws.include_untracked,
                                branch=ws.requested_branch, from_ref=ws.from_ref)
        prepare(client, vm, body, quiet=True)
    elif info.head_moved:
        warn(f"the host repository's HEAD moved since prepare ({(ws.host_head or '')[:12]} -> "
             f"{(info.host_head or '')[:12]}); sync it: banger vm exec {vm} --auto-prepare ...")
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    argv = target_argv(target, tuple(exec_argv(ws.guest_path, command)), tty=tty)
    sys.stdout.flush()
    os.execvp(argv[0], argv)
