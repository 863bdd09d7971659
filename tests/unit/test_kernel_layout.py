"""Finding the kernel, modules and initrd inside an import directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput
from banger.kernels.importer import detect_layout


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        if rel.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")


def test_debian_layout_is_found_by_name(tmp_path: Path) -> None:
    touch(tmp_path, "boot/vmlinuz-6.1.0-9-cloud-amd64", "boot/initrd.img-6.1.0-9-cloud-amd64",
          "lib/modules/6.1.0-9-cloud-amd64/")  # fmt: skip
    src = detect_layout(tmp_path)
    assert src.kernel == tmp_path / "boot/vmlinuz-6.1.0-9-cloud-amd64"
    assert src.version == "6.1.0-9-cloud-amd64"
    assert src.modules_dir == tmp_path / "lib/modules/6.1.0-9-cloud-amd64"
    assert src.initrd == tmp_path / "boot/initrd.img-6.1.0-9-cloud-amd64"


def test_newest_kernel_with_modules_wins_and_version_sorting_is_numeric(tmp_path: Path) -> None:
    touch(tmp_path, "boot/vmlinuz-6.1.9", "boot/vmlinuz-6.1.10", "boot/vmlinuz-6.2.0",
          "lib/modules/6.1.9/", "lib/modules/6.1.10/")  # fmt: skip
    assert detect_layout(tmp_path).version == "6.1.10"


def test_a_vmlinux_only_tree_and_merged_usr_modules_are_accepted(tmp_path: Path) -> None:
    touch(tmp_path, "boot/vmlinux-5.10.1", "usr/lib/modules/5.10.1/")
    src = detect_layout(tmp_path)
    assert src.kernel.name == "vmlinux-5.10.1"
    assert src.modules_dir == tmp_path / "usr/lib/modules/5.10.1"
    assert src.initrd is None


def test_metadata_json_takes_precedence_over_file_names(tmp_path: Path) -> None:
    touch(tmp_path, "boot/vmlinuz-1.0", "k/bzImage", "mods/")
    (tmp_path / "metadata.json").write_text(
        json.dumps({"kernel": "k/bzImage", "modules": "mods", "version": "9.9"})
    )
    src = detect_layout(tmp_path)
    assert (src.kernel, src.modules_dir, src.version) == (
        (tmp_path / "k/bzImage").resolve(), (tmp_path / "mods").resolve(), "9.9",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ({"modules": "mods"}, "at least a 'kernel'"),
        ({"kernel": "/boot/vmlinuz"}, "relative path"),
        ({"kernel": "../outside"}, "'..' is not a name"),
        ({"kernel": "escape"}, "resolves outside"),
        ({"kernel": "nope"}, "does not exist"),
    ],
)
def test_bad_metadata_json_is_rejected_with_the_reason(
    tmp_path: Path, meta: dict[str, str], error: str
) -> None:
    touch(tmp_path, "mods/")
    (tmp_path.parent / "outside").write_bytes(b"x")
    (tmp_path / "escape").symlink_to(tmp_path.parent / "outside")
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidInput, match=error):
        detect_layout(tmp_path)


@pytest.mark.parametrize("version", ["../../../../tmp/x", "-Cfoo", "6.1/x", "a b", ".."])
def test_a_hostile_kernel_version_from_metadata_is_refused(tmp_path: Path, version: object) -> None:
    touch(tmp_path, "k/bzImage")
    (tmp_path / "metadata.json").write_text(json.dumps({"kernel": "k/bzImage", "version": version}))
    with pytest.raises(InvalidInput, match="not a kernel release string"):
        detect_layout(tmp_path)


def test_a_hostile_kernel_version_from_a_file_name_is_refused(tmp_path: Path) -> None:
    touch(tmp_path, "boot/vmlinuz--Cfoo")
    with pytest.raises(InvalidInput, match="not a kernel release string"):
        detect_layout(tmp_path)


def test_a_directory_without_a_kernel_says_what_was_expected(tmp_path: Path) -> None:
    touch(tmp_path, "lib/modules/6.1/")
    with pytest.raises(InvalidInput, match="boot/vmlinuz-VERSION"):
        detect_layout(tmp_path)


@pytest.mark.parametrize("link", ["boot", "boot/vmlinuz-6.1", "lib/modules/6.1", "metadata.json"])
def test_a_symlink_out_of_the_directory_is_refused(tmp_path: Path, link: str) -> None:
    outside = tmp_path / "host"
    touch(outside, "boot/vmlinuz-6.1", "lib/modules/6.1/", "metadata.json")
    (outside / "metadata.json").write_text('{"kernel": "boot/vmlinuz-6.1"}')
    src = tmp_path / "src"
    touch(src, "boot/vmlinuz-6.1", "lib/modules/6.1/")
    victim = src / link
    if victim.is_dir():
        import shutil

        shutil.rmtree(victim)
    else:
        victim.unlink(missing_ok=True)
    victim.symlink_to(outside / link)
    with pytest.raises(InvalidInput, match="resolves outside"):
        detect_layout(src)
