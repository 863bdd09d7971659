"""SO_PEERCRED for uvicorn connections on a Unix socket.

uvicorn offers no hook for socket credentials, so a protocol subclass reads
them when a connection is made and exposes them to the app through the ASGI
``client`` address as ``("uid:<uid>", <pid>)``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from banger.host.sockets import socket_peer


class PeerCredProtocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            pid, uid, _ = socket_peer(sock)
            self.client = (f"uid:{uid}", pid)


def peer_uid(scope: MutableMapping[str, Any]) -> int | None:
    """The peer's uid recorded by :class:`PeerCredProtocol`, or None (e.g. in-process tests)."""
    client = scope.get("client")
    if client and isinstance(client[0], str) and client[0].startswith("uid:"):
        return int(client[0][4:])
    return None
