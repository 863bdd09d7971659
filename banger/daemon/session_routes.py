"""``/v1/vms/{ref}/sessions``: long-lived guest processes, answered from the guest itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from banger.api.models import (
    SessionList,
    SessionOutput,
    SessionSendRequest,
    SessionSent,
    SessionStartRequest,
)
from banger.core.sessions import SessionInfo
from banger.core.validate import SIZE_MAX
from banger.daemon.routes import DaemonDep, Ref, api_router
from banger.daemon.session_service import READ_LIMIT, READ_WAIT_MAX, STOP_GRACE

router = api_router("sessions")
Session = Ref  # session names follow the VM-name grammar


@router.get("/vms/{ref}/sessions", response_model=SessionList)
async def list_sessions(ref: Ref, daemon: DaemonDep) -> SessionList:
    return await daemon.sessions.list_all(ref)


@router.post("/vms/{ref}/sessions", response_model=SessionInfo, status_code=201)
async def start_session(ref: Ref, body: SessionStartRequest, daemon: DaemonDep) -> SessionInfo:
    """Start a command as a session (preflight: cwd, command, tools); a taken name is 409."""
    return await daemon.sessions.start(ref, body)


@router.get("/vms/{ref}/sessions/{name}", response_model=SessionInfo)
async def show_session(ref: Ref, name: Session, daemon: DaemonDep) -> SessionInfo:
    return await daemon.sessions.show(ref, name)


@router.get("/vms/{ref}/sessions/{name}/output", response_model=SessionOutput)
async def session_output(
    ref: Ref, name: Session, daemon: DaemonDep,
    since: Annotated[int, Query(ge=0, le=SIZE_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=READ_LIMIT)] = READ_LIMIT,
    wait: Annotated[float, Query(ge=0, le=READ_WAIT_MAX)] = 0,
) -> SessionOutput:
    """Output from byte offset ``since``; ``wait`` s for some when there is none yet."""
    return await daemon.sessions.output(ref, name, since, limit, wait)


@router.post("/vms/{ref}/sessions/{name}/send", response_model=SessionSent)
async def send_session(ref: Ref, name: Session, body: SessionSendRequest,
                       daemon: DaemonDep) -> SessionSent:
    """Write to a pipe session's stdin."""
    return await daemon.sessions.send(ref, name, body.data_b64)


@router.post("/vms/{ref}/sessions/{name}/stop", response_model=SessionInfo)
async def stop_session(
    ref: Ref, name: Session, daemon: DaemonDep,
    grace: Annotated[int, Query(ge=0, le=300)] = STOP_GRACE,
) -> SessionInfo:
    return await daemon.sessions.stop(ref, name, grace)


@router.delete("/vms/{ref}/sessions/{name}", response_model=SessionInfo)
async def delete_session(ref: Ref, name: Session, daemon: DaemonDep) -> SessionInfo:
    """Remove an ended session and its output from the guest."""
    return await daemon.sessions.delete(ref, name)
