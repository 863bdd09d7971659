"""A client for Firecracker's API: HTTP/1.1 over its Unix socket (httpx's UDS transport).

Firecracker answers 204 (or 200 with a body) on success and a 4xx/5xx with
``{"fault_message": "..."}`` otherwise; that message becomes a
``FirecrackerFault`` naming the request. The reply is our own VMM's, but it is
still cut to one printable line before it reaches a user.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from banger.core.errors import HostToolError
from banger.vmm.firecracker_api import ApiCall

REQUEST_TIMEOUT = 10.0
_FAULT_MAX = 300
_POLL = 0.01


class FirecrackerFault(HostToolError):
    """Firecracker refused a request (its status and fault message)."""

    def __init__(self, call: ApiCall, status: int, fault: str) -> None:
        self.call, self.status, self.fault = call, status, fault
        super().__init__(f"Firecracker refused {call.method} {call.path} ({status}): {fault}")


def _fault_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        text = body.get("fault_message") if isinstance(body, dict) else None
    except ValueError:
        text = None
    if not isinstance(text, str) or not text:
        text = response.text or response.reason_phrase
    line = " ".join(text.split())
    line = "".join(c if c.isprintable() else "?" for c in line)
    return line[:_FAULT_MAX]


class FirecrackerClient:
    """Requests to one Firecracker's API socket; one connection per call (few calls)."""

    def __init__(self, socket: Path, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self.socket = socket
        self.timeout = timeout

    async def call(self, call: ApiCall) -> Any:
        """Send ``call``; return the decoded JSON reply (None when empty) or raise."""
        transport = httpx.AsyncHTTPTransport(uds=os.fspath(self.socket))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost",
                                         timeout=self.timeout) as client:
                response = await client.request(call.method, call.path, json=call.body)
        except httpx.HTTPError as exc:
            raise HostToolError(
                f"cannot reach Firecracker's API at {self.socket} for {call.method} "
                f"{call.path}: {exc!r}", hint="the VMM may have exited: see its log") from exc
        if response.status_code >= 300:
            raise FirecrackerFault(call, response.status_code, _fault_message(response))
        return response.json() if response.content else None

    async def run(self, calls: list[ApiCall]) -> None:
        """Send ``calls`` in order; the first refusal stops the sequence."""
        for c in calls:
            await self.call(c)

    async def wait_listening(self, alive: Callable[[], bool], *, timeout: float) -> bool:
        """Wait until the API socket accepts a connection; False when ``alive()`` turns
        False first (the VMM exited) or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            try:
                _, writer = await asyncio.open_unix_connection(os.fspath(self.socket))
            except OSError:
                await asyncio.sleep(_POLL)
                continue
            writer.close()
            await writer.wait_closed()
            return True
        return False
