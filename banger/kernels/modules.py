"""Kernel module metadata: which modules the guest contract needs, and their load order.

Pure functions over the text of ``modules.dep`` and ``modules.builtin``; the
one side effect, running ``depmod`` for a tree that ships without
``modules.dep`` (Debian's .deb does: its postinst runs depmod), is
:func:`read_modules_dep`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from banger.core.errors import InvalidInput
from banger.host.files import read_inside
from banger.host.kmod import depmod_modules_dep

# What the guest contract (DESIGN.md s.4) needs: the virtio-mmio transport
# (QEMU microvm and Firecracker have no PCI), the root and work disks, the
# network, vsock for the agent, and ext4 for both disks. Every extra module
# costs ~20 ms of boot under TCG.
CONTRACT_MODULES: tuple[str, ...] = (
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "ext4",
)
# Loaded when the kernel has them as modules: the ACPI power button, so that QEMU's
# system_powerdown reaches the guest's init as a clean poweroff (vm stop's fallback),
# and virtio-serial, the control channel a restored snapshot gets its identity over
# (docs/snapshots.md).
OPTIONAL_MODULES: tuple[str, ...] = ("button", "evdev", "virtio_console")
# ext4 and jbd2 ask for crc32c through the crypto API (a softdep modprobe would
# honour); the initramfs has no modprobe, so load it explicitly when modular.
SOFTDEPS: Mapping[str, tuple[str, ...]] = {"ext4": ("crc32c_generic",), "jbd2": ("crc32c_generic",)}

_KO_SUFFIX = re.compile(r"\.ko(\.(gz|xz|zst))?$")


def module_name(path: str) -> str:
    """``kernel/drivers/net/virtio_net.ko.xz`` -> ``virtio_net`` (dashes become underscores)."""
    base = path.rsplit("/", 1)[-1]
    return _KO_SUFFIX.sub("", base).replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """Map module name -> (its path, the paths it depends on) from ``modules.dep`` text."""
    out: dict[str, tuple[str, list[str]]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, deps = line.partition(":")
        if not sep or not _KO_SUFFIX.search(path):
            raise InvalidInput(f"modules.dep line {lineno} is malformed: {raw!r}")
        out[module_name(path)] = (path.strip(), deps.split())
    return out


def parse_modules_builtin(text: str) -> frozenset[str]:
    """Names of the modules built into the kernel, from ``modules.builtin`` text."""
    return frozenset(module_name(line.strip()) for line in text.splitlines() if line.strip())


def module_load_order(modules_dep_text: str, wanted: Iterable[str]) -> list[str]:
    """Paths of ``wanted`` modules and their dependencies, dependencies first.

    Names absent from ``modules.dep`` (built in, or not in this kernel) are
    skipped; the caller decides whether that is an error.
    """
    deps = parse_modules_dep(modules_dep_text)
    order: list[str] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise InvalidInput(f"modules.dep has a dependency cycle: {cycle}")
        visiting.append(name)
        path, needs = deps[name]
        # depmod lists the deepest dependencies last; visiting in reverse keeps
        # the order close to modprobe's.
        for dep in reversed(needs):
            dep_name = module_name(dep)
            if dep_name in deps:
                visit(dep_name)
        visiting.pop()
        done.add(name)
        order.append(path)

    for name in wanted:
        name = name.replace("-", "_")
        if name in deps:
            visit(name)
    return order


def wanted_modules(
    deps: Mapping[str, object],
    contract: Iterable[str] = CONTRACT_MODULES,
    optional: Iterable[str] = OPTIONAL_MODULES,
) -> list[str]:
    """The contract's modules, their soft dependencies, and the optional ones this kernel has."""
    out: list[str] = []
    for name in contract:
        for soft in SOFTDEPS.get(name, ()) if name in deps else ():
            if soft in deps and soft not in out:
                out.append(soft)
        if name not in out:
            out.append(name)
    out += [name for name in optional if name in deps and name not in out]
    return out


def missing_modules(
    deps: Mapping[str, object], builtin: frozenset[str], contract: Iterable[str] = CONTRACT_MODULES
) -> list[str]:
    """Required contract modules that this kernel has neither as a module nor built in."""
    return [m for m in contract if m not in deps and m not in builtin]


def read_modules_dep(modules_dir: Path, version: str, *, system_map: Path | None = None) -> str:
    """The text of ``modules_dir/modules.dep``, generated with ``depmod -n`` when absent.

    ``depmod -n`` writes to stdout only, so a source tree is never modified.
    """
    if os.path.lexists(modules_dir / "modules.dep"):
        dep = read_inside(modules_dir, "modules.dep", where=f"kernel modules {modules_dir}")
        return dep.decode("utf-8", "replace")
    return depmod_modules_dep(modules_dir, version, system_map=system_map)


def read_modules_builtin(modules_dir: Path) -> frozenset[str] | None:
    """Built-in module names, or None when the tree has no ``modules.builtin``."""
    if not os.path.lexists(modules_dir / "modules.builtin"):
        return None
    text = read_inside(modules_dir, "modules.builtin", where=f"kernel modules {modules_dir}")
    return parse_modules_builtin(text.decode("utf-8", "replace"))
