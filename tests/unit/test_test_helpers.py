"""The test helpers themselves: a broken builder errors (never skips), and leaked VMMs die."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from banger.core.errors import HostToolError
from banger.core.wait import poll_until
from tests.support import hostcheck, image, kernel
from tests.support.hostcheck import ArtifactError, kill_leftover_vmms, processes_naming


def _broken(*_args: Any, **_kwargs: Any) -> Any:
    raise HostToolError("mmdebstrap exited 1: E: cannot resolve deb.debian.org", hint="network?")


def test_an_image_build_that_fails_is_an_error_not_a_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image, "IMAGES_DIR", tmp_path / "images")
    monkeypatch.setattr("banger.images.build.build_image", _broken)
    with pytest.raises(ArtifactError) as err:  # pytest.skip raises Skipped, not this
        image.ensure_test_image()
    assert "the test image is not cached and could not be made" in str(err.value)
    assert "cannot resolve deb.debian.org (network?)" in str(err.value)
    assert "tests.support.prepare" in str(err.value)


def test_a_kernel_fetch_that_fails_is_an_error_not_a_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel, "KERNELS_DIR", tmp_path / "kernels")
    monkeypatch.setattr(kernel, "DEBS_DIR", tmp_path / "debs")
    monkeypatch.setattr("banger.kernels.importer.pull_kernel", _broken)
    monkeypatch.setattr("banger.kernels.catalog.fetch_package", _broken)
    with pytest.raises(ArtifactError, match="test kernel debian-cloud is not cached"):
        kernel.ensure_test_kernel()
    with pytest.raises(ArtifactError, match="test kernel .deb is not cached"):
        kernel.ensure_kernel_deb()


def test_a_missing_capability_is_a_skip_that_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostcheck.shutil, "which", lambda tool: None)
    with pytest.raises(pytest.skip.Exception) as skipped:
        hostcheck.require_vm_host()
    assert "qemu-system-x86_64" in str(skipped.value) and "ssh" in str(skipped.value)


def test_a_leftover_vmm_is_killed_by_pid_and_reported(tmp_path: Path) -> None:
    marker = str(tmp_path / "state")
    # A stand-in VMM: its command line names qemu-system and the test's dir, like a real one.
    proc = subprocess.Popen(["bash", "-c", f'exec -a "qemu-system-x86_64 -name {marker}" sleep 60'])
    try:
        # bash must have exec'd into the stand-in first (bash's own argv names both too).
        def execd() -> bool:
            return processes_naming(marker).get(proc.pid, "").startswith("qemu-system")

        assert poll_until(execd, timeout=30)
        leaked = kill_leftover_vmms(marker)
        assert list(leaked) == [proc.pid]
        assert proc.wait(timeout=5) == -9
        assert processes_naming(marker) == {}
    finally:
        proc.kill()
        proc.wait()
