"""Hostile image files: a traversing name in an ext4, corrupt and truncated archives.

Each input is crafted here; each must be refused with one clear InvalidInput,
with nothing written outside banger's dirs and no half-made image left.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput
from banger.images.ext4_import import build_work_seed_from_ext4, list_dir
from banger.images.importer import import_image
from tests.integration.test_oci_import import docker_save_tar, make_ext4_image
from tests.integration.test_oci_pull import sample_layers
from tests.support.oci_builder import Member, bootable_base, layer_tar

pytestmark = pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs e2fsprogs")


def traversing_ext4(tmp_path: Path, *, checksums: bool) -> tuple[Path, Path]:
    """An ext4 whose /root holds a file named ``../../(...)/<tmp_path>/escaped``.

    mkfs.ext4 -d cannot make such a name, so a placeholder of the same length
    is written and its bytes patched in the image file afterwards.
    """
    target = tmp_path / "escaped"
    evil = "../" * 12 + str(target).lstrip("/")
    placeholder = "P" * len(evil)
    src = tmp_path / "src"
    (src / "root").mkdir(parents=True)
    (src / "root" / placeholder).write_text("pwned\n")
    image = tmp_path / "evil.ext4"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    features = [] if checksums else ["-O", "^metadata_csum"]
    subprocess.run(["mkfs.ext4", "-q", "-F", *features, "-d", str(src), str(image)], check=True)
    data = image.read_bytes()
    assert data.count(placeholder.encode()) >= 1
    image.write_bytes(data.replace(placeholder.encode(), evil.encode()))
    return image, target


def assert_nothing_left(tmp_path: Path) -> None:
    images = tmp_path / "images"
    assert not images.exists() or list(images.iterdir()) == []
    scratch = tmp_path / "tmp"
    assert not scratch.exists() or list(scratch.iterdir()) == []


@pytest.mark.parametrize("checksums", [False, True], ids=["no-csum", "metadata-csum"])
def test_an_ext4_with_a_traversing_name_is_refused_as_corrupt_and_writes_nothing_outside(
    tmp_path: Path, checksums: bool
) -> None:
    image, target = traversing_ext4(tmp_path, checksums=checksums)
    with pytest.raises(InvalidInput, match="corrupt ext4 image") as err:
        import_image(image, tmp_path / "images", name="evil", kernel_name=None)
    assert err.value.hint
    assert not target.exists()
    assert_nothing_left(tmp_path)


def test_the_name_check_refuses_a_traversing_name_even_past_the_fsck_gate(tmp_path: Path) -> None:
    image, target = traversing_ext4(tmp_path, checksums=False)
    with pytest.raises(InvalidInput, match=r"unsafe entry name .*holds '/'"):
        list_dir(image, "/root")
    with pytest.raises(InvalidInput, match="unsafe entry name"):
        build_work_seed_from_ext4(image, tmp_path / "seed.ext4", tmp_path / "scratch")
    assert not target.exists()
    assert not (tmp_path / "seed.ext4").exists()


def test_a_truncated_ext4_is_refused_as_corrupt(tmp_path: Path) -> None:
    given = make_ext4_image(tmp_path)
    with open(given, "r+b") as f:
        f.truncate(os.path.getsize(given) // 8)
    with pytest.raises(InvalidInput, match="corrupt ext4 image"):
        import_image(given, tmp_path / "images", name="cut", kernel_name=None)
    assert_nothing_left(tmp_path)


def _rootfs_tar() -> bytes:
    return layer_tar(bootable_base([Member("srv/blob", data=os.urandom(200_000))]))


def _cut_at_last_header(extra: int) -> bytes:
    """The tar up to its last member's header (plus ``extra`` bytes of that header)."""
    data = _rootfs_tar()
    last = tarfile.open(fileobj=io.BytesIO(data)).getmembers()[-1]
    return data[: last.offset + extra]


@pytest.mark.parametrize(
    ("filename", "make", "message"),
    [
        ("rootfs.tar", lambda: _rootfs_tar()[:150_000], "truncated or corrupt archive"),
        ("rootfs.tar", lambda: _cut_at_last_header(100), "truncated or corrupt archive"),
        ("rootfs.tar", lambda: _cut_at_last_header(0), "truncated or corrupt archive"),
        ("rootfs.tar.gz", lambda: gzip.compress(_rootfs_tar())[:-2000],
         "truncated or corrupt archive"),
        ("garbage.bin", lambda: b"\x00garbage\xff" * 4000, "neither a tar archive nor an ext4"),
    ],
    ids=["tar-cut-in-a-file", "tar-cut-in-a-header", "tar-cut-before-a-header", "gzip-cut",
         "garbage"],
)
def test_a_damaged_archive_is_refused_with_one_clear_line(
    tmp_path: Path, filename: str, make: object, message: str
) -> None:
    path = tmp_path / filename
    path.write_bytes(make())  # type: ignore[operator]
    with pytest.raises(InvalidInput, match=message):
        import_image(path, tmp_path / "images", name="bad", kernel_name=None)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("keep", [0.3, 0.7])
def test_a_truncated_docker_save_is_refused_as_a_corrupt_archive(
    tmp_path: Path, keep: float
) -> None:
    docker_save_tar(tmp_path / "full.tar", sample_layers())
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InvalidInput, match="truncated or corrupt archive"):
        import_image(tmp_path / "cut.tar", tmp_path / "images", name="cut", kernel_name=None)
    assert_nothing_left(tmp_path)


def test_an_ext4_whose_links_aim_at_host_files_writes_nothing_through_them(
    tmp_path: Path,
) -> None:
    """/sbin -> /link, /link -> a host file, /usr -> a long (slow) link whose target is
    attacker text: reading the slow link's target must not write through ``link``."""
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "root").mkdir()
    os.symlink("/link", src / "sbin")
    os.symlink(str(victim), src / "link")
    os.symlink("ssh-ed25519 AAAA" + "x" * 80 + " attacker", src / "usr")
    image = tmp_path / "links.ext4"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(image)], check=True)
    with pytest.raises(InvalidInput):
        import_image(image, tmp_path / "images", name="links", kernel_name=None)
    assert victim.read_text() == "keep me\n"
    assert_nothing_left(tmp_path)
