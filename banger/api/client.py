"""The HTTP client of bangerd's ``/v1`` API over its Unix socket."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from banger.api.errors import error_from_response
from banger.api.models import Operation, Ping
from banger.core.errors import DaemonNotRunning
from banger.version import API_VERSION, version_info

M = TypeVar("M", bound=BaseModel)

VERSION_HEADER = "X-Banger-Version"
OP_ID_HEADER = "X-Banger-Op-Id"


def version_tag() -> str:
    info = version_info()
    return f"{info.version}+{info.short_commit}"


class Client:
    """A thin typed client; errors come back as the daemon's own error classes."""

    def __init__(
        self,
        socket_path: Path,
        *,
        timeout: float = 60.0,
        on_version_drift: Callable[[str], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._on_version_drift = on_version_drift
        self._drift_reported = False
        self._http = httpx.Client(
            transport=transport or httpx.HTTPTransport(uds=str(socket_path)),
            base_url="http://bangerd",
            timeout=timeout,
            headers={VERSION_HEADER: version_tag()},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, f"/{API_VERSION}{path}", **kwargs)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(
                f"bangerd is not running (no answer on {self.socket_path})",
                hint="start it with: banger daemon start",
            ) from exc
        self._check_version(resp)
        payload = resp.json() if resp.content else None
        if resp.status_code >= 400:
            raise error_from_response(resp.status_code, payload)
        return payload

    def get_model(self, path: str, model: type[M], **kwargs: Any) -> M:
        return model.model_validate(self.request("GET", path, **kwargs))

    def post_model(self, path: str, model: type[M], **kwargs: Any) -> M:
        return model.model_validate(self.request("POST", path, **kwargs))

    def ping(self) -> Ping:
        return self.get_model("/ping", Ping)

    def operation(self, op_id: str, *, wait: float = 0, revision: int = -1) -> Operation:
        params = {"wait": wait, "revision": revision}
        return self.get_model(f"/operations/{op_id}", Operation, params=params)

    def _check_version(self, resp: httpx.Response) -> None:
        daemon = resp.headers.get(VERSION_HEADER)
        if daemon and daemon != version_tag() and not self._drift_reported:
            self._drift_reported = True
            if self._on_version_drift:
                self._on_version_drift(daemon)
