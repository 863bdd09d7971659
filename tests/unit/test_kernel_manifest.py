"""Kernel manifests: JSON round trip, atomic writes, and readable errors for broken ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from banger.api.models import KernelImportRequest
from banger.core.errors import Forbidden, InvalidInput, StoreError
from banger.core.manifests import KernelFile, KernelManifest
from banger.daemon.kernel_service import KernelService
from banger.host import files
from banger.kernels.importer import delete_kernel, import_kernel
from banger.kernels.manifest import describe_file, load_manifest, write_manifest
from banger.store.db import Store


def sample(path: Path, name: str = "k1") -> KernelManifest:
    (path / "vmlinuz").write_bytes(b"bz" * 100)
    return KernelManifest(
        name=name,
        version="6.1.0-1-cloud-amd64",
        source="/src/k.deb",
        created="2026-01-01T00:00:00+00:00",
        files=(describe_file(path / "vmlinuz"),),
        modules=("virtio_ring", "virtio"),
        path=path,
    )


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    m = sample(tmp_path)
    write_manifest(tmp_path, m)
    assert load_manifest(tmp_path) == m
    assert load_manifest(tmp_path).file("vmlinuz") == tmp_path / "vmlinuz"
    assert load_manifest(tmp_path).file("vmlinux") is None


def test_describe_file_records_sha256_and_size(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert describe_file(tmp_path / "f") == KernelFile(
        name="f", sha256="ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", size=3
    )


def test_a_failed_write_leaves_the_previous_manifest_intact_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = sample(tmp_path)
    write_manifest(tmp_path, m)
    before = (tmp_path / "manifest.json").read_bytes()

    def crash(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", crash)  # the shared atomic write
    with pytest.raises(OSError, match="disk full"):
        write_manifest(tmp_path, m)
    assert (tmp_path / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "vmlinuz"]


def test_a_malformed_manifest_is_a_store_error_naming_the_fix(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "k"}))
    with pytest.raises(StoreError) as err:
        load_manifest(tmp_path)
    assert "banger kernel delete" in (err.value.hint or "")


def test_a_damaged_artifact_hash_is_a_store_error_naming_the_file(tmp_path: Path) -> None:
    data = sample(tmp_path).model_dump(mode="json")
    data["files"][0]["sha256"] = "../../etc/passwd"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(StoreError, match=r"manifest\.json is malformed: files\.0\.sha256"):
        load_manifest(tmp_path)


def test_a_missing_manifest_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"kernel manifest .*manifest\.json is missing"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("bad", ["", "Debian", "-k", "k-", "a" * 64, "k_1", "../k", "k/1"])
def test_kernel_names_follow_the_vm_name_grammar(bad: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="invalid kernel name"):
        import_kernel(bad, tmp_path, tmp_path / "kernels")
    with pytest.raises(InvalidInput):
        delete_kernel(bad, tmp_path / "kernels")
    service = KernelService(Store.open(tmp_path / "state.db"), tmp_path / "kernels", tmp_path)
    with pytest.raises(InvalidInput):
        service.import_(KernelImportRequest(name=bad, source=str(tmp_path)))
    assert not (tmp_path / "kernels").exists()


def test_stored_kernels_are_the_registered_rows_never_staging_dirs(tmp_path: Path) -> None:
    kernels = tmp_path / "kernels"
    service = KernelService(Store.open(tmp_path / "state.db"), kernels, tmp_path)
    for name in ("zeta", "alpha", ".alpha.staging-x"):
        d = kernels / name
        d.mkdir(parents=True)
        m = sample(d, name)
        write_manifest(d, m)
        if not name.startswith("."):  # what a finished pull or import registers
            service._register(m)
    assert [k.name for k in service.store.kernels.list()] == ["alpha", "zeta"]
    assert [k.path for k in service.store.kernels.list()] == [kernels / "alpha", kernels / "zeta"]
    assert service.store.kernels.get_default().name == "zeta"  # type: ignore[union-attr]


def test_a_symlinked_manifest_is_refused_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    m = sample(elsewhere)
    write_manifest(elsewhere, m)  # a valid manifest: only the link makes it hostile
    kernel = tmp_path / "k1"
    kernel.mkdir()
    (kernel / "manifest.json").symlink_to(elsewhere / "manifest.json")
    with pytest.raises(Forbidden, match="symbolic link") as err:
        load_manifest(kernel)
    assert err.value.hint
