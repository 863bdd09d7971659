"""Per-VM disks: the copy-on-write root overlay and the ext4 work disk (``/root``).

Nothing here mounts anything or needs root when the files are the daemon
user's: overlays are qcow2 files, reflink clones or sparse copies; the work
disk is edited with debugfs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from banger.core.errors import HostToolError, InvalidInput
from banger.core.vmspec import DiskFormat, RootDisk
from banger.host.ext4 import (
    REPLACE_OK_ERRORS,
    debugfs_batch,
    grow_ext4,
    make_ext4,
    mkdir_commands,
    read_ext4_file,
    replace_file_commands,
)
from banger.host.run import require_tool, run
from banger.host.ssh import HOST_KEY_FILE

OverlayStrategy = Literal["qcow2", "reflink", "sparse"]
Progress = Callable[[str], None] | None

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
# Errors that mean "this filesystem cannot clone", so a copy is the answer.
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}
_COPY_CHUNK = 64 << 20

WORK_LABEL = "work"
# Where the guest's sshd finds its per-VM host key on the work disk
# (``/root/.banger/`` in the guest; see banger/guest/).
HOST_KEY_DIR = ".banger"

def _tmp_sibling(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")


def try_reflink(src: Path, dest: Path) -> bool:
    """Clone ``src`` to ``dest`` with FICLONE; False (and no ``dest``) when unsupported."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return True
        except OSError as exc:
            if exc.errno not in _NO_REFLINK:
                raise
    dest.unlink(missing_ok=True)
    return False


def _copy_range(fin: int, fout: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        count = min(_COPY_CHUNK, end - offset)
        try:
            n = os.copy_file_range(fin, fout, count, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            # Across filesystems of different types the kernel refuses: copy by hand.
            n = os.pwrite(fout, os.pread(fin, count, offset), offset)
        if n == 0:
            raise HostToolError(f"short copy at offset {offset}: the source shrank")
        offset += n


def sparse_copy(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` copying only data extents, so holes stay holes."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        fout.truncate(size)
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            hole = os.lseek(fin.fileno(), data, os.SEEK_HOLE)
            _copy_range(fin.fileno(), fout.fileno(), data, hole - data)
            pos = hole


def clone_file(src: Path, dest: Path) -> Literal["reflink", "sparse"]:
    """Reflink ``src`` to ``dest`` where the filesystem can, else sparse-copy it."""
    if try_reflink(src, dest):
        return "reflink"
    sparse_copy(src, dest)
    return "sparse"


def copy_sparsifying(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest``: a reflink where the filesystem can, else a copy that turns
    runs of zeros into holes (an imported, fully allocated image stays small)."""
    cp = require_tool("cp", "coreutils")
    run([cp, "--sparse=always", "--reflink=auto", os.fspath(src), os.fspath(dest)], timeout=1800)


def _qcow2_overlay(backing: Path, dest: Path, backing_format: DiskFormat) -> None:
    qemu_img = require_tool("qemu-img", "qemu-utils")
    argv = [qemu_img, "create", "-q", "-f", "qcow2", "-b", os.fspath(backing),
            "-F", backing_format]
    run([*argv, os.fspath(dest)], timeout=60)


def create_root_overlay(
    image_rootfs: Path, dest: Path, strategy: OverlayStrategy, *, progress: Progress = None,
    backing_format: DiskFormat | None = None,
) -> RootDisk:
    """Make ``dest`` a copy-on-write view of ``image_rootfs``; the image is never written.

    ``backing_format``: the base's format when it is not a raw image (a warm
    snapshot's saved root overlay).
    """
    if not image_rootfs.is_file():
        raise InvalidInput(
            f"image rootfs {image_rootfs} does not exist", hint="rebuild or re-import the image"
        )
    backing = image_rootfs.resolve()
    tmp = _tmp_sibling(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if strategy == "qcow2":
            _qcow2_overlay(backing, tmp, backing_format or "raw")
        elif strategy == "reflink":
            used = clone_file(backing, tmp)
            if progress:
                progress(f"root overlay: {used} copy of {backing.name}")
        elif strategy == "sparse":
            sparse_copy(backing, tmp)
        else:
            raise InvalidInput(f"unknown overlay strategy {strategy!r}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return RootDisk(path=dest.resolve(), format="qcow2" if strategy == "qcow2" else "raw")


def _work_disk_commands(image: Path, files: dict[str, Path]) -> list[str]:
    """Place each staged host file at its work-disk path (``/.ssh/...``, ``/.banger/...``),
    in root-only directories (made when missing, a seed's own closed to 0700)."""
    dirs = ["/.ssh"]
    if any(dest.startswith(f"/{HOST_KEY_DIR}/") for dest in files):
        dirs.append(f"/{HOST_KEY_DIR}")
    mkdirs, blocked = mkdir_commands(image, dirs)
    if blocked:
        raise InvalidInput(
            f"the work disk's /root{blocked[0]} is not a directory, so banger cannot put its "
            "SSH files there", hint="rebuild the image so that its /root holds no such entry",
        )
    cmds = ["cd /", *mkdirs]
    for d in dirs:
        cmds += [f"sif {d} mode 040700", f"sif {d} uid 0", f"sif {d} gid 0"]
    for dest, src in files.items():
        cmds += replace_file_commands(src, dest)
    return cmds


def _stage(staging: Path, name: str, data: bytes, mode: int) -> Path:
    path = staging / name
    path.write_bytes(data)
    path.chmod(mode)  # debugfs write copies it
    return path


def install_ssh_files(
    image: Path,
    authorized_keys: bytes,
    host_key: tuple[bytes, bytes] | None = None,
    *,
    gitconfig: bytes | None = None,
    extra_commands: Sequence[str] = (),
) -> None:
    """Write /root/.ssh/authorized_keys (and the VM's sshd host key, and the owner's git
    identity as /root/.gitconfig) into a work disk image, in one debugfs run."""
    staging = Path(tempfile.mkdtemp(prefix=f".{image.name}.", dir=image.parent))
    try:
        keys = authorized_keys.rstrip(b"\n") + b"\n"
        files = {"/.ssh/authorized_keys": _stage(staging, "authorized_keys", keys, 0o600)}
        if host_key is not None:
            d = f"/{HOST_KEY_DIR}"
            files[f"{d}/{HOST_KEY_FILE}"] = _stage(staging, "host_key", host_key[0], 0o600)
            files[f"{d}/{HOST_KEY_FILE}.pub"] = _stage(staging, "host_key.pub", host_key[1], 0o644)
        if gitconfig is not None:
            files["/.gitconfig"] = _stage(staging, "gitconfig", gitconfig, 0o644)
        debugfs_batch(image, [*extra_commands, *_work_disk_commands(image, files)],
                      ok_errors=REPLACE_OK_ERRORS)
        # Read the result back: a tolerated error must not hide a missing key.
        if read_ext4_file(image, "/.ssh/authorized_keys") != keys:
            raise HostToolError(
                f"could not write /root/.ssh/authorized_keys into {image.name}",
                hint=f"run: debugfs -w {image}  to see why",
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def create_work_disk(
    dest: Path,
    size_bytes: int,
    *,
    seed: Path | None,
    authorized_keys: bytes,
    host_key: tuple[bytes, bytes] | None = None,
    gitconfig: bytes | None = None,
    progress: Progress = None,
) -> None:
    """A fresh ext4 work disk of ``size_bytes`` from ``seed``, with our key authorised.

    With a seed the image's work seed is cloned (reflink, else sparse copy) and
    grown with resize2fs, which keeps every owner, mode and xattr of the seed
    exactly without root (a debugfs ``rdump`` + ``mkfs -d`` would re-own files
    as the daemon user). ``host_key`` is (private, public) sshd host key text;
    ``gitconfig`` becomes ``/root/.gitconfig`` (see ``host.git_identity``).
    """
    if seed is not None and seed.stat().st_size > size_bytes:
        raise InvalidInput(
            f"work disk size {size_bytes} is smaller than the image's work seed "
            f"({seed.stat().st_size} bytes)",
            hint="ask for a larger --disk",
        )
    tmp = _tmp_sibling(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if seed is None:
            make_ext4(tmp, size_bytes, label=WORK_LABEL, root_owner=(0, 0))
        else:
            used = clone_file(seed, tmp)
            if progress:
                progress(f"work disk: {used} copy of the work seed")
            if size_bytes > seed.stat().st_size:
                grow_ext4(tmp, size_bytes)
        # /root is 0700 in every Debian; a seed already carries its own mode.
        root_mode = ["sif / mode 040700"] if seed is None else []
        install_ssh_files(tmp, authorized_keys, host_key, gitconfig=gitconfig,
                          extra_commands=root_mode)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def grow_work_disk(path: Path, new_size: int) -> bool:
    """Grow the work disk at ``path`` to ``new_size`` bytes; False when already that size."""
    current = path.stat().st_size
    if new_size < current:
        raise InvalidInput(
            f"cannot shrink the work disk from {current} to {new_size} bytes",
            hint="disks only grow; create a new VM for a smaller disk",
        )
    if new_size == current:
        return False
    grow_ext4(path, new_size)
    return True
