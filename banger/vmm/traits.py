"""What each VMM backend is, as data: the daemon asks these instead of naming a VMM.

In the spirit of virtme-ng's per-architecture object: one frozen value per
backend says how its root overlay is made, which kernel forms it boots (in order
of preference), which network kinds it offers, whether it can snapshot, and how
it asks a guest to stop. ``TRAITS`` is the one table (golden tests in
tests/unit/test_vmm_traits.py; docs/architecture.md shows it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from banger.core.states import NetMode
from banger.core.vmspec import DiskFormat
from banger.host.disks import OverlayStrategy


class KernelForm(StrEnum):
    VMLINUX = "vmlinux"  # the uncompressed ELF (PVH entry)
    BZIMAGE = "bzImage"  # the compressed, self-extracting image (a distribution's vmlinuz)


class GuestStop(StrEnum):
    """How the VMM asks a guest to power off, after banger's poweroff over SSH."""

    ACPI_POWERDOWN = "ACPI powerdown"
    CTRL_ALT_DEL = "Ctrl-Alt-Del"


@dataclass(frozen=True)
class BackendTraits:
    name: str
    root_overlay: OverlayStrategy  # how a VM's copy-on-write root is made from the image
    kernel_forms: tuple[KernelForm, ...]  # bootable forms, preferred first
    net_kinds: frozenset[NetMode]
    can_snapshot: bool
    guest_stop: GuestStop

    @property
    def root_format(self) -> DiskFormat:
        """The disk format of the root overlay, as the VMM opens it."""
        return "qcow2" if self.root_overlay == "qcow2" else "raw"


TRAITS: Mapping[str, BackendTraits] = {
    # QEMU boots the ELF (PVH) ~0.5 s faster under TCG than the bzImage, and takes either.
    "qemu": BackendTraits(
        name="qemu",
        root_overlay="qcow2",
        kernel_forms=(KernelForm.VMLINUX, KernelForm.BZIMAGE),
        net_kinds=frozenset({NetMode.TAP, NetMode.USER}),
        can_snapshot=True,  # QMP migration to a file (vmm/qemu_snapshot.py)
        guest_stop=GuestStop.ACPI_POWERDOWN,
    ),
    # vmm/firecracker.py: contract-tested against Firecracker's API spec, no real run yet.
    "firecracker": BackendTraits(
        name="firecracker",
        root_overlay="reflink",  # raw disks only; a reflink clone, else a sparse copy
        kernel_forms=(KernelForm.VMLINUX,),
        net_kinds=frozenset({NetMode.TAP}),
        # /snapshot/create and /load (SnapshotCapable); the agent answers on vsock
        can_snapshot=True,
        guest_stop=GuestStop.CTRL_ALT_DEL,
    ),
}
