"""Kernels banger can pull by name, and how a catalog entry's package is fetched.

``debian-cloud`` is Debian's ``linux-image-cloud-amd64``: a metapackage that
depends on the current versioned ``linux-image-<abi>-cloud-amd64``. apt
resolves it (``apt-cache depends``) and downloads the real package
(``apt-get download``) into a cache directory, reused across pulls.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import NotFound
from banger.host import apt

Progress = Callable[[str], None]


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


def resolve_package(metapackage: str) -> str:
    """The versioned ``linux-image-*`` package that ``metapackage`` depends on."""
    images = [d for d in apt.depends(metapackage) if d.startswith("linux-image-")]
    if images:
        return images[0]
    if metapackage.startswith("linux-image-"):
        return metapackage  # already a versioned image package with no image dependency
    raise NotFound(f"apt knows no kernel image for {metapackage}", hint=apt.UPDATE_HINT)


def fetch_package(
    entry: CatalogEntry, cache_dir: Path, *, progress: Progress | None = None
) -> Path:
    """The ``.deb`` of ``entry``'s current kernel in ``cache_dir``, downloaded if not cached."""
    report = progress or (lambda _msg: None)
    apt.require_apt_get()
    package = resolve_package(entry.package)
    version, arch = apt.candidate(package)
    deb = cache_dir / f"{package}_{version.replace(':', '%3a')}_{arch}.deb"
    if deb.is_file():
        report(f"using cached {deb.name}")
        return deb
    report(f"downloading {package} {version}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Download into a private directory, then rename: a reader never sees a partial .deb.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
        os.chmod(tmp, 0o755)  # lets apt's sandbox user write when we are root
        os.replace(apt.download(package, version, Path(tmp)), deb)
    report(f"downloaded {deb.name} ({deb.stat().st_size >> 20} MiB)")
    return deb
