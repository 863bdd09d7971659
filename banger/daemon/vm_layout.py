"""Where one VM's files live, and the launch spec built from its row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from banger.config import Paths
from banger.core.vmspec import Accel, NetSpec, RootDisk, VMSpec
from banger.host.probes import host_tsc_khz
from banger.store.records import ImageRecord, KernelRecord, VMRecord


@dataclass(frozen=True)
class VMFiles:
    """``state_dir/vms/<id>/`` holds the disks and logs; ``runtime_dir/vms/<id>/`` the sockets."""

    dir: Path
    run_dir: Path

    @classmethod
    def of(cls, paths: Paths, vm_id: str) -> VMFiles:
        return cls(paths.vms / vm_id, paths.runtime_dir / "vms" / vm_id)

    @property
    def root(self) -> Path:
        return self.dir / "root.qcow2"

    @property
    def work(self) -> Path:
        return self.dir / "work.ext4"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def vmm_log(self) -> Path:
        return self.dir / "vmm.log"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def host_key_pub(self) -> Path:
        return self.dir / "ssh_host_ed25519_key.pub"


def tcg_cmdline(accel: Accel) -> tuple[str, ...]:
    """Kernel arguments a guest needs under this accelerator.

    Under TCG on a loaded host the guest may fail to calibrate its TSC and hang;
    handing it the host's clock rate skips the calibration.
    """
    if accel != "tcg":
        return ()
    khz = host_tsc_khz()
    return (f"tsc_early_khz={khz}",) if khz else ()


def build_spec(
    vm: VMRecord,
    files: VMFiles,
    image: ImageRecord,
    kernel: KernelRecord,
    net: NetSpec | None,
    accel: Accel,
) -> VMSpec:
    """The backend's view of ``vm`` for one boot."""
    kdir = kernel.path
    # QEMU boots the uncompressed ELF (PVH) ~0.5 s faster under TCG than the bzImage.
    vmlinux = kdir / "vmlinux"
    initrd = kdir / "initrd.img"
    return VMSpec(
        vm_id=vm.id,
        name=vm.name,
        vcpu=vm.vcpu,
        memory_mib=vm.memory_mib,
        kernel=vmlinux if vmlinux.exists() else kdir / "vmlinuz",
        vmlinux=vmlinux if vmlinux.exists() else None,
        initrd=initrd if initrd.exists() else None,
        root=RootDisk(files.root, "qcow2"),
        work_disk=files.work,
        console_log=files.console_log,
        vmm_log=files.vmm_log,
        run_dir=files.run_dir,
        net=net,
        accel=accel,
        init=image.manifest.init if image.manifest else None,
        cmdline_extra=tcg_cmdline(accel),
    )
