"""``/v1/workspace/plan`` and ``/v1/vms/{ref}/workspace``: prepare, dry run, export, status."""

from __future__ import annotations

from fastapi import Request

from banger.api.models import (
    Operation,
    WorkspaceExport,
    WorkspaceExportRequest,
    WorkspaceInfo,
    WorkspacePlanInfo,
    WorkspaceRequest,
)
from banger.daemon.routes import DaemonDep, Ref, api_router, request_op_id

router = api_router("workspaces")


@router.post("/workspace/plan", response_model=WorkspacePlanInfo)
async def plan_workspace(body: WorkspaceRequest, daemon: DaemonDep) -> WorkspacePlanInfo:
    """What a prepare would ship, and its size (``--dry-run``: no VM involved)."""
    return await daemon.workspaces.dry_run(body)


@router.post("/vms/{ref}/workspace", response_model=Operation, status_code=202)
async def prepare_workspace(ref: Ref, body: WorkspaceRequest, daemon: DaemonDep,
                            request: Request) -> Operation:
    plan = await daemon.workspaces.plan(body)
    work = daemon.workspaces.prepare(ref, plan)
    return daemon.operations.begin("vm.workspace.prepare", work, target=ref,
                                   op_id=request_op_id(request))


@router.get("/vms/{ref}/workspace", response_model=WorkspaceInfo)
async def workspace_info(ref: Ref, daemon: DaemonDep) -> WorkspaceInfo:
    return await daemon.workspaces.info(ref)


@router.post("/vms/{ref}/workspace/export", response_model=WorkspaceExport)
async def export_workspace(ref: Ref, body: WorkspaceExportRequest,
                           daemon: DaemonDep) -> WorkspaceExport:
    return await daemon.workspaces.export(ref, body.base_commit)
