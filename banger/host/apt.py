"""Debian packages through apt: what a package depends on, its candidate, and downloading it.

apt only serves catalog kernels (``banger kernel pull``): a host without apt is
told to import a kernel instead, and a package apt does not know points at
``apt-get update``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from banger.core.errors import NotFound, Unavailable
from banger.host.run import CommandError, clean_env, run

APT_TIMEOUT = 600
UPDATE_HINT = "refresh the package lists (sudo apt-get update) and try again"
_UNKNOWN = ("Unable to locate package", "No packages found")


def _tool(name: str) -> str:
    path = shutil.which(name, path=clean_env()["PATH"])
    if path is None:
        raise Unavailable(
            f"catalog kernels are fetched with {name}, which this host does not have",
            hint="import a kernel instead: banger kernel import NAME --from DIR|FILE.deb",
        )
    return path


def _apt(tool: str, args: list[str], *, cwd: Path | None = None) -> str:
    argv = [_tool(tool), *args]
    try:
        return run(argv, timeout=APT_TIMEOUT, cwd=cwd).stdout.decode("utf-8", "replace")
    except CommandError as exc:
        if any(m in exc.stderr_tail for m in _UNKNOWN):
            raise NotFound(f"apt does not know the package: {exc}", hint=UPDATE_HINT) from exc
        raise


def depends(package: str) -> list[str]:
    """The packages ``package`` depends on (alternatives included), per ``apt-cache depends``."""
    out = _apt("apt-cache", ["depends", package])
    return re.findall(r"^\s*\|?Depends:\s*([^\s:<>]+)", out, re.M)


def candidate(package: str) -> tuple[str, str]:
    """(version, architecture) apt would download for ``package``."""
    out = _apt("apt-cache", ["show", "--no-all-versions", package])
    fields = dict(re.findall(r"^(Version|Architecture):\s*(\S+)", out, re.M))
    if "Version" not in fields:
        raise NotFound(f"apt has no candidate version of {package}", hint=UPDATE_HINT)
    return fields["Version"], fields.get("Architecture", "amd64")


def download(package: str, version: str, into: Path) -> Path:
    """Download ``package`` at ``version`` into the directory ``into``; the ``.deb``'s path."""
    _apt("apt-get", ["download", f"{package}={version}"], cwd=into)
    got = sorted(into.glob(f"{package}_*.deb"))
    if not got:
        raise NotFound(f"apt-get download {package} produced no .deb", hint=UPDATE_HINT)
    return got[0]


def require_apt_get() -> None:
    """Unavailable (pointing at kernel import) unless apt-get is installed."""
    _tool("apt-get")
