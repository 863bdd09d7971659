"""Cancel during each import, at every step it reports: nothing is left, the name is free.

The work runs under a CancelToken exactly as the daemon runs it; the token
fires at the Nth progress report, for N = 1, 2, ..., and the work stops at its
next checkpoint. A cancel after the last checkpoint (the rename that
publishes) is too late: that import completes, which ends the loop.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from banger.core.cancel import CancelToken, cancel_scope
from banger.core.errors import Cancelled
from banger.images.importer import import_image
from banger.kernels.importer import import_kernel
from tests.integration.test_oci_import import docker_save_tar, make_ext4_image
from tests.integration.test_oci_pull import sample_layers
from tests.support.kernel import ensure_kernel_deb
from tests.support.oci_builder import OciImage, bootable_base, layer_tar

pytestmark = pytest.mark.skipif(
    shutil.which("debugfs") is None or shutil.which("dpkg-deb") is None,
    reason="needs e2fsprogs and dpkg",
)

Importer = Callable[[Callable[[str], None]], object]


def cancel_at_every_step(state: Path, store: str, do_import: Importer) -> int:
    """Cancel at report 1, 2, ... asserting a clean state each time; return the step count."""
    step = 0
    while True:
        step += 1
        token = CancelToken()
        seen: list[str] = []

        def report(
            msg: str, token: CancelToken = token, seen: list[str] = seen, at: int = step
        ) -> None:
            seen.append(msg)
            if len(seen) == at:
                token.cancel()

        with cancel_scope(token):
            try:
                do_import(report)
            except Cancelled:
                left = [*(state / store).iterdir(), *(state / "tmp").glob("*")]
                assert left == [], f"left after a cancel at step {step}: {seen}"
                continue
        assert step > 2  # the import reported steps, and was cancelled at each of them
        return step


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg-deb", "-x", str(ensure_kernel_deb()), str(root)], check=True)
    return root


@pytest.mark.parametrize("packaging", ["deb", "dir"])
def test_cancelled_kernel_import_leaves_nothing_and_the_name_imports_after(
    tmp_path: Path, unpacked: Path, packaging: str
) -> None:
    source = ensure_kernel_deb() if packaging == "deb" else unpacked
    state = tmp_path / "state"
    (state / "kernels").mkdir(parents=True)

    def do_import(report: Callable[[str], None]) -> object:
        return import_kernel("k", source, state / "kernels", progress=report)

    cancel_at_every_step(state, "kernels", do_import)
    assert [p.name for p in (state / "kernels").iterdir()] == ["k"]


def _sources(tmp_path: Path) -> dict[str, Path]:
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(layer_tar(bootable_base()))
    docker_save_tar(tmp_path / "saved.tar", sample_layers())
    OciImage(sample_layers()).write_layout(tmp_path / "layout", tag="v1")
    return {"ext4": make_ext4_image(tmp_path), "rootfs-tar": rootfs,
            "docker-save": tmp_path / "saved.tar", "oci-layout": tmp_path / "layout"}


@pytest.mark.parametrize("kind", ["ext4", "rootfs-tar", "docker-save", "oci-layout"])
def test_cancelled_image_import_leaves_nothing_and_the_name_imports_after(
    tmp_path: Path, kind: str
) -> None:
    source = _sources(tmp_path)[kind]
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)

    def do_import(report: Callable[[str], None]) -> object:
        return import_image(source, state / "images", name="img", kernel_name=None,
                            progress=report)

    cancel_at_every_step(state, "images", do_import)
    assert len(list((state / "images").iterdir())) == 1
