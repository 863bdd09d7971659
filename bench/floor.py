"""The floor: the same kernel and image booted by a bare ``qemu-system-x86_64`` plus an SSH poll.

No daemon. The QEMU command line is the one banger launches (its own pure
builder ``qemu_argv`` on a spec with the same vCPUs, memory, kernel, initrd,
disks, ``banger.init=``, ``tsc_early_khz`` and ``-cpu qemu64,+rdrand``), minus
``-daemonize`` so QEMU runs in the foreground. The network is the same too: a
TAP on banger's bridge, so SSH goes to a guest address exactly as for a VM.

Timed: from starting QEMU until ``ssh root@GUEST true`` first succeeds, plus
killing QEMU (``vm run --rm`` also ends its VM). Not timed, reported apart:
preparing the disks (qcow2 overlay, work disk with the key), which a bare
QEMU user would do once and banger does per VM in its ``disks`` stage.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from banger.core.vmspec import RootDisk, TapNet, VMSpec
from banger.daemon.vm_layout import boot_kernel, tcg_cmdline
from banger.host import disks, ssh
from banger.host.net import allocate_mac
from banger.store.records import KernelRecord
from banger.vmm.factory import HostFacts
from banger.vmm.qemu import QemuBackend, qemu_argv

FLOOR_TAP = "bgbfloor0"
SSH_POLL_S = 0.025
BOOT_DEADLINE_S = 120.0


@dataclass(frozen=True)
class FloorSetup:
    """What the floor boots: banger's imported kernel and image, on banger's bridge."""

    kernel_dir: Path
    image_dir: Path
    init: str | None
    bridge: str
    bridge_cidr: str
    vcpu: int
    memory_mib: int
    disk_bytes: int

    @property
    def guest_ip(self) -> str:
        """The last host address of the bridge's subnet (banger allocates from the bottom)."""
        iface = ipaddress.IPv4Interface(self.bridge_cidr)
        last = iface.network.broadcast_address - 1
        return f"{last}/{iface.network.prefixlen}"

    @property
    def gateway(self) -> str:
        return str(ipaddress.IPv4Interface(self.bridge_cidr).ip)


@dataclass(frozen=True)
class FloorBoot:
    prep_s: float  # disks and key (not part of the floor)
    ssh_ready_s: float  # QEMU started -> first successful `ssh true`
    total_s: float  # ssh_ready_s + killing QEMU


def floor_argv(spec: VMSpec) -> list[str]:
    """banger's QEMU command line for ``spec``, in the foreground."""
    return [a for a in qemu_argv(spec) if a != "-daemonize"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def floor_tap(bridge: str) -> Iterator[str]:
    """A TAP on ``bridge`` for the floor guest, removed on exit."""
    subprocess.run(["ip", "link", "delete", FLOOR_TAP], capture_output=True, check=False)
    _ip("tuntap", "add", "dev", FLOOR_TAP, "mode", "tap")
    try:
        _ip("link", "set", FLOOR_TAP, "master", bridge, "up")
        yield FLOOR_TAP
    finally:
        subprocess.run(["ip", "link", "delete", FLOOR_TAP], capture_output=True, check=False)


def _prepare(setup: FloorSetup, workdir: Path) -> tuple[Path, Path, Path]:
    """Overlay, work disk (seed + our key + a host key) and the client key."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "id_ed25519"
    pub = ssh.ensure_ssh_key(key)
    overlay, work = workdir / "root.qcow2", workdir / "work.ext4"
    overlay_kind = QemuBackend.traits.root_overlay
    disks.create_root_overlay(setup.image_dir / "rootfs.ext4", overlay, overlay_kind)
    seed = setup.image_dir / "work-seed.ext4"
    disks.create_work_disk(
        work, setup.disk_bytes, seed=seed if seed.exists() else None, authorized_keys=pub,
        host_key=ssh.fresh_host_key("banger-vm"),
    )  # fmt: skip
    return overlay, work, key


def _spec(setup: FloorSetup, workdir: Path, overlay: Path, work: Path, tap: str) -> VMSpec:
    accel = HostFacts.probe().accel  # what the daemon picks on this host
    kernel = KernelRecord("bench", "", "bench", setup.kernel_dir)
    initrd = setup.kernel_dir / "initrd.img"
    return VMSpec(
        vm_id="benchfloor",
        name="benchfloor",
        vcpu=setup.vcpu,
        memory_mib=setup.memory_mib,
        kernel=boot_kernel(kernel, QemuBackend.traits),
        initrd=initrd if initrd.exists() else None,
        root=RootDisk(overlay, QemuBackend.traits.root_format),
        work_disk=work,
        console_log=workdir / "console.log",
        vmm_log=workdir / "vmm.log",
        run_dir=workdir / "run",
        net=TapNet(
            tap_name=tap,
            mac=allocate_mac("benchfloor"),
            guest_ip=setup.guest_ip,
            gateway=setup.gateway,
        ),
        accel=accel,
        init=setup.init,
        cmdline_extra=tcg_cmdline(accel),
    )


def _ssh_true(key: Path, host: str) -> bool:
    argv = [
        "ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR", f"root@{host}", "true",
    ]  # fmt: skip
    try:
        return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _console_tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-30:])


def boot_floor(setup: FloorSetup, workdir: Path) -> FloorBoot:
    """One floor boot in ``workdir`` (QEMU is killed and the TAP removed before returning)."""
    t0 = time.perf_counter()
    overlay, work, key = _prepare(setup, workdir)
    prep = time.perf_counter() - t0
    host = setup.guest_ip.split("/")[0]
    with floor_tap(setup.bridge) as tap:
        spec = _spec(setup, workdir, overlay, work, tap)
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        argv = floor_argv(spec)
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while not _ssh_true(key, host):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"floor QEMU exited ({proc.returncode}):\n{_console_tail(spec.console_log)}"
                    )
                if time.perf_counter() - started > BOOT_DEADLINE_S:
                    raise TimeoutError(
                        f"floor guest: no SSH in {BOOT_DEADLINE_S}s:\n"
                        f"{_console_tail(spec.console_log)}"
                    )
                time.sleep(SSH_POLL_S)
            ready = time.perf_counter() - started
        finally:
            proc.kill()
            proc.wait(timeout=30)
        total = time.perf_counter() - started
    return FloorBoot(prep_s=prep, ssh_ready_s=ready, total_s=total)
