"""The kernel catalog: entries, apt resolution, and the errors for hosts apt cannot serve."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from banger.core.errors import NotFound, Unavailable
from banger.host import apt as host_apt
from banger.host.run import CommandError
from banger.kernels.catalog import CATALOG, catalog_entry, fetch_package, resolve_package

DEPENDS = """linux-image-cloud-amd64
  Depends: linux-image-6.1.0-56-cloud-amd64
"""
SHOW = "Package: linux-image-6.1.0-56-cloud-amd64\nVersion: 6.1.192-2\nArchitecture: amd64\n"


class FakeApt:
    """Answers apt-cache like a Debian mirror would; apt-get download writes a .deb in cwd."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], *, timeout: float, cwd: Any = None, **_: Any) -> Any:
        argv = list(argv)
        self.calls.append(argv)
        if argv[1] == "depends":
            out = DEPENDS
        elif argv[1] == "show":
            out = SHOW
        else:
            assert argv[1] == "download" and cwd is not None
            name, version = argv[2].split("=")
            (Path(cwd) / f"{name}_{version}_amd64.deb").write_bytes(b"!<arch>")
            out = ""
        return subprocess.CompletedProcess(argv, 0, out.encode(), b"")


@pytest.fixture
def apt(monkeypatch: pytest.MonkeyPatch) -> FakeApt:
    fake = FakeApt()
    monkeypatch.setattr(host_apt, "run", fake)
    monkeypatch.setattr(host_apt.shutil, "which", lambda name, path=None: f"/usr/bin/{name}")
    return fake


def test_the_catalog_offers_debian_cloud() -> None:
    assert catalog_entry("debian-cloud").package == "linux-image-cloud-amd64"
    assert all(name == e.name for name, e in CATALOG.items())


def test_an_unknown_catalog_name_is_not_found_and_points_at_import() -> None:
    with pytest.raises(NotFound) as err:
        catalog_entry("gentoo")
    assert "debian-cloud" in (err.value.hint or "") and "kernel import" in (err.value.hint or "")


def test_the_metapackage_resolves_to_the_versioned_image(apt: FakeApt) -> None:
    assert resolve_package("linux-image-cloud-amd64") == "linux-image-6.1.0-56-cloud-amd64"


def test_fetch_downloads_the_pinned_version_once_then_reuses_the_cache(
    apt: FakeApt, tmp_path: Path
) -> None:
    deb = fetch_package(catalog_entry("debian-cloud"), tmp_path)
    assert deb == tmp_path / "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
    assert deb.read_bytes() == b"!<arch>"
    assert ["download", "linux-image-6.1.0-56-cloud-amd64=6.1.192-2"] in [c[1:] for c in apt.calls]
    downloads = sum(c[1] == "download" for c in apt.calls)
    fetch_package(catalog_entry("debian-cloud"), tmp_path)
    assert sum(c[1] == "download" for c in apt.calls) == downloads
    assert [p.name for p in tmp_path.iterdir()] == [deb.name]  # no download dir left behind


def test_a_host_without_apt_is_told_to_use_kernel_import(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(host_apt.shutil, "which", lambda name, path=None: None)
    with pytest.raises(Unavailable) as err:
        fetch_package(catalog_entry("debian-cloud"), tmp_path)
    assert "banger kernel import" in (err.value.hint or "")


def test_a_package_apt_does_not_know_suggests_apt_get_update(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def unknown(argv: Sequence[str], **_: Any) -> Any:
        raise CommandError(argv, 100, "E: No packages found")

    monkeypatch.setattr(host_apt, "run", unknown)
    monkeypatch.setattr(host_apt.shutil, "which", lambda name, path=None: f"/usr/bin/{name}")
    with pytest.raises(NotFound) as err:
        fetch_package(catalog_entry("debian-cloud"), tmp_path)
    assert "sudo apt-get update" in (err.value.hint or "")
