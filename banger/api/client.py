"""The HTTP client of bangerd's ``/v1`` API over its Unix socket.

Built on the standard library's ``http.client`` rather than httpx (DESIGN.md s.8
names httpx): every CLI command pays the client's import time, and httpx's
112 ms of imports were half of the 250 ms budget for ``banger vm list``
(docs/performance.md). A Unix-socket JSON client needs nothing httpx adds.

For the same reason pydantic and the wire models are imported only by the
calls that parse or send a model: ``banger vm list -q`` (``get_names``) and a
daemon that is not running never load them.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlencode

from banger.core.errors import BangerError, DaemonNotRunning, InvalidInput
from banger.core.validate import NameKind, validate_name
from banger.host.private_dirs import check_daemon_socket, permission_denied
from banger.version import API_VERSION, version_info

if TYPE_CHECKING:
    from pydantic import BaseModel

    from banger.api.models import Operation, Ping, RequestModel

M = TypeVar("M", bound="BaseModel")

_COLLECTIONS: dict[NameKind, str] = {"VM": "vms", "image": "images", "kernel": "kernels"}

# What a request path may hold once every segment is quoted: no "?", "#", "/" of its own.
_SAFE_PATH = re.compile(r"(?:/[A-Za-z0-9._~%-]+)+", re.ASCII)

VERSION_HEADER = "X-Banger-Version"
OP_ID_HEADER = "X-Banger-Op-Id"


def api_path(*segments: str) -> str:
    """``/a/b/c`` from segments, each quoted whole: a ``?``, ``#`` or ``/`` in one stays in it."""
    for seg in segments:
        if not seg:
            raise InvalidInput("an empty name or id in a request", hint="name the object to act on")
    return "".join("/" + quote(seg, safe="") for seg in segments)


def ref_path(kind: NameKind, ref: str, *rest: str) -> str:
    """The path of one VM, image or kernel (by name or id) and what follows it.

    A ref is checked against the name grammar first: ``box?x`` must never reach
    the daemon as ``box``, nor ``''`` as the collection itself.
    """
    validate_name(ref, kind)
    return api_path(_COLLECTIONS[kind], ref, *rest)


def version_tag() -> str:
    info = version_info()
    return f"{info.version}+{info.short_commit}"


def _decode(method: str, url: str, status: int, headers: Mapping[str, str], data: bytes) -> Any:
    """The JSON payload, or the daemon's typed error; anything else is a clear BangerError."""
    op_id = headers.get(OP_ID_HEADER.lower())
    where = f"{method} {url}: HTTP {status}"
    if 300 <= status < 400:
        raise BangerError(f"bangerd answered {where} (a redirect; banger never follows one)",
                          op_id=op_id)
    payload = None
    if data:
        ctype = headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/json":
            raise BangerError(f"bangerd answered {where} with {ctype or 'no content type'}, "
                              "not JSON", hint="see the daemon log (banger daemon status)",
                              op_id=op_id)
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise BangerError(f"bangerd answered {where} with malformed JSON: {exc}",
                              op_id=op_id) from None
    if status >= 400:
        from banger.api.errors import error_from_response

        err = error_from_response(status, payload)
        err.op_id = err.op_id or op_id
        raise err
    return payload


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection (kept alive) to a Unix socket."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("bangerd", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        check_daemon_socket(self.socket_path)  # never talk to a socket another user planted
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except PermissionError:
            sock.close()
            raise permission_denied(self.socket_path) from None
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """A thin typed client; errors come back as the daemon's own error classes."""

    def __init__(
        self,
        socket_path: Path,
        *,
        timeout: float = 60.0,
        on_version_drift: Callable[[str], None] | None = None,
        on_not_running: Callable[[], None] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._on_version_drift = on_version_drift
        self._on_not_running = on_not_running
        self._drift_reported = False
        self.last_op_id: str | None = None
        self._conn = UnixHTTPConnection(socket_path, timeout)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(
        self, method: str, url: str, body: bytes | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        sent = {VERSION_HEADER: version_tag(), "Host": "bangerd"}
        if body is not None:
            sent["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self._conn.request(method, url, body=body, headers=sent)
                resp = self._conn.getresponse()
                headers = {k.lower(): v for k, v in resp.getheaders()}
                return resp.status, headers, resp.read()
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                self._conn.close()
                raise DaemonNotRunning(
                    f"bangerd is not running (no answer on {self.socket_path})",
                    hint="start it with: banger daemon start",
                ) from exc
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the daemon closed (it restarted): reconnect once.
                self._conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: RequestModel | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """One call; ``body`` is a request model (what the CLI sends), ``json_body`` raw JSON."""
        if body is not None:
            json_body = body.model_dump(mode="json")
        if not _SAFE_PATH.fullmatch(path):
            raise InvalidInput(f"unsafe request path {path!r}", hint="build paths with api_path()")
        url = f"/{API_VERSION}{path}"
        if params:
            url += "?" + urlencode(params)
        sent = None if json_body is None else json.dumps(json_body).encode()
        try:
            status, headers, data = self._send(method, url, sent)
        except DaemonNotRunning:
            if self._on_not_running is None:
                raise
            # Nothing reached a daemon (the connect failed), so even a POST is safe to resend.
            self._on_not_running()
            status, headers, data = self._send(method, url, sent)
        self._check_version(headers)
        self.last_op_id = headers.get(OP_ID_HEADER.lower()) or self.last_op_id
        return _decode(method, url, status, headers, data)

    def get_model(self, path: str, model: type[M], **kwargs: Any) -> M:
        return self._validate(path, model, self.request("GET", path, **kwargs))

    def post_model(self, path: str, model: type[M], **kwargs: Any) -> M:
        return self._validate(path, model, self.request("POST", path, **kwargs))

    def get_names(self, kind: NameKind) -> list[str]:
        """The names of every VM, image or kernel (``list -q``), read without pydantic.

        Each must be a well-formed name: a hostile daemon cannot print terminal
        escapes or extra lines through ``-q``.
        """
        collection = _COLLECTIONS[kind]
        path = api_path(collection)
        payload = self.request("GET", path)
        items = payload.get(collection) if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise self._unusable(path, collection, "expected a list")
        names = []
        for i, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                raise self._unusable(path, f"{collection}.{i}.name", "expected a string")
            try:
                validate_name(name, kind)
            except InvalidInput as exc:
                raise self._unusable(path, f"{collection}.{i}.name", exc.message) from None
            names.append(name)
        return names

    def _unusable(self, path: str, where: str, why: str) -> BangerError:
        return BangerError(
            f"bangerd answered {path} with unusable data: {where}: {why}",
            hint="is that your own bangerd, of this version? see: banger daemon status",
            op_id=self.last_op_id,
        )

    def _validate(self, path: str, model: type[M], payload: Any) -> M:
        """The answer as ``model``; data banger cannot use is a clear error, not a traceback."""
        from pydantic import ValidationError

        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(body)"
            raise self._unusable(path, where, first["msg"]) from None

    def ping(self) -> Ping:
        from banger.api.models import Ping

        return self.get_model("/ping", Ping)

    def operation(self, op_id: str, *, wait: float = 0, revision: int = -1) -> Operation:
        from banger.api.models import Operation

        params = {"wait": wait, "revision": revision}
        return self.get_model(api_path("operations", op_id), Operation, params=params)

    def _check_version(self, headers: Mapping[str, str]) -> None:
        daemon = headers.get(VERSION_HEADER.lower())
        if daemon and daemon != version_tag() and not self._drift_reported:
            self._drift_reported = True
            if self._on_version_drift:
                self._on_version_drift(daemon)
