"""Where one VM's files live, and the launch spec built from its row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from banger.config import Paths
from banger.core.vmspec import Accel, DiskFormat, NetSpec, RootDisk, VMSpec
from banger.host.probes import host_tsc_khz
from banger.host.ssh import HOST_KEY_FILE
from banger.kernels.manifest import INITRD, VMLINUX, VMLINUZ
from banger.store.records import ImageRecord, KernelRecord, VMRecord
from banger.vmm.traits import BackendTraits, KernelForm

# The file each kernel form is stored as in kernels_dir/<name>/.
KERNEL_FILES = {KernelForm.VMLINUX: VMLINUX, KernelForm.BZIMAGE: VMLINUZ}


@dataclass(frozen=True)
class VMFiles:
    """``state_dir/vms/<id>/`` holds the disks and logs; ``runtime_dir/vms/<id>/`` the sockets."""

    dir: Path
    run_dir: Path
    root_format: DiskFormat  # the backend's (traits.root_format)

    @classmethod
    def of(cls, paths: Paths, vm_id: str, root_format: DiskFormat) -> VMFiles:
        return cls(paths.vms / vm_id, paths.runtime_dir / "vms" / vm_id, root_format)

    @property
    def root(self) -> Path:
        return self.dir / f"root.{self.root_format}"

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
    def ssh_log(self) -> Path:
        """The shared SSH connection's own log (its master runs in the background)."""
        return self.dir / "ssh.log"

    @property
    def host_key_pub(self) -> Path:
        return self.dir / f"{HOST_KEY_FILE}.pub"


def tcg_cmdline(accel: Accel) -> tuple[str, ...]:
    """Kernel arguments a guest needs under this accelerator.

    Under TCG on a loaded host the guest may fail to calibrate its TSC and hang;
    handing it the host's clock rate skips the calibration. Its TSC counts the VMM's
    clock (it stands still only while the VM is paused), but the clocksource watchdog
    compares it with jiffies, which a slow TCG guest loses, marks it unstable and
    falls back to refined-jiffies: the guest's clock then drifts seconds behind
    under load. ``tsc=reliable`` keeps the TSC. ``highres=off`` keeps the periodic
    tick the guest had on jiffies: high-resolution timers reprogram the emulated
    timer for every event, which made guest work (SSH, tar) ~20-30 % slower here.
    """
    if accel != "tcg":
        return ()
    khz = host_tsc_khz()
    return (f"tsc_early_khz={khz}", "tsc=reliable", "highres=off") if khz else ()


def boot_kernel(kernel: KernelRecord, traits: BackendTraits) -> Path:
    """The stored kernel file the backend boots: its first preferred form that is stored.

    With none stored, the last form's path, so the launch fails naming that file.
    """
    paths = [kernel.path / KERNEL_FILES[form] for form in traits.kernel_forms]
    return next((p for p in paths if p.exists()), paths[-1])


def build_spec(
    vm: VMRecord,
    files: VMFiles,
    image: ImageRecord,
    kernel: KernelRecord,
    net: NetSpec | None,
    traits: BackendTraits,
    accel: Accel,
) -> VMSpec:
    """The backend's view of ``vm`` for one boot."""
    initrd = kernel.path / INITRD
    return VMSpec(
        vm_id=vm.id,
        name=vm.name,
        vcpu=vm.vcpu,
        memory_mib=vm.memory_mib,
        kernel=boot_kernel(kernel, traits),
        initrd=initrd if initrd.exists() else None,
        root=RootDisk(files.root, files.root_format),
        work_disk=files.work,
        console_log=files.console_log,
        vmm_log=files.vmm_log,
        run_dir=files.run_dir,
        net=net,
        accel=accel,
        init=image.manifest.init if image.manifest else None,
        cmdline_extra=tcg_cmdline(accel),
    )


def adoption_spec(vm_id: str, run_dir: Path, disk_dir: Path, root_format: DiskFormat) -> VMSpec:
    """A spec for a VMM with no row (a snapshot template, a warm pool member) that a killed
    daemon left: only where its pidfile and control socket are matters, all a backend's
    ``adopt`` reads to prove a process is that VMM."""
    return VMSpec(
        vm_id=vm_id, name="banger-leftover", vcpu=1, memory_mib=64, kernel=disk_dir / "kernel",
        root=RootDisk(disk_dir / "root", root_format), work_disk=disk_dir / "work.ext4",
        console_log=disk_dir / "console.log", vmm_log=disk_dir / "vmm.log", run_dir=run_dir,
    )
