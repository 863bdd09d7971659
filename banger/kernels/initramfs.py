"""The initramfs banger builds for every kernel: busybox, the contract's modules, one /init.

Distribution kernels build virtio as modules, so something must load them
before the root disk exists. This initramfs loads exactly those modules, in
dependency order, mounts ``/dev/vda`` and switches root. The archive (newc
cpio, gzip) is written in Python, so it holds ``/dev/console`` and root-owned
files without root.
"""

from __future__ import annotations

import gzip
import lzma
import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import InvalidInput
from banger.host.files import read_inside, write_private
from banger.host.probes import BUSYBOX_CANDIDATES, static_busybox
from banger.kernels.modules import (
    missing_modules,
    module_load_order,
    module_name,
    parse_modules_dep,
    read_modules_builtin,
    read_modules_dep,
    wanted_modules,
)

# Applets /init uses (plus a few that make a debugging shell usable).
APPLETS = (
    "sh", "mount", "umount", "insmod", "usleep", "sleep", "switch_root", "poweroff",
    "cat", "ls", "dmesg", "mkdir", "echo",
)  # fmt: skip
ROOT_WAIT_ITERATIONS = 300  # x 10 ms; virtio-blk probes during insmod, so this is a safety net

INIT_TEMPLATE = r"""#!/bin/sh
# banger initramfs: load the guest-contract modules, mount the root disk, switch root.
# Kernel command line: banger.root= (or root=/dev/...), rootfstype=, rootflags=, ro|rw,
# banger.init= (or init=). Anything else is passed through to the real init.
export PATH=/bin
set -f
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys

fail() {
    echo "banger-initramfs: error: $*"
    echo "banger-initramfs: powering off"
    poweroff -f
    exit 1
}

root=/dev/vda init=/sbin/init fstype=ext4 flags= mode=rw
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
    case "$arg" in
        banger.root=*|root=/dev/*) root="${arg#*=}" ;;
        banger.init=*|init=*) init="${arg#*=}" ;;
        rootfstype=*) fstype="${arg#*=}" ;;
        rootflags=*) flags="${arg#*=}" ;;
        ro|rw) mode="$arg" ;;
    esac
done

for m in @MODULES@; do
    insmod "/lib/modules/$m.ko" || echo "banger-initramfs: warning: cannot load module $m"
done

i=0
while [ ! -b "$root" ]; do
    i=$((i + 1))
    [ "$i" -gt @ROOT_WAIT@ ] && fail "root device $root did not appear (is it a virtio-blk disk?)"
    usleep 10000
done

mount -t "$fstype" -o "$mode${flags:+,$flags}" "$root" /newroot \
    || fail "cannot mount $root ($fstype, $mode${flags:+,$flags}) on /newroot"
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] \
    || fail "the root filesystem on $root has no $init (set banger.init=)"
for d in dev proc sys; do
    if [ -d "/newroot/$d" ]; then mount --move "/$d" "/newroot/$d"; else umount -l "/$d"; fi
done
# The real init inherits this environment: give it a normal PATH, not ours.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
exec switch_root /newroot "$init" "$@"
fail "switch_root to $init failed"
"""


def init_script(modules: list[str]) -> str:
    """The /init shell script that loads ``modules`` (names, in order) and switches root."""
    for m in modules:
        if not m.replace("_", "").replace("-", "").isalnum():
            raise InvalidInput(f"module name {m!r} is not safe in a shell script")
    return INIT_TEMPLATE.replace("@MODULES@", " ".join(modules) or '""').replace(
        "@ROOT_WAIT@", str(ROOT_WAIT_ITERATIONS)
    )


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc archive: a directory, regular file, symlink or device node."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def newc_archive(entries: list[CpioEntry]) -> bytes:
    """Serialise ``entries`` as a newc cpio archive (uid/gid 0, mtime 0: reproducible)."""
    out = bytearray()

    def add(ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int]) -> None:
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
        out.extend(b"070701" + "".join(f"{v:08X}" for v in fields).encode() + raw)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, e in enumerate(entries, 1):
        add(ino, e.name.lstrip("/"), e.mode, e.data, e.rdev)
    add(0, "TRAILER!!!", 0, b"", (0, 0))
    return bytes(out)


def find_busybox(candidates: tuple[Path, ...] = BUSYBOX_CANDIDATES) -> bytes:
    """The bytes of the host's static busybox (the one ``banger doctor`` checks)."""
    return static_busybox(candidates).read_bytes()


def _module_bytes(name: str, data: bytes) -> bytes:
    """A module's ELF bytes, decompressed so busybox insmod can load it."""
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return zlib.decompress(data, wbits=31)
    if name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _base_entries(busybox: bytes, init: str) -> list[CpioEntry]:
    dirs = ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"]
    entries = [CpioEntry(d, stat.S_IFDIR | 0o755) for d in dirs]
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    entries += [CpioEntry(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox") for a in APPLETS]
    entries.append(CpioEntry("init", stat.S_IFREG | 0o755, init.encode()))
    return entries


def plan_modules(
    modules_dir: Path | None, kernel_version: str, system_map: Path | None = None
) -> list[str]:
    """Paths (relative to ``modules_dir``) of the modules to load, in order."""
    if modules_dir is None:
        return []  # a kernel without modules has the contract built in, or will fail loudly
    dep_text = read_modules_dep(modules_dir, kernel_version, system_map=system_map)
    deps = parse_modules_dep(dep_text)
    builtin = read_modules_builtin(modules_dir)
    if builtin is not None:
        missing = missing_modules(deps, builtin)
        if missing:
            raise InvalidInput(
                f"kernel {kernel_version} has neither a module nor built-in support for "
                f"{', '.join(missing)}, which a banger guest needs",
                hint="use a kernel built with virtio, virtio-blk, virtio-net, vsock and ext4",
            )
    return module_load_order(dep_text, wanted_modules(deps))


def build_initramfs(
    modules_dir: Path | None, kernel_version: str, out: Path, system_map: Path | None = None
) -> list[str]:
    """Write banger's initramfs for this kernel to ``out`` (0600); return the module load order.

    ``modules_dir`` is the kernel's ``lib/modules/<version>`` tree (None when
    the kernel has no modules). Every module path ``modules.dep`` names is
    read only if it resolves inside that tree.
    """
    paths = plan_modules(modules_dir, kernel_version, system_map)
    names = [module_name(p) for p in paths]
    entries = _base_entries(find_busybox(), init_script(names))
    for rel, name in zip(paths, names, strict=True):
        assert modules_dir is not None  # plan_modules returns no paths without it
        raw = read_inside(modules_dir, rel, where=f"{modules_dir}/modules.dep")
        data = _module_bytes(rel, raw)
        entries.append(CpioEntry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, data))
    archive = gzip.compress(newc_archive(entries), compresslevel=6, mtime=0)
    tmp = out.with_name(f".{out.name}.tmp")
    write_private(tmp, archive)
    os.replace(tmp, out)
    return names
