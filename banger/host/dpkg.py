"""Reading Debian packages with dpkg-deb, streaming into this process (nothing forked lingers)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from banger.host.run import require_tool, stream_stdout


@contextlib.contextmanager
def data_tar(deb: Path, *, timeout: float = 600) -> Iterator[IO[bytes]]:
    """The data tar of ``deb`` (``dpkg-deb --fsys-tarfile``) as a stream read inside the block."""
    dpkg_deb = require_tool("dpkg-deb", "dpkg")
    with stream_stdout([dpkg_deb, "--fsys-tarfile", os.fspath(deb)], timeout=timeout) as data:
        yield data
