"""Turn an OCI pull or a local file into an image directory.

``import_image`` accepts a docker-save tar, an OCI layout dir, a rootfs tarball
or an ext4 file; ``pull_image`` pulls a registry reference. Both produce
``images_dir/<id>/{rootfs.ext4, work-seed.ext4, image.json}``, staged in the
state dir's scratch dir (``tmp/``, swept at daemon start) and renamed into
place in one step, so a failure, a cancel or a kill leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from banger.core.cancel import checkpoint
from banger.core.errors import InvalidInput, NotFound
from banger.core.manifests import ImageManifest
from banger.core.names import new_id
from banger.host.disks import copy_sparsifying
from banger.host.ext4 import check_ext4, grow_ext4, make_ext4
from banger.host.files import make_scratch, remove_tree, sha256_file
from banger.host.ssh import fresh_host_key
from banger.images import ext4_import
from banger.images.flatten import (
    Entry,
    EntryKind,
    archive_errors,
    corrupt_archive,
    entries_under,
    flatten_layers,
)
from banger.images.guest_bits import (
    GuestFile,
    HostKey,
    Kind,
    check_bootable,
    guest_files,
    write_guest_files,
)
from banger.images.manifest import ROOTFS_NAME, WORK_SEED_NAME, write_manifest
from banger.images.oci import (
    LayerBlob,
    blob_cache_lock,
    blob_dir,
    pull_oci,
    read_oci_layout,
)
from banger.images.oci_schema import DockerSaveManifest, ImageConfig, parse
from banger.images.ownership import apply_ownership
from banger.images.sizing import MIB, default_rootfs_size, default_work_seed_size, tree_usage

Progress = Callable[[str], None]

_EXT4_MAGIC_OFFSET = 1080
_EXT4_MAGIC = b"\x53\xef"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_COMPRESSED_MAGICS = (b"\x1f\x8b", b"BZh", b"\xfd7zX")
_ROOTFS_TOP = frozenset({"bin", "etc", "usr", "sbin", "lib", "var", "root", "home", "opt"})


class SourceKind(StrEnum):
    OCI_LAYOUT = "oci-layout"
    DOCKER_ARCHIVE = "docker-archive"
    ROOTFS_TAR = "rootfs-tar"
    EXT4 = "ext4"


@dataclass(frozen=True)
class ImageRequest:
    """What to call the new image and how big to make it."""

    name: str
    kernel_name: str | None
    size_bytes: int | None = None
    image_id: str | None = None


# --- source detection ----------------------------------------------------------


def detect_source(path: Path) -> SourceKind:
    """What kind of importable thing ``path`` is; InvalidInput when none."""
    if path.is_dir():
        if (path / "oci-layout").is_file():
            return SourceKind.OCI_LAYOUT
        raise InvalidInput(
            f"{path} is a directory without an oci-layout file",
            hint="give an OCI layout dir (skopeo copy ... oci:DIR), a tar or an ext4 file",
        )
    if not path.is_file():
        raise NotFound(f"{path} does not exist", hint="check the path")
    with open(path, "rb") as f:
        head = f.read(_EXT4_MAGIC_OFFSET + 2)
    if head[_EXT4_MAGIC_OFFSET:] == _EXT4_MAGIC:
        return SourceKind.EXT4
    if head[:4] == _ZSTD_MAGIC:
        return SourceKind.ROOTFS_TAR  # docker save output is never zstd-compressed
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                top = member.name.lstrip("./").split("/")[0]
                if member.name in ("manifest.json", "./manifest.json"):
                    return SourceKind.DOCKER_ARCHIVE
                if top in _ROOTFS_TOP:
                    return SourceKind.ROOTFS_TAR
    except (tarfile.TarError, EOFError, OSError) as exc:
        if head[257:262] == b"ustar" or head[:4].startswith(_COMPRESSED_MAGICS):
            raise corrupt_archive(str(path), exc) from exc
        raise InvalidInput(
            f"{path} is neither a tar archive nor an ext4 image",
            hint="give a docker-save tar, a rootfs tar(.gz/.zst), an OCI layout dir or ext4",
        ) from exc
    return SourceKind.ROOTFS_TAR


@contextlib.contextmanager
def docker_archive_layers(path: Path) -> Iterator[list[LayerBlob]]:
    """The ordered layers of a ``docker save`` tar, readable while the context is open."""
    hint = "export the image again with docker save"
    with archive_errors(str(path)):
        tar = tarfile.open(path)
    with tar:
        manifest_json = _read_member(tar, path, "manifest.json", "manifest")
        image = parse(DockerSaveManifest, manifest_json, str(path), hint=hint).root[0]
        config_json = _read_member(tar, path, image.Config, "config")
        config = parse(ImageConfig, config_json, f"{path} ({image.Config})", hint=hint)
        layers = []
        for i, name in enumerate(image.Layers):
            m = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", name)
            layers.append(
                LayerBlob(
                    name=f"layer {i + 1} ({name})",
                    open=functools.partial(_member, tar, path, name, "layer"),
                    digest=f"sha256:{m[1]}" if m else None,
                    diff_id=config.diff_id(i),
                )
            )
        yield layers


def _member(tar: tarfile.TarFile, path: Path, name: str, role: str) -> IO[bytes]:
    """The member ``name`` (a ``role``) of the docker-save tar ``path``; InvalidInput if absent."""
    try:
        f = tar.extractfile(name)
    except KeyError:
        raise corrupt_archive(str(path), f"missing {role} {name}") from None
    if f is None:
        raise InvalidInput(f"{path}: docker-save {role} {name} is not a file",
                           hint="export the image again with docker save")
    return f


def _read_member(tar: tarfile.TarFile, path: Path, name: str, role: str) -> bytes:
    with archive_errors(str(path)), _member(tar, path, name, role) as f:
        return f.read()


def rootfs_tar_layers(path: Path) -> list[LayerBlob]:
    return [LayerBlob(name=path.name, open=lambda: open(path, "rb"))]


# --- building the image directory ------------------------------------------------


def _guest_entries(files: Sequence[GuestFile]) -> list[Entry]:
    kinds = {Kind.FILE: EntryKind.FILE, Kind.DIR: EntryKind.DIR, Kind.SYMLINK: EntryKind.SYMLINK}
    return [
        Entry(f.path.strip("/"), kinds[f.kind], f.mode & 0o7777, f.uid, f.gid) for f in files
    ]


def add_guest_bits(tree: Path, entries: dict[str, Entry]) -> None:
    """Check the tree can boot, then write banger's guest files and record their metadata."""
    check_bootable(tree)
    files = guest_files(host_key=HostKey(*fresh_host_key("banger-image")))
    write_guest_files(tree, files)
    for e in _guest_entries(files):
        entries[e.path] = e
        parent = e.path
        while "/" in parent:  # dirs write_guest_files made on the way
            parent = parent.rpartition("/")[0]
            entries.setdefault(parent, Entry(parent, EntryKind.DIR, 0o755, 0, 0))


def _make_images(
    tree: Path, entries: dict[str, Entry], stage: Path, req: ImageRequest, progress: Progress | None
) -> None:
    rootfs = stage / ROOTFS_NAME
    size = req.size_bytes or default_rootfs_size(tree_usage(tree))
    if progress:
        progress(f"ext4: {ROOTFS_NAME} ({size // MIB} MiB)")
    make_ext4(rootfs, size, source_dir=tree)
    apply_ownership(rootfs, entries.values(), progress=progress)
    seed_src = tree / "root"
    seed_src.mkdir(exist_ok=True)
    entries.setdefault("root", Entry("root", EntryKind.DIR, 0o700, 0, 0))
    if progress:
        progress(f"ext4: {WORK_SEED_NAME}")
    seed = stage / WORK_SEED_NAME
    make_ext4(seed, default_work_seed_size(tree_usage(seed_src)), source_dir=seed_src)
    apply_ownership(seed, entries_under(entries.values(), "root"))


def _finish(stage: Path, images_dir: Path, image_id: str, manifest: ImageManifest) -> Path:
    write_manifest(stage, manifest)
    dest = images_dir / image_id
    checkpoint()  # the last one: past the rename the image is published
    try:
        os.rename(stage, dest)  # atomic; fails if an image dir of that id exists
    except OSError as exc:
        raise InvalidInput(
            f"image directory {dest} already exists", hint="pick another image id"
        ) from exc
    return dest


@contextlib.contextmanager
def _staging(images_dir: Path, prefix: str = "import-") -> Iterator[Path]:
    images_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stage = make_scratch(images_dir, prefix)
    try:
        yield stage
    finally:
        remove_tree(stage)


def build_from_layers(
    layers: Sequence[LayerBlob],
    images_dir: Path,
    req: ImageRequest,
    *,
    source: str,
    progress: Progress | None = None,
) -> ImageManifest:
    """Flatten ``layers``, add guest bits, and publish an image directory."""
    started = time.monotonic()
    image_id = req.image_id or new_id()
    with _staging(images_dir) as stage:
        tree = stage / "tree"
        tree.mkdir(mode=0o700)
        entries = flatten_layers(layers, tree, progress=progress)
        if progress:
            progress("guest: checking init and sshd, adding banger's guest files")
        add_guest_bits(tree, entries)
        _make_images(tree, entries, stage, req, progress)
        remove_tree(tree)
        manifest = _manifest(stage, image_id, req, source, started)
        _finish(stage, images_dir, image_id, manifest)
    if progress:
        progress(f"image {req.name}: ready ({image_id})")
    return manifest


def _manifest(
    stage: Path, image_id: str, req: ImageRequest, source: str, started: float
) -> ImageManifest:
    rootfs, seed = stage / ROOTFS_NAME, stage / WORK_SEED_NAME
    return ImageManifest(
        id=image_id,
        name=req.name,
        source=source,
        kernel_name=req.kernel_name,
        rootfs_bytes=rootfs.stat().st_size,
        work_seed_bytes=seed.stat().st_size,
        rootfs_sha256=sha256_file(rootfs),
        build_seconds=round(time.monotonic() - started, 3),
    )


# --- public entry points ------------------------------------------------------------


def import_image(
    path: Path,
    images_dir: Path,
    *,
    name: str,
    kernel_name: str | None,
    progress: Progress | None = None,
    size_bytes: int | None = None,
    image_id: str | None = None,
) -> ImageManifest:
    """Import a docker-save tar, OCI layout dir, rootfs tarball or ext4 file as an image."""
    path = Path(path)
    req = ImageRequest(name, kernel_name, size_bytes, image_id)
    kind = detect_source(path)
    if progress:
        progress(f"import: {path} ({kind})")
    source = f"{kind}:{path.resolve()}"
    if kind == SourceKind.OCI_LAYOUT:
        oci_layers = read_oci_layout(path)
        return build_from_layers(oci_layers, images_dir, req, source=source, progress=progress)
    if kind == SourceKind.DOCKER_ARCHIVE:
        with docker_archive_layers(path) as layers:
            return build_from_layers(layers, images_dir, req, source=source, progress=progress)
    if kind == SourceKind.ROOTFS_TAR:
        tar_layers = rootfs_tar_layers(path)
        return build_from_layers(tar_layers, images_dir, req, source=source, progress=progress)
    return import_ext4(path, images_dir, req, source=source, progress=progress)


def import_ext4(
    path: Path, images_dir: Path, req: ImageRequest, *, source: str, progress: Progress | None
) -> ImageManifest:
    """Copy an existing ext4 image, validate it, and add the guest bits through debugfs."""
    started = time.monotonic()
    image_id = req.image_id or new_id()
    with _staging(images_dir) as stage, _staging(images_dir, "import-scratch-") as scratch:
        rootfs = stage / ROOTFS_NAME  # scratch: probes and guest files, never published
        copy_sparsifying(path, rootfs)
        os.chmod(rootfs, stat.S_IRUSR | stat.S_IWUSR)
        if progress:
            progress("check: e2fsck -fn")
        check_ext4(rootfs)  # untrusted until a read-only fsck finds it clean
        if req.size_bytes and req.size_bytes > rootfs.stat().st_size:
            grow_ext4(rootfs, req.size_bytes)
        ext4_import.check_bootable_ext4(rootfs, scratch / "probe")
        files = guest_files(host_key=HostKey(*fresh_host_key("banger-image")))
        if progress:
            progress("guest: adding banger's guest files")
        ext4_import.write_guest_files_ext4(rootfs, files, scratch / "guest")
        ext4_import.build_work_seed_from_ext4(rootfs, stage / WORK_SEED_NAME, scratch / "seed")
        manifest = _manifest(stage, image_id, req, source, started)
        _finish(stage, images_dir, image_id, manifest)
    return manifest


def pull_image(
    ref: str,
    images_dir: Path,
    cache_dir: Path,
    *,
    name: str,
    kernel_name: str | None,
    progress: Progress | None = None,
    size_bytes: int | None = None,
    image_id: str | None = None,
) -> ImageManifest:
    """Pull ``ref`` (blobs cached under ``cache_dir/oci``) and publish it as an image."""
    req = ImageRequest(name, kernel_name, size_bytes, image_id)
    oci_dir = cache_dir / "oci"
    oci_dir.mkdir(parents=True, exist_ok=True)
    # Shared lock from fetch until the last layer is read: a prune cannot pull blobs away.
    with blob_cache_lock(cache_dir):
        layout = Path(tempfile.mkdtemp(prefix="tmp-layout-", dir=oci_dir))
        try:
            pulled = pull_oci(ref, layout, cache_dir, progress=progress)
            layers = read_oci_layout(layout, [blob_dir(cache_dir)])
            source = f"oci:{pulled.ref}@{pulled.manifest_digest}"
            return build_from_layers(layers, images_dir, req, source=source, progress=progress)
        finally:
            shutil.rmtree(layout, ignore_errors=True)
