"""Workspaces: a host directory shipped into a running VM, and the guest's changes read back.

The host does the work it can (git staging, the tar: ``banger/workspace/``);
the guest only unpacks and swaps (prepare), or indexes and diffs (export),
through the shell in ``workspace/scripts.py`` over the VM's SSH connection.
The guest is untrusted: export returns its patch as data, nothing it sends
is run or applied here.
"""

from __future__ import annotations

import base64
import contextlib
import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import structlog

from banger.api.models import (
    ChangedFile,
    VMInfo,
    WorkspaceEntry,
    WorkspaceExport,
    WorkspaceInfo,
    WorkspacePlanInfo,
    WorkspaceRequest,
)
from banger.core.cancel import to_thread_joined
from banger.core.display import display_path
from banger.core.errors import BangerError, Conflict, GuestError, InvalidInput, NotFound
from banger.core.guest_sh import lacks_tar
from banger.core.states import VMState
from banger.core.validate import approx_size
from banger.core.workspace import WorkspaceMode, validate_commit_id
from banger.core.workspace_state import WorkspaceState
from banger.daemon.operations import OperationContext, Work
from banger.daemon.vm_runtime import VMRuntime
from banger.host import git
from banger.host.files import remove_tree
from banger.host.ssh import GuestCommandError
from banger.store.records import VMRecord
from banger.workspace import scripts
from banger.workspace.disk import Written, base_dir_of, write_workspace
from banger.workspace.export import split_export
from banger.workspace.payload import write_payload
from banger.workspace.stage import Plan, Staged, check_unchanged, make_plan, stage

log = structlog.get_logger("banger.daemon.workspace")

PAYLOAD = "payload.tar"
PREPARE_TIMEOUT = 1800.0
EXPORT_TIMEOUT = 600.0
EXPORT_LIMIT = 256 << 20  # the patch is held in memory (and base64) on its way out


def require_running(vm: VMRecord, verb: str) -> None:
    if vm.state is not VMState.RUNNING:
        raise Conflict(f"cannot {verb} VM '{vm.name}': it is {vm.state}",
                       hint=f"start it first: banger vm start {vm.name}")


def require_workspace(vm: VMRecord) -> WorkspaceState:
    if vm.workspace is None:
        raise NotFound(f"VM '{vm.name}' has no workspace",
                       hint=f"prepare one: banger vm workspace prepare {vm.name} PATH")
    return vm.workspace


class WorkspaceService:
    def __init__(self, rt: VMRuntime) -> None:
        self.rt = rt

    async def plan(self, req: WorkspaceRequest) -> Plan:
        """Check the request against the host's directory; nothing is written."""
        return await to_thread_joined(functools.partial(
            make_plan, Path(req.path), req.mode, include_untracked=req.include_untracked,
            branch=req.branch, from_ref=req.from_ref,
        ))  # fmt: skip

    async def dry_run(self, req: WorkspaceRequest) -> WorkspacePlanInfo:
        """What a prepare of ``req`` would ship (no VM needed)."""
        plan = await self.plan(req)
        scratch = self.rt.scratch("workspace-")
        try:
            staged = await to_thread_joined(functools.partial(stage, plan, scratch, pack=False))
            entries = await to_thread_joined(_listing, staged)
        finally:
            await to_thread_joined(remove_tree, scratch)
        files = [e for e in entries if e.kind != "dir"]
        return WorkspacePlanInfo(
            top=plan.top, mode=plan.mode, head_commit=plan.head, branch=plan.branch,
            entries=entries, files=len(files), bytes=sum(e.size for e in files),
        )  # fmt: skip

    def prepare(self, ref: str, plan: Plan) -> Work:
        """The ``vm.workspace.prepare`` operation for a checked ``plan``."""
        self.rt.store.vms.get(ref)

        async def work(ctx: OperationContext) -> VMInfo:
            async with self.rt.locked(ref) as vm:
                require_running(vm, "prepare a workspace in")
                return self.rt.info(await self.prepare_vm(ctx, vm, plan))

        return work

    async def prepare_vm(self, ctx: OperationContext, vm: VMRecord, plan: Plan) -> VMRecord:
        """Stages ``stage`` (host) and ``copy`` (into the running guest), then record it."""
        async with self.staged(ctx, plan) as (staged, scratch):
            written = await self.copy_over_ssh(ctx, vm, staged, scratch)
        return self.record(vm, staged, written)

    @contextlib.asynccontextmanager
    async def staged(self, ctx: OperationContext,
                     plan: Plan) -> AsyncIterator[tuple[Staged, Path]]:
        """``plan`` staged in a scratch dir (the ``stage`` stage), removed afterwards."""
        scratch = self.rt.scratch("workspace-")
        try:
            with ctx.stage("stage", detail=str(plan.top)):
                staged = await to_thread_joined(stage, plan, scratch)
            yield staged, scratch
        finally:
            await to_thread_joined(remove_tree, scratch)

    async def write_before_boot(self, ctx: OperationContext, vm: VMRecord,
                                staged: Staged) -> Written | None:
        """Write the workspace into ``vm``'s unused work disk; None when it must go over SSH."""
        guest_path = self.rt.settings.workspace_guest_path
        with ctx.stage("workspace", detail=f"-> {guest_path} on the work disk"):
            written = await to_thread_joined(write_workspace, self.rt.files(vm).work, staged,
                                             guest_path)
            if written is not None:
                await to_thread_joined(check_unchanged, staged)
            return written

    async def copy_over_ssh(self, ctx: OperationContext, vm: VMRecord, staged: Staged,
                            scratch: Path) -> Written:
        """One tar of ``staged`` unpacked and swapped into place by the running guest."""
        with ctx.stage("pack", detail="one tar of the tree and its .git"):
            summary = await to_thread_joined(write_payload, staged, scratch / PAYLOAD)
            await to_thread_joined(check_unchanged, staged)
        guest_path = self.rt.settings.workspace_guest_path
        detail = f"{summary.files} files, {approx_size(summary.bytes)} -> {guest_path}"
        argv = scripts.script_argv(scripts.PREPARE, guest_path, str(summary.archive_bytes),
                                   base_dir_of(guest_path), str(summary.entries))
        with ctx.stage("copy", detail=detail):
            try:
                await self.rt.guest.run(self.rt.guest_target(vm), argv, stdin=scratch / PAYLOAD,
                                        timeout=PREPARE_TIMEOUT)
            except GuestCommandError as exc:
                raise _guest_failure(vm, exc) from None
        return Written(files=summary.files, bytes=summary.bytes)

    def record(self, vm: VMRecord, staged: Staged, written: Written) -> VMRecord:
        """Keep what was prepared with the VM (export and exec read it back)."""
        plan = staged.plan
        state = WorkspaceState(
            host_path=plan.top, guest_path=self.rt.settings.workspace_guest_path,
            mode=plan.mode, head_commit=plan.head, host_head=plan.host_head, branch=plan.branch,
            requested_branch=plan.requested_branch, from_ref=plan.from_ref,
            prepared_tree=staged.tree, include_untracked=plan.include_untracked,
            files=written.files, bytes=written.bytes, prepared_at=datetime.now(UTC),
        )  # fmt: skip
        log.info("workspace prepared", vm=vm.name, files=written.files, bytes=written.bytes)
        return self.rt.store.vms.update(vm.id, workspace=state)

    async def export(self, ref: str, base_commit: str | None) -> WorkspaceExport:
        """The guest's changes since prepare (or since ``base_commit``) as a binary patch."""
        async with self.rt.locked(ref) as vm:
            require_running(vm, "export the workspace of")
            ws = require_workspace(vm)
            if base_commit is not None:
                validate_commit_id(base_commit)
                if ws.mode is WorkspaceMode.FULL_COPY:
                    raise InvalidInput("--base-commit needs a workspace prepared in git mode",
                                       hint="export without it: the patch covers every change")
            argv = scripts.script_argv(scripts.EXPORT, ws.guest_path, ws.mode.value,
                                       ws.prepared_tree, base_commit or "",
                                       base_dir_of(ws.guest_path))
            try:
                out = await self.rt.guest.read(self.rt.guest_target(vm), argv,
                                               limit=EXPORT_LIMIT, timeout=EXPORT_TIMEOUT)
            except GuestCommandError as exc:
                raise _guest_failure(vm, exc) from None
        return await to_thread_joined(_export_result, vm.name, base_commit or ws.prepared_tree,
                                      out)

    async def info(self, ref: str) -> WorkspaceInfo:
        """The VM's workspace, and whether the host repository's HEAD moved since prepare."""
        vm = self.rt.store.vms.get(ref)
        ws = require_workspace(vm)
        now = None
        if ws.mode is WorkspaceMode.GIT:
            now = await to_thread_joined(_host_head, ws.host_path)
        moved = now is not None and ws.host_head is not None and now != ws.host_head
        return WorkspaceInfo(vm=vm.name, workspace=ws, host_head=now, head_moved=moved)


def _export_result(vm: str, base: str, out: bytes) -> WorkspaceExport:
    """The guest's export output as the answer (off the event loop: up to 100k names, 256 MiB)."""
    changes, start = split_export(out)
    files = [ChangedFile(status=c.status, path=display_path(c.path),
                         old_path=display_path(c.old_path) if c.old_path else None)
             for c in changes]  # fmt: skip
    patch_b64 = base64.b64encode(memoryview(out)[start:]).decode("ascii")  # no copy of the patch
    return WorkspaceExport(vm=vm, base=base, files=files, patch_b64=patch_b64)


def _listing(staged: Staged) -> list[WorkspaceEntry]:
    out = []
    for entry in staged.entries:
        size = 0
        if entry.kind in ("file", "exec"):
            size = (staged.source / Path(entry.path.decode("utf-8", "surrogateescape"))).lstat(
            ).st_size
        out.append(WorkspaceEntry(path=display_path(entry.path), kind=entry.kind, size=size))
    return out


def _host_head(path: Path) -> str | None:
    try:
        return git.head_commit(path)
    except BangerError:  # a moved or deleted repository: no answer, no warning
        return None


def _guest_failure(vm: VMRecord, exc: GuestCommandError) -> Exception:
    """The one-line error for a workspace script's exit status."""
    detail = exc.said[:200]
    code = exc.status
    image_hint = "build an image that has it: banger image build NAME --packages tar,git"
    if code == scripts.NO_TAR:
        return lacks_tar(vm.name, "tar,git")
    if code == scripts.NO_GIT:
        return GuestError(f"VM '{vm.name}': the guest has no git", hint=image_hint)
    if code == scripts.NO_ROOM:
        need, _, avail = detail.partition(" ")
        return InvalidInput(
            f"the workspace needs {_size(need)} but the work disk of VM '{vm.name}' has "
            f"{_size(avail)} free",
            hint=f"grow it: banger vm stop {vm.name} && banger vm set {vm.name} --disk SIZE",
        )
    if code == scripts.NO_INODES:
        need, _, avail = detail.partition(" ")
        return InvalidInput(
            f"the workspace needs {_count(need)} inodes (files, links and directories) but the "
            f"work disk of VM '{vm.name}' has {_count(avail)} free",
            hint=f"grow it (a larger disk has more inodes): banger vm stop {vm.name} && "
                 f"banger vm set {vm.name} --disk SIZE",
        )
    if code in (scripts.NO_WORKSPACE, scripts.NO_REPOSITORY):
        return NotFound(f"VM '{vm.name}': the workspace is gone from the guest ({detail})",
                        hint=f"prepare it again: banger vm workspace prepare {vm.name} PATH")
    if code == scripts.NO_COMMIT:
        return NotFound(f"--base-commit {detail!r} is not a commit in the guest's repository",
                        hint="see the guest's history: banger vm exec VM -- git log")
    if code == scripts.NO_BASE:
        return NotFound(f"VM '{vm.name}': the prepared tree is missing from the guest's .git",
                        hint=f"prepare it again: banger vm workspace prepare {vm.name} PATH")
    return GuestError(f"VM '{vm.name}': the workspace command failed ({code}): {detail}",
                      hint=f"see the guest: banger vm ssh {vm.name}")


def _size(text: str) -> str:
    return approx_size(int(text)) if text.isascii() and text.isdigit() else "?"


def _count(text: str) -> str:
    return text if text.isascii() and text.isdigit() else "?"
