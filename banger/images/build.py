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

import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from banger.core.cancel import checkpoint
from banger.core.defaults import DEFAULT_IMAGE_SOURCE
from banger.core.errors import InvalidInput
from banger.core.names import new_id
from banger.core.validate import validate_name
from banger.host import mmdebstrap
from banger.host.ext4 import make_ext4, require_e2fsprogs
from banger.host.files import make_scratch, sha256_file
from banger.host.mount import bind_view
from banger.host.proc import python_module_argv
from banger.host.ssh import fresh_host_key, require_keygen
from banger.images.guest_bits import (
    LEAN_INIT,
    HostKey,
    check_bootable,
    guest_files,
    write_guest_files,
)
from banger.images.manifest import (
    ROOTFS_NAME,
    WORK_SEED_NAME,
    ImageManifest,
    write_manifest,
)
from banger.images.sizing import (
    MIB,
    default_work_seed_size,
    golden_rootfs_size,
    tree_usage,
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
BUILD_TIMEOUT = 1800.0

# Debian policy 5.6.1: lowercase alphanumerics and + - . , at least two long,
# starting with an alphanumeric.
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# Docs, man pages and translations nobody reads in a sandbox: smaller, faster builds.
DPKG_EXCLUDES = (
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


def finish_hook_command(staging: Path) -> str:
    """The customize-hook text: rerun this module on mmdebstrap's tree (``$1``)."""
    argv = python_module_argv("banger.images.build", "finish", str(staging))
    return shlex.join(argv) + ' "$1"'


def finish_rootfs(staging: Path, rootdir: Path, size_bytes: int | None = None) -> None:
    """Inside mmdebstrap's namespace: guest bits, then rootfs.ext4 and work-seed.ext4."""
    # A non-recursive bind: the tree without mmdebstrap's proc/sys/dev mounts.
    with bind_view(rootdir, staging / "tree") as tree:
        for stale in ("rsa", "ecdsa", "dsa", "ed25519"):
            for suffix in ("", ".pub"):
                (tree / f"etc/ssh/ssh_host_{stale}_key{suffix}").unlink(missing_ok=True)
        write_guest_files(tree, guest_files(host_key=HostKey(*fresh_host_key("banger-image"))))
        check_bootable(tree)
        if size_bytes is None:
            size_bytes = golden_rootfs_size(tree_usage(tree))
        make_ext4(staging / ROOTFS_NAME, size_bytes, source_dir=tree, label="banger-root")
        seed_size = default_work_seed_size(tree_usage(tree / "root"))
        seed = staging / WORK_SEED_NAME
        make_ext4(seed, seed_size, source_dir=tree / "root", label="banger-work")


def build_image(
    name: str,
    images_dir: Path,
    *,
    source: str = DEFAULT_IMAGE_SOURCE,
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
    mmdebstrap.require_mmdebstrap()
    require_e2fsprogs()
    require_keygen()
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
        mmdebstrap.bootstrap(suite, all_packages, hook, mirrors=mirror_lines(suite),
                             dpkg_options=DPKG_EXCLUDES, timeout=BUILD_TIMEOUT)
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
