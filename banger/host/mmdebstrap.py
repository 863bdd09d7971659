"""Bootstrapping a Debian tree with mmdebstrap (root mode as root, ``--mode=unshare`` otherwise).

The tree itself never reaches the caller: mmdebstrap hands it to a customize
hook (shell text, ``$1`` is the tree) and then discards it (``--format=null``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from banger.host.run import require_tool, run


def require_mmdebstrap() -> str:
    return require_tool("mmdebstrap", "mmdebstrap")


def mmdebstrap_argv(
    mmdebstrap: str,
    suite: str,
    packages: Sequence[str],
    hook: str,
    *,
    unshare: bool,
    mirrors: Sequence[str],
    dpkg_options: Sequence[str] = (),
) -> list[str]:
    """The mmdebstrap command line (pure; ``hook`` is the customize-hook shell text)."""
    argv = [
        mmdebstrap,
        "--mode=unshare" if unshare else "--mode=root",
        "--variant=minbase",
        "--format=null",
        "--include=" + ",".join(packages),
        "--aptopt=Acquire::Retries \"3\"",
    ]
    argv += [f"--dpkgopt={opt}" for opt in dpkg_options]
    argv += [f"--customize-hook={hook}", suite, "/dev/null"]
    return argv + list(mirrors)


def bootstrap(
    suite: str,
    packages: Sequence[str],
    hook: str,
    *,
    mirrors: Sequence[str],
    dpkg_options: Sequence[str] = (),
    timeout: float,
) -> None:
    """Bootstrap ``suite`` with ``packages`` and run ``hook`` on the tree."""
    argv = mmdebstrap_argv(require_mmdebstrap(), suite, packages, hook, unshare=os.geteuid() != 0,
                           mirrors=mirrors, dpkg_options=dpkg_options)
    run(argv, timeout=timeout)
