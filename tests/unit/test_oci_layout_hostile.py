"""Damaged or hostile OCI layout and docker-save JSON: one clear InvalidInput, nothing left.

Each case starts from a valid image built here and breaks one document the way a
damaged file or a hostile registry could (pulls land in an OCI layout too).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from banger.core.errors import InvalidInput
from banger.images.importer import import_image
from banger.images.oci import read_oci_layout
from tests.support.oci_builder import OciImage, bootable_base, docker_save_files, write_tar

Json = Any
Edit = Callable[[Json], Json]
SHA = "sha256:" + "ab" * 32


def _keep(doc: Json) -> Json:
    return doc


def _without(key: str) -> Edit:
    return lambda doc: {k: v for k, v in doc.items() if k != key}


def _first_manifest(edit: Edit) -> Edit:
    return lambda index: {**index, "manifests": [edit(index["manifests"][0])]}


def oci_layout(
    root: Path, *, index: Edit = _keep, manifest: Edit = _keep, config: Edit = _keep
) -> Path:
    """A bootable OCI layout whose config, manifest and index went through the given edits."""
    layout = root / "layout"
    OciImage([bootable_base()]).write_layout(layout)
    blobs = layout / "blobs" / "sha256"

    def load(digest: str) -> Json:
        return json.loads((blobs / digest.removeprefix("sha256:")).read_bytes())

    def put(doc: Json) -> str:
        data = json.dumps(doc).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    top = json.loads((layout / "index.json").read_text())
    man = load(top["manifests"][0]["digest"])
    man["config"]["digest"] = put(config(load(man["config"]["digest"])))
    top["manifests"][0]["digest"] = put(manifest(man))
    (layout / "index.json").write_text(json.dumps(index(top)))
    return layout


def assert_one_line_and_nothing_left(exc: pytest.ExceptionInfo[InvalidInput], images: Path) -> None:
    assert "\n" not in exc.value.message and exc.value.hint
    assert not images.exists() or list(images.iterdir()) == []


OCI_CASES: dict[str, tuple[dict[str, Edit], str]] = {
    "index-is-a-list": (
        {"index": lambda i: [i]},
        r"malformed OCI index in .*index\.json: Input should be an object"),
    "manifests-entry-is-a-string": (
        {"index": lambda i: {**i, "manifests": [SHA]}}, r"OCI index in .*: manifests\.0: "),
    "platform-is-a-string": (
        {"index": _first_manifest(lambda d: {**d, "platform": "linux/amd64"})},
        r"OCI index in .*: manifests\.0\.platform: "),
    "descriptor-without-digest": (
        {"index": _first_manifest(_without("digest"))},
        r"OCI index in .*: manifests\.0\.digest: Field required"),
    "digest-is-a-number": (
        {"index": _first_manifest(lambda d: {**d, "digest": 42})},
        r"OCI index in .*: manifests\.0\.digest: Input should be a valid string"),
    "digest-is-not-sha256": (
        {"index": _first_manifest(lambda d: {**d, "digest": "sha256:../../etc/passwd"})},
        r"OCI index in .*: manifests\.0\.digest: String should match pattern"),
    "manifest-without-config": (
        {"manifest": _without("config")},
        r"malformed OCI manifest in blob sha256:[0-9a-f]{64}: config: Field required"),
    "layer-without-digest": (
        {"manifest": lambda m: {**m, "layers": [{"mediaType": "x", "size": 1}]}},
        r"OCI manifest in blob .*: layers\.0\.digest: Field required"),
    "nested-index-entry-is-a-string": (
        {"manifest": lambda m: {"manifests": [SHA]}},
        r"OCI index in blob .*: manifests\.0: "),
    "manifest-is-a-json-string": (
        {"manifest": lambda m: "{not json"}, r"OCI manifest in blob .*: Input should be an object"),
    "config-rootfs-is-a-list": (
        {"config": lambda c: {**c, "rootfs": ["layers"]}},
        r"malformed OCI config in blob .*: rootfs: Input should be an object"),
    "config-diff-id-is-a-number": (
        {"config": lambda c: {**c, "rootfs": {"diff_ids": [7]}}},
        r"OCI config in blob .*: rootfs\.diff_ids\.0: Input should be a valid string"),
}


@pytest.mark.parametrize("case", OCI_CASES)
def test_a_damaged_oci_layout_is_one_invalid_input_and_imports_nothing(
    tmp_path: Path, case: str
) -> None:
    edits, message = OCI_CASES[case]
    layout = oci_layout(tmp_path, **edits)
    with pytest.raises(InvalidInput, match=message) as exc:
        import_image(layout, tmp_path / "images", name="bad", kernel_name=None)
    assert_one_line_and_nothing_left(exc, tmp_path / "images")


def test_a_pulled_layout_with_a_damaged_manifest_in_the_shared_blob_dir_is_refused(
    tmp_path: Path,
) -> None:
    """A pull reads its blobs from the cache's blob dir: the same models guard them."""
    layout = oci_layout(tmp_path, manifest=_without("config"))
    shared = tmp_path / "cache-blobs"
    (layout / "blobs").rename(shared)
    with pytest.raises(InvalidInput, match="config: Field required"):
        read_oci_layout(layout, [shared])


def test_an_intact_layout_still_reads_with_its_digests(tmp_path: Path) -> None:
    layers = read_oci_layout(oci_layout(tmp_path))
    assert len(layers) == 1
    assert layers[0].digest is not None and layers[0].digest.startswith("sha256:")
    assert layers[0].diff_id is not None and layers[0].diff_id != layers[0].digest


def _edit_json(name: str, edit: Edit) -> Callable[[dict[str, bytes]], None]:
    def apply(files: dict[str, bytes]) -> None:
        files[name] = json.dumps(edit(json.loads(files[name]))).encode()
    return apply


def _drop_first_layer(files: dict[str, bytes]) -> None:
    del files[json.loads(files["manifest.json"])[0]["Layers"][0]]


DOCKER_CASES: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    "config-is-a-list": (
        _edit_json("config.json", lambda c: [c]),
        r"malformed OCI config in .*saved\.tar \(config\.json\): Input should be an object"),
    "layers-is-a-string": (
        _edit_json("manifest.json", lambda m: [{**m[0], "Layers": "ab"}]),
        r"malformed docker-save manifest\.json in .*saved\.tar: 0\.Layers: "),
    "manifest-is-empty": (
        _edit_json("manifest.json", lambda m: []),
        r"malformed docker-save manifest\.json in .*: .*at least 1 item"),
    "config-member-missing": (
        _edit_json("manifest.json", lambda m: [{**m[0], "Config": "gone.json"}]),
        r"saved\.tar: truncated or corrupt archive \(missing config gone\.json\)"),
    "layer-missing-from-the-tar": (
        _drop_first_layer,
        r"saved\.tar: truncated or corrupt archive \(missing layer [0-9a-f]{12}/layer\.tar\)"),
}


@pytest.mark.parametrize("case", DOCKER_CASES)
def test_a_damaged_docker_save_is_one_invalid_input_and_imports_nothing(
    tmp_path: Path, case: str
) -> None:
    edit, message = DOCKER_CASES[case]
    files = docker_save_files([bootable_base()])
    edit(files)
    write_tar(tmp_path / "saved.tar", files)
    with pytest.raises(InvalidInput, match=message) as exc:
        import_image(tmp_path / "saved.tar", tmp_path / "images", name="bad", kernel_name=None)
    assert_one_line_and_nothing_left(exc, tmp_path / "images")


def test_a_docker_save_whose_manifest_is_a_directory_is_refused(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "saved.tar", "w") as out:
        info = tarfile.TarInfo("manifest.json")
        info.type = tarfile.DIRTYPE
        out.addfile(info)
    message = "docker-save manifest manifest.json is not a file"
    with pytest.raises(InvalidInput, match=message) as exc:
        import_image(tmp_path / "saved.tar", tmp_path / "images", name="bad", kernel_name=None)
    assert_one_line_and_nothing_left(exc, tmp_path / "images")
