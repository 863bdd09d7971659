"""``bangerd-root``'s server in a thread on a temporary socket, for tests."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from banger.helper.guard import Owner, helper_ops
from banger.helper.server import HelperServer, bind_helper_socket
from banger.host.helper_client import HelperHostOps


def serve_helper(owner: Owner, transport: Any, path: Path) -> Iterator[HelperHostOps]:
    """A client of a helper serving ``owner`` over ``transport`` at ``path`` (a generator
    for fixtures: the server stops when it is closed). Its own run dir (the loop
    registry) is a fresh dir of root's under /run when we are root (it must be root's
    from / down), else one the block operations refuse."""
    run_dir = Path(tempfile.mkdtemp(prefix="bghelper-", dir="/run" if os.geteuid() == 0 else None))
    run_dir.chmod(0o755)
    server = HelperServer(bind_helper_socket(path, owner), owner,
                          helper_ops(owner, transport, run_dir))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield HelperHostOps(path, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        shutil.rmtree(run_dir)


@contextmanager
def owner_of(uid: int) -> Iterator[Owner]:
    """Owner ``someone`` (``uid``) with a state and a run dir of its own (its own when we are
    root), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="bgowner-"))
    for d in ("state", "run"):
        (base / d).mkdir()
        if os.geteuid() == 0:
            os.chown(base / d, uid, uid)
    try:
        yield Owner("someone", uid, uid, (base / "state", base / "run"))
    finally:
        shutil.rmtree(base)
