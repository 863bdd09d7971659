"""`image import` of a docker-save tar, a rootfs tarball and an existing ext4 file."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput
from banger.images.importer import SourceKind, detect_source, import_image
from banger.images.manifest import ROOTFS_NAME, WORK_SEED_NAME
from tests.integration.test_oci_pull import sample_layers, stat_path
from tests.support.oci_builder import (
    Member,
    bootable_base,
    docker_save_files,
    layer_tar,
    write_tar,
)

pytestmark = pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs e2fsprogs")


def docker_save_tar(path: Path, layers: list[list[Member]]) -> None:
    write_tar(path, docker_save_files(layers))


def test_docker_save_tar_imports_with_ownership_and_whiteouts(tmp_path: Path) -> None:
    docker_save_tar(tmp_path / "saved.tar", sample_layers())
    assert detect_source(tmp_path / "saved.tar") == SourceKind.DOCKER_ARCHIVE
    m = import_image(tmp_path / "saved.tar", tmp_path / "images", name="d", kernel_name="k")
    image = tmp_path / "images" / m.id / ROOTFS_NAME
    st = stat_path(image, "/bin/suid-true")
    assert st is not None and (st["uid"], st["mode"]) == ("0", "04755")
    assert stat_path(image, "/etc/doomed.conf") is None
    assert m.kernel_name == "k" and m.source.startswith("docker-archive:")


def test_gzipped_rootfs_tarball_imports(tmp_path: Path) -> None:
    tar = layer_tar(bootable_base([Member("srv/f", data=b"1", uid=7, mode=0o600)]))
    (tmp_path / "rootfs.tar.gz").write_bytes(gzip.compress(tar))
    assert detect_source(tmp_path / "rootfs.tar.gz") == SourceKind.ROOTFS_TAR
    m = import_image(tmp_path / "rootfs.tar.gz", tmp_path / "images", name="r", kernel_name=None)
    st = stat_path(tmp_path / "images" / m.id / ROOTFS_NAME, "/srv/f")
    assert st is not None and (st["uid"], st["mode"]) == ("7", "0600")


def test_something_that_is_no_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not an image" * 200)
    with pytest.raises(InvalidInput, match="neither a tar archive nor an ext4 image"):
        import_image(tmp_path / "junk", tmp_path / "images", name="j", kernel_name=None)


def make_ext4_image(
    tmp_path: Path, *, sshd: bool = True, links: dict[str, str] | None = None
) -> Path:
    src = tmp_path / "src"
    for d in ("usr/sbin", "usr/bin", "root", "etc"):
        (src / d).mkdir(parents=True)
    for name, target in (links or {}).items():
        os.symlink(target, src / name)
    os.symlink("usr/sbin", src / "sbin")  # usrmerge: /sbin/init resolves through a symlink
    os.symlink("usr/bin", src / "bin")
    names = ["usr/sbin/init", "usr/bin/sh", "usr/sbin/ip"] + (["usr/sbin/sshd"] if sshd else [])
    for name in names:
        (src / name).write_text("#!/bin/sh\n")
        os.chmod(src / name, 0o755)
    (src / "root/.bashrc").write_text("# rc\n")
    image = tmp_path / "given.ext4"
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(image)], check=True)
    script = "sif /usr/sbin/ip mode 0104755\nsif /root/.bashrc uid 1234\n"
    subprocess.run(["debugfs", "-w", "-f", "-", str(image)], input=script.encode(),
                   check=True, capture_output=True)
    return image


def test_ext4_file_is_copied_validated_and_given_guest_bits(tmp_path: Path) -> None:
    given = make_ext4_image(tmp_path)
    assert detect_source(given) == SourceKind.EXT4
    m = import_image(given, tmp_path / "images", name="e", kernel_name=None)
    image_dir = tmp_path / "images" / m.id
    assert sorted(p.name for p in image_dir.iterdir()) == [
        "image.json", ROOTFS_NAME, WORK_SEED_NAME
    ]
    assert [p.name for p in (tmp_path / "images").iterdir()] == [m.id]
    rootfs = image_dir / ROOTFS_NAME
    ip = stat_path(rootfs, "/usr/sbin/ip")
    assert ip is not None and (ip["uid"], ip["mode"]) == ("0", "04755")
    init = stat_path(rootfs, "/usr/lib/banger/init")
    assert init is not None and (init["uid"], init["mode"]) == ("0", "0755")
    rc = stat_path(image_dir / WORK_SEED_NAME, "/.bashrc")
    assert rc is not None and rc["uid"] == "1234"
    assert stat_path(image_dir / WORK_SEED_NAME, "/.hushlogin") is not None
    fsck = subprocess.run(["e2fsck", "-fn", str(rootfs)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    assert stat_path(given, "/usr/lib/banger/init") is None  # the given file is left as it was


def test_ext4_file_without_sshd_is_refused_naming_it(tmp_path: Path) -> None:
    given = make_ext4_image(tmp_path, sshd=False)
    with pytest.raises(InvalidInput, match="sshd"):
        import_image(given, tmp_path / "images", name="e", kernel_name=None)
    assert [p.name for p in (tmp_path / "images").iterdir()] == []


def test_ext4_file_with_a_symlinked_guest_directory_is_refused(tmp_path: Path) -> None:
    given = make_ext4_image(tmp_path, links={"etc/ssh": "/home/user"})
    with pytest.raises(InvalidInput, match="image path /etc/ssh is a symlink"):
        import_image(given, tmp_path / "images", name="e", kernel_name=None)
    assert [p.name for p in (tmp_path / "images").iterdir()] == []


def test_rootfs_tarball_with_a_guest_directory_linked_out_of_the_tree_is_refused(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "home-user"
    outside.mkdir()
    tar = layer_tar(bootable_base([
        Member("etc", "dir", mode=0o755),
        Member("etc/ssh", "symlink", link=str(outside)),
    ]))  # fmt: skip
    (tmp_path / "rootfs.tar").write_bytes(tar)
    with pytest.raises(InvalidInput, match="image path /etc/ssh is a symlink"):
        import_image(tmp_path / "rootfs.tar", tmp_path / "images", name="r", kernel_name=None)
    assert list(outside.iterdir()) == []
    assert [p.name for p in (tmp_path / "images").iterdir()] == []

