"""``bangerd-root``'s server in a thread on a temporary socket, for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from banger.helper.guard import Owner, helper_ops
from banger.helper.server import HelperServer, bind_helper_socket
from banger.host.helper_client import HelperHostOps


def serve_helper(owner: Owner, transport: Any, path: Path) -> Iterator[HelperHostOps]:
    """A client of a helper serving ``owner`` over ``transport`` at ``path`` (a generator
    for fixtures: the server stops when it is closed)."""
    server = HelperServer(bind_helper_socket(path, owner), owner, helper_ops(owner, transport))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield HelperHostOps(path, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
