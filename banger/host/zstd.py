"""zstd decompression through the zstd program (multi-GiB layers, out of this process)."""

from __future__ import annotations

import os
from pathlib import Path

from banger.host.run import require_tool, run


def decompress_file(src: Path, dest: Path, *, timeout: float = 1800) -> None:
    """Decompress ``src`` into ``dest``, removing ``src``."""
    zstd = require_tool("zstd", "zstd")
    run([zstd, "-d", "-q", "--rm", os.fspath(src), "-o", os.fspath(dest)], timeout=timeout)
