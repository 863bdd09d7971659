"""``/v1/vms``: reads answer at once; lifecycle verbs are operations with live stages."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

from fastapi import Query, Request

from banger.api.models import (
    LogChunk,
    Operation,
    SSHConfigRequest,
    SSHConfigResult,
    SSHTarget,
    VMCreateRequest,
    VMInfo,
    VMKillRequest,
    VMList,
    VMPorts,
    VMSetRequest,
)
from banger.core.errors import Conflict
from banger.core.states import VMState
from banger.core.validate import SIZE_MAX
from banger.daemon.operations import Work
from banger.daemon.routes import DaemonDep, Ref, api_router, request_op_id
from banger.daemon.vm_ports import guest_ports
from banger.host.files import open_nofollow

router = api_router("vms")
LOG_CHUNK = 256 * 1024


@router.get("/vms", response_model=VMList)
async def list_vms(daemon: DaemonDep) -> VMList:
    return VMList(vms=[daemon.vms.rt.info(vm) for vm in daemon.store.vms.list()])


@router.post("/vms", response_model=Operation, status_code=202)
async def create_vm(body: VMCreateRequest, daemon: DaemonDep, request: Request) -> Operation:
    plan, work = await daemon.creator.create(body)
    return daemon.operations.begin(
        "vm.create", work, target=plan.name, op_id=request_op_id(request)
    )


@router.get("/vms/{ref}", response_model=VMInfo)
async def show_vm(ref: Ref, daemon: DaemonDep) -> VMInfo:
    return daemon.vms.rt.info(daemon.store.vms.get(ref))


@router.patch("/vms/{ref}", response_model=VMInfo)
async def set_vm(ref: Ref, body: VMSetRequest, daemon: DaemonDep) -> VMInfo:
    vm = await daemon.vms.set(ref, body.vcpu, body.memory_mib, body.disk, body.nat)
    return daemon.vms.rt.info(vm)


def _begin(daemon: DaemonDep, request: Request, kind: str, ref: str, work: Work) -> Operation:
    return daemon.operations.begin(kind, work, target=ref, op_id=request_op_id(request))


@router.post("/vms/{ref}/start", response_model=Operation, status_code=202)
async def start_vm(ref: Ref, daemon: DaemonDep, request: Request) -> Operation:
    return _begin(daemon, request, "vm.start", ref, daemon.vms.start(ref))


@router.post("/vms/{ref}/stop", response_model=Operation, status_code=202)
async def stop_vm(ref: Ref, daemon: DaemonDep, request: Request) -> Operation:
    return _begin(daemon, request, "vm.stop", ref, daemon.vms.stop(ref))


@router.post("/vms/{ref}/restart", response_model=Operation, status_code=202)
async def restart_vm(ref: Ref, daemon: DaemonDep, request: Request) -> Operation:
    return _begin(daemon, request, "vm.restart", ref, daemon.vms.restart(ref))


@router.post("/vms/{ref}/kill", response_model=Operation, status_code=202)
async def kill_vm(ref: Ref, body: VMKillRequest, daemon: DaemonDep, request: Request) -> Operation:
    return _begin(daemon, request, "vm.kill", ref, daemon.vms.kill(ref, body.signal))


@router.delete("/vms/{ref}", response_model=Operation, status_code=202)
async def delete_vm(ref: Ref, daemon: DaemonDep, request: Request) -> Operation:
    return _begin(daemon, request, "vm.delete", ref, daemon.vms.delete(ref))


@router.get("/vms/{ref}/ssh", response_model=SSHTarget)
async def ssh_target(ref: Ref, daemon: DaemonDep) -> SSHTarget:
    """Where and with which files to reach the VM over SSH (data: the CLI builds the argv)."""
    vm = daemon.store.vms.get(ref)
    if vm.state is not VMState.RUNNING:
        raise Conflict(
            f"VM '{vm.name}' is {vm.state}", hint=f"start it first: banger vm start {vm.name}"
        )
    return daemon.vms.ssh_target(vm)


@router.get("/vms/{ref}/ports", response_model=VMPorts)
async def vm_ports(ref: Ref, daemon: DaemonDep) -> VMPorts:
    """The running guest's listening TCP/UDP sockets, with ``NAME.vm:PORT`` and HTTP URLs."""
    return await guest_ports(daemon.vms.rt, ref)


@router.post("/ssh-config", response_model=SSHConfigResult)
async def ssh_config(body: SSHConfigRequest, daemon: DaemonDep) -> SSHConfigResult:
    """Add (or remove) the ``Include`` that makes ``ssh NAME.vm`` work, in ``~/.ssh/config``."""
    return await asyncio.to_thread(daemon.ssh_config.apply, body.install)


@router.get("/vms/{ref}/logs", response_model=LogChunk)
async def vm_logs(
    ref: Ref, daemon: DaemonDep, offset: Annotated[int, Query(ge=0, le=SIZE_MAX)] = 0
) -> LogChunk:
    """The console log from ``offset`` (at most 256 KiB a call)."""
    path = daemon.vms.rt.files(daemon.store.vms.get(ref)).console_log
    try:
        with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as f:
            f.seek(offset)
            data = f.read(LOG_CHUNK)
    except FileNotFoundError:
        data = b""
    return LogChunk(text=data.decode("utf-8", "replace"), offset=offset + len(data))
