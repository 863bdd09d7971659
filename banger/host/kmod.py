"""Kernel module tools (kmod): ``depmod`` for a modules tree that ships without ``modules.dep``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from banger.host.run import require_tool, run


def depmod_modules_dep(modules_dir: Path, version: str, *, system_map: Path | None = None) -> str:
    """The ``modules.dep`` text ``depmod -n`` computes for ``modules_dir`` (nothing is written)."""
    depmod = require_tool("depmod", "kmod")
    with tempfile.TemporaryDirectory(prefix="banger-depmod-") as tmp:
        # depmod wants BASE/lib/modules/VERSION; point that at the real tree.
        base = Path(tmp)
        (base / "lib" / "modules").mkdir(parents=True)
        os.symlink(modules_dir.resolve(), base / "lib" / "modules" / version)
        argv = [depmod, "-n", "-b", os.fspath(base)]
        if system_map is not None:
            argv += ["-F", os.fspath(system_map)]
        out = run([*argv, "--", version], timeout=120).stdout.decode("utf-8", "replace")
    # stdout holds every modules.* file; modules.dep comes first, up to the first comment.
    lines: list[str] = []
    for line in out.splitlines():
        if line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + "\n"
