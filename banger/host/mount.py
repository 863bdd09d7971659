"""Mounting, for the one place banger mounts anything: mmdebstrap's hook namespace."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from banger.host.run import require_tool, run


@contextlib.contextmanager
def bind_view(source: Path, mountpoint: Path) -> Iterator[Path]:
    """A non-recursive bind of ``source`` on the new dir ``mountpoint``: no submounts."""
    mount = require_tool("mount", "mount")
    umount = require_tool("umount", "mount")
    mountpoint.mkdir()
    run([mount, "--bind", os.fspath(source), os.fspath(mountpoint)], timeout=30)
    try:
        yield mountpoint
    finally:
        run([umount, os.fspath(mountpoint)], timeout=60)
        mountpoint.rmdir()
