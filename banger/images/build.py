"""The golden image: ``banger image build`` with mmdebstrap.

mmdebstrap bootstraps Debian (root mode when we are root, ``--mode=unshare``
otherwise) and hands the tree to a customize hook that runs this module
(``python -I -m banger.images.build finish STAGING ROOTDIR``) inside mmdebstrap's
namespace, where every file is still owned by uid 0: the hook writes the guest
bits and runs ``mkfs.ext4 -d`` for ``rootfs.ext4`` and ``work-seed.ext4``, so
ownership is right in both modes without a directory of subuid-owned files.
The result is staged under ``images_dir`` and renamed into ``images_dir/<id>``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from banger.core.cancel import checkpoint
from banger.core.errors import InvalidInput
from banger.core.names import new_id
from banger.core.validate import validate_name
from banger.host.ext4 import make_ext4
from banger.host.files import make_scratch, sha256_file
from banger.host.proc import python_module_argv
from banger.host.run import require_tool, run
from banger.images.guest_bits import (
    LEAN_INIT,
    check_bootable,
    generate_host_key,
    guest_files,
    write_guest_files,
)
from banger.images.manifest import (
    ROOTFS_NAME,
    WORK_SEED_NAME,
    ImageManifest,
    write_manifest,
)

Progress = Callable[[str], None]

BASE_PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "udev",
    "openssh-server",
    "iproute2",
    "ca-certificates",
    "git",
    "curl",
)
SUITES = ("bullseye", "bookworm", "trixie", "forky", "sid", "unstable", "testing", "stable")
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
MIB = 1024 * 1024
ROOTFS_HEADROOM = 2048 * MIB
WORK_SEED_MIN = 64 * MIB
BUILD_TIMEOUT = 1800.0

# Debian policy 5.6.1: lowercase alphanumerics and + - . , at least two long,
# starting with an alphanumeric.
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# Docs, man pages and translations nobody reads in a sandbox: smaller, faster builds.
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)


def validate_package_names(packages: Sequence[str]) -> tuple[str, ...]:
    """Return the packages, de-duplicated in order; InvalidInput naming the first bad one."""
    seen: dict[str, None] = {}
    for pkg in packages:
        if not _PACKAGE_RE.fullmatch(pkg):
            raise InvalidInput(
                f"'{pkg}' is not a Debian package name",
                hint="use names like 'python3' or 'build-essential' "
                "(lowercase letters, digits, '+', '-', '.')",
            )
        seen.setdefault(pkg, None)
    return tuple(seen)


def parse_source(source: str) -> str:
    """``debian:<suite>`` -> suite; InvalidInput for anything else."""
    distro, _, suite = source.partition(":")
    if distro != "debian" or suite not in SUITES:
        raise InvalidInput(
            f"cannot build from '{source}'",
            hint=f"use --from debian:SUITE with SUITE one of {', '.join(SUITES)}; "
            "for other distributions use banger image pull REF",
        )
    return suite


def mirror_lines(suite: str) -> list[str]:
    """The apt sources for ``suite`` (stable releases get updates and security)."""
    lines = [f"deb {MIRROR} {suite} main"]
    if suite not in ("sid", "unstable", "testing"):
        lines.append(f"deb {MIRROR} {suite}-updates main")
        lines.append(f"deb {SECURITY_MIRROR} {suite}-security main")
    return lines


def mmdebstrap_argv(
    mmdebstrap: str, suite: str, packages: Sequence[str], hook: str, *, unshare: bool
) -> list[str]:
    """The mmdebstrap command line (pure; ``hook`` is the customize-hook shell text)."""
    argv = [
        mmdebstrap,
        "--mode=unshare" if unshare else "--mode=root",
        "--variant=minbase",
        "--format=null",
        "--include=" + ",".join(packages),
        "--aptopt=Acquire::Retries \"3\"",
    ]
    argv += [f"--dpkgopt={opt}" for opt in _DPKG_EXCLUDES]
    argv += [f"--customize-hook={hook}", suite, "/dev/null"]
    return argv + mirror_lines(suite)


def finish_hook_command(staging: Path) -> str:
    """The customize-hook text: rerun this module on mmdebstrap's tree (``$1``)."""
    argv = python_module_argv("banger.images.build", "finish", str(staging))
    return shlex.join(argv) + ' "$1"'


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            # Round each entry up to a 4 KiB block, plus its inode.
            total += ((st.st_size + 4095) // 4096) * 4096 + 256
    return total


def _round_up(n: int, unit: int = 64 * MIB) -> int:
    return ((n + unit - 1) // unit) * unit


@contextlib.contextmanager
def _plain_view(rootdir: Path, mountpoint: Path) -> Iterator[Path]:
    """A non-recursive bind of ``rootdir``: the tree without mmdebstrap's proc/sys/dev mounts."""
    mount = require_tool("mount", "mount")
    umount = require_tool("umount", "mount")
    mountpoint.mkdir()
    run([mount, "--bind", str(rootdir), str(mountpoint)], timeout=30)
    try:
        yield mountpoint
    finally:
        run([umount, str(mountpoint)], timeout=60)
        mountpoint.rmdir()


def finish_rootfs(staging: Path, rootdir: Path, size_bytes: int | None = None) -> None:
    """Inside mmdebstrap's namespace: guest bits, then rootfs.ext4 and work-seed.ext4."""
    with _plain_view(rootdir, staging / "tree") as tree:
        for stale in ("rsa", "ecdsa", "dsa", "ed25519"):
            for suffix in ("", ".pub"):
                (tree / f"etc/ssh/ssh_host_{stale}_key{suffix}").unlink(missing_ok=True)
        write_guest_files(tree, guest_files(host_key=generate_host_key()))
        check_bootable(tree)
        if size_bytes is None:
            size_bytes = _round_up(int(_tree_bytes(tree) * 1.3) + ROOTFS_HEADROOM)
        make_ext4(staging / ROOTFS_NAME, size_bytes, source_dir=tree, label="banger-root")
        seed_size = _round_up(max(WORK_SEED_MIN, 2 * _tree_bytes(tree / "root")), 16 * MIB)
        seed = staging / WORK_SEED_NAME
        make_ext4(seed, seed_size, source_dir=tree / "root", label="banger-work")


def build_image(
    name: str,
    images_dir: Path,
    *,
    source: str = "debian:bookworm",
    packages: Sequence[str] = (),
    size_bytes: int | None = None,
    kernel_name: str | None,
    progress: Progress | None = None,
) -> ImageManifest:
    """Build a golden image into ``images_dir/<id>/`` and return its manifest."""
    say = progress or (lambda _msg: None)
    validate_name(name, "image")
    suite = parse_source(source)
    extra = validate_package_names(packages)
    if size_bytes is not None and size_bytes < 512 * MIB:
        raise InvalidInput("image size must be at least 512M", hint="pass --size 4G or more")
    mmdebstrap = require_tool("mmdebstrap", "mmdebstrap")
    require_tool("mkfs.ext4", "e2fsprogs")
    require_tool("ssh-keygen", "openssh-client")
    all_packages = validate_package_names(BASE_PACKAGES + extra)
    images_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    image_id = new_id()
    staging = make_scratch(images_dir, f"build-{image_id}-")
    started = time.monotonic()
    try:
        say(f"bootstrap debian:{suite} ({len(all_packages)} packages) and guest bits")
        hook = finish_hook_command(staging)
        if size_bytes is not None:
            hook = f"BANGER_ROOTFS_BYTES={int(size_bytes)} {hook}"
        argv = mmdebstrap_argv(mmdebstrap, suite, all_packages, hook, unshare=os.geteuid() != 0)
        run(argv, timeout=BUILD_TIMEOUT)
        say("checksum rootfs.ext4")
        rootfs = staging / ROOTFS_NAME
        manifest = ImageManifest(
            id=image_id,
            name=name,
            source=f"debian:{suite}",
            kernel_name=kernel_name,
            packages=all_packages,
            rootfs_bytes=rootfs.stat().st_size,
            work_seed_bytes=(staging / WORK_SEED_NAME).stat().st_size,
            rootfs_sha256=sha256_file(rootfs),
            init_profile="lean",
            init=LEAN_INIT,
            build_seconds=round(time.monotonic() - started, 1),
        )
        write_manifest(staging, manifest)
        checkpoint()  # the last one: past the rename the image is published
        final = images_dir / image_id
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"built {name} ({image_id}) in {manifest.build_seconds:.0f}s")
    return manifest


def _main(argv: list[str]) -> int:
    """Entry point of the customize hook: ``finish STAGING ROOTDIR``."""
    if len(argv) != 3 or argv[0] != "finish":
        print("usage: python -m banger.images.build finish STAGING ROOTDIR", file=sys.stderr)
        return 2
    size = os.environ.get("BANGER_ROOTFS_BYTES")
    finish_rootfs(Path(argv[1]), Path(argv[2]), int(size) if size else None)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
