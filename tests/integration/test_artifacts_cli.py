"""Kernels and images as a user drives them: through the CLI, the daemon and its store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BangerEnv
from tests.support.kernel import ensure_kernel_deb
from tests.support.oci_builder import Member, OciImage, bootable_base


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def with_kernel(banger_env: BangerEnv) -> BangerEnv:
    """A banger env whose default kernel was imported from the cached Debian .deb."""
    _ok(banger_env.banger("kernel", "import", "testk", "--from", str(ensure_kernel_deb())))
    return banger_env


def _push(registry: str, tmp_path: Path, repo: str, layers: list[list[Member]]) -> str:
    layout = tmp_path / f"layout-{repo}"
    OciImage(layers).write_layout(layout, tag="v1")
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:v1",
         f"docker://{registry}/{repo}:v1"],
        check=True, capture_output=True, timeout=120,
    )
    return f"{registry}/{repo}:v1"


def test_kernel_import_becomes_the_default_and_shows_its_artifacts(with_kernel: BangerEnv) -> None:
    kernels = json.loads(_ok(with_kernel.banger("kernel", "list", "--json")))
    assert [(k["name"], k["is_default"]) for k in kernels] == [("testk", True)]
    shown = json.loads(_ok(with_kernel.banger("kernel", "show", "testk", "--json")))
    names = {f["name"] for f in shown["manifest"]["files"]}
    assert {"vmlinuz", "vmlinux", "initrd.img"} <= names
    assert all(len(f["sha256"]) == 64 for f in shown["manifest"]["files"])
    assert _ok(with_kernel.banger("kernel", "list", "-q")).split() == ["testk"]


def test_importing_a_taken_kernel_name_is_a_conflict(with_kernel: BangerEnv) -> None:
    again = with_kernel.banger("kernel", "import", "testk", "--from", str(ensure_kernel_deb()))
    assert again.returncode == 4
    assert "already exists" in again.stderr and "hint:" in again.stderr


def test_bad_kernel_and_image_input_fails_before_anything_is_created(
    banger_env: BangerEnv, tmp_path: Path
) -> None:
    cases = [
        (["kernel", "pull", "nope"], "not in the catalog"),
        (["kernel", "import", "Bad", "--from", str(tmp_path)], "invalid kernel name"),
        (["image", "build", "x", "--from", "fedora:40"], "fedora"),
        (["image", "build", "x", "--packages", "ok,$(reboot)"], "package"),
        (["image", "build", "x", "--size", "-1G"], "size"),
        (["image", "pull", "UPPER/case:tag"], "reference"),
        (["image", "show", "missing"], "not found"),
    ]
    for args, needle in cases:
        result = banger_env.banger(*args)
        assert result.returncode != 0, args
        assert result.stderr.startswith("banger: "), (args, result.stderr)
        assert needle in result.stderr.lower(), (args, result.stderr)
    assert _ok(banger_env.banger("image", "list", "-q")) == ""
    assert _ok(banger_env.banger("kernel", "list", "-q")) == ""
    assert not list((banger_env.state_dir / "images").glob("*"))
    assert not list((banger_env.state_dir / "kernels").glob("*"))


def test_pull_from_a_registry_then_list_promote_and_delete(
    with_kernel: BangerEnv, registry: str, tmp_path: Path
) -> None:
    ref = _push(registry, tmp_path, "tiny", [bootable_base()])
    pulled = json.loads(_ok(with_kernel.banger("image", "pull", ref, "--name", "tiny", "--json")))
    assert pulled["name"] == "tiny" and pulled["is_default"] is True
    assert pulled["kernel_name"] == "testk"
    image_dir = Path(pulled["path"])
    assert {p.name for p in image_dir.iterdir()} >= {"rootfs.ext4", "work-seed.ext4", "image.json"}

    second = _push(registry, tmp_path, "other", [bootable_base()])
    _ok(with_kernel.banger("image", "pull", second))
    assert sorted(_ok(with_kernel.banger("image", "list", "-q")).split()) == ["other-v1", "tiny"]
    _ok(with_kernel.banger("image", "promote", "other-v1"))
    images = json.loads(_ok(with_kernel.banger("image", "list", "--json")))
    assert {i["name"]: i["is_default"] for i in images} == {"tiny": False, "other-v1": True}

    refused = with_kernel.banger("kernel", "delete", "testk")
    assert refused.returncode == 4 and "image" in refused.stderr

    _ok(with_kernel.banger("image", "delete", "tiny"))
    assert not image_dir.exists()
    assert _ok(with_kernel.banger("image", "list", "-q")).split() == ["other-v1"]


def test_pull_of_an_image_without_sshd_fails_and_leaves_nothing(
    with_kernel: BangerEnv, registry: str, tmp_path: Path
) -> None:
    ref = _push(registry, tmp_path, "nosshd", [bootable_base(sshd=False)])
    result = with_kernel.banger("image", "pull", ref)
    assert result.returncode != 0
    assert "sshd" in result.stderr and "hint:" in result.stderr
    assert _ok(with_kernel.banger("image", "list", "-q")) == ""
    leftovers = [p for p in (with_kernel.state_dir / "images").iterdir()]
    assert leftovers == []


def test_cache_prune_reports_then_frees_blobs(
    with_kernel: BangerEnv, registry: str, tmp_path: Path
) -> None:
    ref = _push(registry, tmp_path, "cached", [bootable_base()])
    _ok(with_kernel.banger("image", "pull", ref))
    dry = json.loads(_ok(with_kernel.banger("image", "cache", "prune", "--dry-run", "--json")))
    assert dry["blobs"] > 0 and dry["bytes"] > 0
    real = json.loads(_ok(with_kernel.banger("image", "cache", "prune", "--json")))
    assert (real["blobs"], real["bytes"]) == (dry["blobs"], dry["bytes"])
    again = json.loads(_ok(with_kernel.banger("image", "cache", "prune", "--json")))
    assert again["blobs"] == 0


def test_kernel_delete_removes_row_and_files(with_kernel: BangerEnv) -> None:
    shown = json.loads(_ok(with_kernel.banger("kernel", "show", "testk", "--json")))
    kernel_dir = Path(shown["path"])
    assert kernel_dir.is_dir()
    _ok(with_kernel.banger("kernel", "delete", "testk"))
    assert not kernel_dir.exists()
    catalog = json.loads(_ok(with_kernel.banger("kernel", "catalog", "--json")))
    assert catalog["kernels"][0]["pulled"] is False
