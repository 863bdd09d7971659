"""The ASGI app: routes only; the work lives in services."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from banger.api.client import OP_ID_HEADER, VERSION_HEADER, version_tag
from banger.api.errors import error_body
from banger.api.models import (
    DoctorCheck,
    DoctorReport,
    Operation,
    OperationList,
    Ping,
)
from banger.core.errors import BangerError, Forbidden, InvalidInput
from banger.daemon import (
    artifact_routes,
    doctor,
    session_routes,
    stats_routes,
    vm_routes,
    workspace_routes,
)
from banger.daemon.operations import new_op_id, unexpected_error
from banger.daemon.peercred import peer_uid
from banger.daemon.routes import DaemonDep, api_router
from banger.daemon.state import Daemon
from banger.daemon.vm_idle import named_vm
from banger.version import API_VERSION, version_info

log = structlog.get_logger("banger.daemon.app")

router = api_router("daemon")


@router.get("/ping", response_model=Ping)
async def ping(daemon: DaemonDep) -> Ping:
    info = version_info()
    paths = daemon.settings.paths
    return Ping(
        version=info.version,
        commit=info.commit,
        build_time=info.build_time,
        api_version=API_VERSION,
        pid=os.getpid(),
        uptime_seconds=round(time.monotonic() - daemon.started_at, 3),
        socket=str(paths.socket),
        log_file=str(paths.log_file),
    )


@router.get("/doctor", response_model=DoctorReport)
async def run_doctor(daemon: DaemonDep) -> DoctorReport:
    dns = daemon.dns.status()  # on the loop: the service's state, then the checks in a thread
    nat = daemon.vms.rt.network.nat.status()
    results = await asyncio.to_thread(doctor.run_checks, daemon.settings, None, dns, nat)
    return DoctorReport(
        checks=[
            DoctorCheck(name=r.name, status=r.status, detail=r.detail, hint=r.hint)
            for r in results
        ]
    )


@router.get("/operations", response_model=OperationList)
async def list_operations(daemon: DaemonDep) -> OperationList:
    return OperationList(operations=daemon.operations.list())


@router.get("/operations/{op_id}", response_model=Operation)
async def get_operation(
    op_id: str,
    daemon: DaemonDep,
    wait: Annotated[float, Query(ge=0, le=60)] = 0,
    revision: Annotated[int, Query(ge=-1)] = -1,
) -> Operation:
    """The operation; with ``wait``, answer as soon as its revision passes ``revision``."""
    if wait:
        return await daemon.operations.wait(op_id, after_revision=revision, timeout=wait)
    return daemon.operations.get(op_id)


@router.post("/operations/{op_id}/cancel", response_model=Operation)
async def cancel_operation(op_id: str, daemon: DaemonDep) -> Operation:
    return daemon.operations.cancel(op_id)


@router.post("/shutdown", status_code=202)
async def shutdown(daemon: DaemonDep) -> Response:
    log.info("shutdown requested")
    daemon.request_shutdown()
    return Response(status_code=202)


def _error_response(exc: BangerError, op_id: str | None) -> JSONResponse:
    return JSONResponse(
        status_code=exc.http_status,
        content=error_body(exc, op_id).model_dump(),
        headers={OP_ID_HEADER: op_id or "", VERSION_HEADER: version_tag()},
    )


async def _banger_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BangerError)
    op_id = getattr(request.state, "op_id", None)
    log.warning("request failed", code=exc.code, error=exc.message)
    return _error_response(exc, op_id)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = tuple(first["loc"])
    if loc[:1] == ("path",):
        error = InvalidInput(
            f"invalid name {first.get('input')!r}",
            hint="names are 1-63 lowercase letters, digits and '-'",
        )
    else:
        error = InvalidInput(f"{'.'.join(str(p) for p in loc)}: {first['msg']}")
    return await _banger_error(request, error)


async def _request_context(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Give every request an op_id, refuse foreign uids, turn any exception into JSON."""
    op_id = new_op_id()
    request.state.op_id = op_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(op_id=op_id)
    daemon: Daemon = request.app.state.daemon
    uid = peer_uid(request.scope)
    if uid is not None and uid not in daemon.allowed_uids:
        log.warning("refused peer", peer_uid=uid, path=request.url.path)
        return _error_response(
            Forbidden(
                f"uid {uid} may not use this daemon",
                hint="run banger as the daemon's owner (or root)",
            ),
            op_id,
        )
    started = time.monotonic()
    used = named_vm(request.url.path)
    if used is not None:
        daemon.idle.touch(used)  # before the request: a `vm ssh` is use from its start
    try:
        response = await call_next(request)
    except Exception as exc:  # errors are total: a bug still answers JSON with its op_id
        log.exception("request crashed", method=request.method, path=request.url.path)
        error = unexpected_error(exc, daemon.settings.paths.log_file)
        response = _error_response(error, op_id)
    response.headers[OP_ID_HEADER] = op_id
    response.headers[VERSION_HEADER] = version_tag()
    log.info(
        "request",
        method=request.method,
        path=request.url.path,
        status=response.status_code,
        ms=round((time.monotonic() - started) * 1000, 1),
    )
    return response


def create_app(daemon: Daemon) -> FastAPI:
    app = FastAPI(
        title="bangerd",
        version=version_info().version,
        description="banger's daemon API (served on a Unix socket).",
    )
    app.state.daemon = daemon
    app.include_router(router)
    app.include_router(artifact_routes.router)
    app.include_router(vm_routes.router)
    app.include_router(stats_routes.router)
    app.include_router(workspace_routes.router)
    app.include_router(session_routes.router)
    app.add_exception_handler(BangerError, _banger_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.middleware("http")(_request_context)
    return app
