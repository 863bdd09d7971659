"""Shared pieces of the route modules: the router factory and the daemon dependency."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from banger.api.models import ErrorBody
from banger.core.validate import NAME_RE
from banger.daemon.state import Daemon
from banger.version import API_VERSION

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 403, 404, 409, 500, 502, 503)
}


def get_daemon(request: Request) -> Daemon:
    daemon: Daemon = request.app.state.daemon
    return daemon


DaemonDep = Annotated[Daemon, Depends(get_daemon)]
# A VM, image or kernel by name or id: both follow the name grammar.
Ref = Annotated[str, Path(pattern=f"^{NAME_RE.pattern}$", max_length=63)]


def api_router(tag: str) -> APIRouter:
    return APIRouter(prefix=f"/{API_VERSION}", responses=ERROR_RESPONSES, tags=[tag])


def request_op_id(request: Request) -> str:
    op_id: str = request.state.op_id
    return op_id
