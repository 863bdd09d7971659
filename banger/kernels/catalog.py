"""Kernels banger can pull by name, and how a catalog entry's package is fetched.

``debian-cloud`` is Debian's ``linux-image-cloud-amd64``: a metapackage that
depends on the current versioned ``linux-image-<abi>-cloud-amd64``. apt
resolves it (``apt-cache depends``) and downloads the real package
(``apt-get download``) into a cache directory, reused across pulls.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import NotFound, Unavailable
from banger.host.run import CommandError, clean_env, run

Progress = Callable[[str], None]
_APT_TIMEOUT = 600
_UPDATE_HINT = "refresh the package lists (sudo apt-get update) and try again"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    package: str  # an apt (meta)package whose dependency is the versioned kernel image


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            "debian-cloud",
            "Debian's cloud kernel (linux-image-cloud-amd64), small and virtio-ready",
            "linux-image-cloud-amd64",
        ),
    )
}


def catalog_entry(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        raise NotFound(
            f"kernel {name!r} is not in the catalog",
            hint=f"pull one of {', '.join(sorted(CATALOG))}; or: banger kernel import {name} "
            "--from DIR|FILE.deb",
        ) from None


def _apt_tool(name: str) -> str:
    path = shutil.which(name, path=clean_env()["PATH"])
    if path is None:
        raise Unavailable(
            f"catalog kernels are fetched with {name}, which this host does not have",
            hint="import a kernel instead: banger kernel import NAME --from DIR|FILE.deb",
        )
    return path


def _apt(argv: list[str], *, cwd: Path | None = None) -> str:
    try:
        return run(argv, timeout=_APT_TIMEOUT, cwd=cwd).stdout.decode("utf-8", "replace")
    except CommandError as exc:
        if any(m in exc.stderr_tail for m in ("Unable to locate package", "No packages found")):
            raise NotFound(f"apt does not know the package: {exc}", hint=_UPDATE_HINT) from exc
        raise


def resolve_package(metapackage: str) -> str:
    """The versioned ``linux-image-*`` package that ``metapackage`` depends on."""
    out = _apt([_apt_tool("apt-cache"), "depends", metapackage])
    for line in out.splitlines():
        m = re.match(r"\s*\|?Depends:\s*(linux-image-[^\s:<>]+)", line)
        if m:
            return m.group(1)
    if re.search(r"^\S", out, re.M) and metapackage.startswith("linux-image-"):
        return metapackage  # already a versioned image package with no image dependency
    raise NotFound(f"apt knows no kernel image for {metapackage}", hint=_UPDATE_HINT)


def _candidate(package: str) -> tuple[str, str]:
    """(version, architecture) apt would download for ``package``."""
    out = _apt([_apt_tool("apt-cache"), "show", "--no-all-versions", package])
    fields = dict(re.findall(r"^(Version|Architecture):\s*(\S+)", out, re.M))
    if "Version" not in fields:
        raise NotFound(f"apt has no candidate version of {package}", hint=_UPDATE_HINT)
    return fields["Version"], fields.get("Architecture", "amd64")


def fetch_package(
    entry: CatalogEntry, cache_dir: Path, *, progress: Progress | None = None
) -> Path:
    """The ``.deb`` of ``entry``'s current kernel in ``cache_dir``, downloaded if not cached."""
    report = progress or (lambda _msg: None)
    apt_get = _apt_tool("apt-get")
    package = resolve_package(entry.package)
    version, arch = _candidate(package)
    deb = cache_dir / f"{package}_{version.replace(':', '%3a')}_{arch}.deb"
    if deb.is_file():
        report(f"using cached {deb.name}")
        return deb
    report(f"downloading {package} {version}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Download into a private directory, then rename: a reader never sees a partial .deb.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
        os.chmod(tmp, 0o755)  # lets apt's sandbox user write when we are root
        _apt([apt_get, "download", f"{package}={version}"], cwd=Path(tmp))
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not got:
            raise NotFound(f"apt-get download {package} produced no .deb", hint=_UPDATE_HINT)
        os.replace(got[0], deb)
    report(f"downloaded {deb.name} ({deb.stat().st_size >> 20} MiB)")
    return deb
