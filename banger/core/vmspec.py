"""What a VMM needs to launch one VM: frozen data, validated once, plus its kernel command line.

The daemon builds a ``VMSpec`` from the store; backends (``vmm/qemu.py``,
``vmm/firecracker.py``) turn it into argv or API calls without side effects.
Per-VM settings reach the guest on the kernel command line (DESIGN.md s.4),
read by the bootstrap in ``banger/guest/``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from banger.core.errors import InvalidInput
from banger.core.publish import PublishedPort

DiskFormat = Literal["qcow2", "raw"]
Accel = Literal["kvm", "tcg"]
# A VM's part in a warm snapshot (docs/snapshots.md): a template boots with the
# guest agent and no address, a clone starts from the template's saved state;
# both have the control channel, so their devices match.
SnapshotRole = Literal["template", "clone"]

# sun_path is 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107
# x86 COMMAND_LINE_SIZE.
CMDLINE_MAX = 2048

# QEMU user-mode networking (slirp) always hands out these addresses.
SLIRP_GUEST_IP = "10.0.2.15/24"
SLIRP_GATEWAY = "10.0.2.2"
SLIRP_DNS = "10.0.2.3"

_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.ASCII)


def _require_absolute(what: str, path: Path) -> None:
    # The VMM may chdir("/") when it daemonizes, and adopt() matches paths
    # literally in /proc/<pid>/cmdline, so every path must be absolute.
    if not path.is_absolute():
        raise InvalidInput(
            f"{what} path {str(path)!r} is not absolute", hint="pass an absolute path"
        )


def _check_mac(mac: str) -> None:
    # The low bit of the first octet marks multicast, which a NIC must not use.
    if not _MAC_RE.fullmatch(mac) or int(mac[:2], 16) & 1:
        raise InvalidInput(
            f"invalid MAC address {mac!r}", hint="use a unicast MAC like 02:00:00:00:00:01"
        )


@dataclass(frozen=True)
class RootDisk:
    """The VM's copy-on-write root overlay (``/dev/vda``)."""

    path: Path
    format: DiskFormat = "raw"

    def __post_init__(self) -> None:
        _require_absolute("root disk", self.path)
        if self.format not in ("qcow2", "raw"):
            raise InvalidInput(f"unknown root disk format {self.format!r}", hint="use qcow2 or raw")


@dataclass(frozen=True)
class TapNet:
    """A TAP on the host bridge with a static guest address."""

    tap_name: str
    mac: str
    guest_ip: str  # CIDR, e.g. "172.16.0.2/24"
    gateway: str
    dns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_mac(self.mac)
        try:
            iface = ipaddress.IPv4Interface(self.guest_ip)
            gw = ipaddress.IPv4Address(self.gateway)
            for d in self.dns:
                ipaddress.IPv4Address(d)
        except ValueError as exc:
            raise InvalidInput(f"invalid guest network settings: {exc}") from exc
        if "/" not in self.guest_ip:
            raise InvalidInput(
                f"guest IP {self.guest_ip!r} has no prefix length", hint="use CIDR: 172.16.0.2/24"
            )
        if gw not in iface.network:
            raise InvalidInput(f"gateway {gw} is outside the guest's network {iface.network}")
        if not self.tap_name or len(self.tap_name) > 15:
            raise InvalidInput(f"invalid TAP name {self.tap_name!r}", hint="use 1-15 characters")


@dataclass(frozen=True)
class UserNet:
    """QEMU user-mode networking: no privileges, SSH (and published ports) forwarded."""

    ssh_host_port: int
    mac: str
    forwards: tuple[PublishedPort, ...] = ()  # QEMU's hostfwd: the VM's published ports
    guest_ip: str = field(default=SLIRP_GUEST_IP, init=False)
    gateway: str = field(default=SLIRP_GATEWAY, init=False)
    dns: tuple[str, ...] = field(default=(SLIRP_DNS,), init=False)

    def __post_init__(self) -> None:
        _check_mac(self.mac)
        if not 1 <= self.ssh_host_port <= 65535:
            raise InvalidInput(f"invalid SSH forward port {self.ssh_host_port}")


NetSpec = TapNet | UserNet


# The VMM's files in ``VMSpec.run_dir``, by name (the properties below; a backend lists its own).
QMP_SOCKET, API_SOCKET, PIDFILE, AGENT_SOCKET = "qmp.sock", "vmm.pid.sock", "vmm.pid", "agent.sock"


@dataclass(frozen=True)
class VMSpec:
    """Everything a backend needs to launch one VM; paths absolute, values validated."""

    vm_id: str
    name: str
    vcpu: int
    memory_mib: int
    kernel: Path  # in a form the backend boots (its traits.kernel_forms)
    root: RootDisk
    work_disk: Path
    console_log: Path
    vmm_log: Path
    run_dir: Path  # control socket and pidfile
    net: NetSpec | None = None
    initrd: Path | None = None
    accel: Accel = "tcg"
    init: str | None = None  # guest init override, passed as banger.init=
    cmdline_extra: tuple[str, ...] = ()
    quiet: bool = True
    snapshot_role: SnapshotRole | None = None
    # Guest RAM in this file (docs/snapshots.md): a template's, mapped shared so the
    # saved guest's memory is the file; a clone maps it private (copy-on-write), so
    # clones share the pages they only read.
    memory_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.vm_id or any(c in self.vm_id for c in "/\0 ,="):
            raise InvalidInput(f"invalid VM id {self.vm_id!r}")
        if self.vcpu < 1:
            raise InvalidInput(f"vcpu must be at least 1, got {self.vcpu}")
        if self.memory_mib < 64:
            raise InvalidInput(f"memory must be at least 64 MiB, got {self.memory_mib}")
        if self.accel not in ("kvm", "tcg"):
            raise InvalidInput(f"unknown accelerator {self.accel!r}", hint="use kvm or tcg")
        paths: dict[str, Path | None] = {
            "kernel": self.kernel,
            "work disk": self.work_disk,
            "console log": self.console_log,
            "VMM log": self.vmm_log,
            "run dir": self.run_dir,
            "initrd": self.initrd,
            "memory file": self.memory_file,
        }
        for what, path in paths.items():
            if path is not None:
                _require_absolute(what, path)
        if self.snapshot_role not in (None, "template", "clone"):
            raise InvalidInput(f"unknown snapshot role {self.snapshot_role!r}")
        if self.memory_file is not None and self.snapshot_role is None:
            raise InvalidInput("a memory file is for snapshot templates and clones only")
        for path in (self.qmp_socket, self.api_socket, self.agent_socket):
            if len(os.fsencode(path)) > UNIX_PATH_MAX:
                raise InvalidInput(
                    f"socket path {str(path)!r} is longer than {UNIX_PATH_MAX} bytes",
                    hint="use a shorter runtime_dir (BANGER_RUNTIME_DIR)",
                )

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / QMP_SOCKET

    @property
    def api_socket(self) -> Path:
        """Firecracker's API socket, named after the pidfile: Firecracker has no
        ``--pidfile``, so this is how its argv names the pidfile (vmm/firecracker.py)."""
        return self.run_dir / API_SOCKET

    @property
    def pidfile(self) -> Path:
        return self.run_dir / PIDFILE

    @property
    def agent_socket(self) -> Path:
        """The host end of the control channel (snapshot templates and clones only)."""
        return self.run_dir / AGENT_SOCKET


def _check_token(value: str, what: str) -> str:
    if not value or any(c.isspace() or c in "\"'\0" for c in value) or not value.isprintable():
        raise InvalidInput(
            f"{what} {value!r} cannot go on the kernel command line",
            hint="use a value without spaces, quotes or control characters",
        )
    return value


def net_args(spec: VMSpec) -> list[str]:
    """The guest's network settings as ``banger.*`` words (kernel command line or identity)."""
    if spec.net is None:
        return []
    args = [f"banger.ip={spec.net.guest_ip}", f"banger.gw={spec.net.gateway}"]
    if spec.net.dns:
        args.append(f"banger.dns={','.join(spec.net.dns)}")
    return args


def hostname_arg(name: str) -> str:
    """``banger.hostname=NAME``: the guest's hostname (kernel command line or the agent)."""
    return f"banger.hostname={_check_token(name, 'hostname')}"


def clone_identity(spec: VMSpec) -> list[str]:
    """What a clone's agent applies after a restore: hostname, network and its own MAC."""
    args = [hostname_arg(spec.name), *net_args(spec)]
    if spec.net is not None:
        args.append(f"banger.mac={spec.net.mac}")
    return args


def kernel_cmdline(spec: VMSpec) -> str:
    """The guest kernel command line: console, panic behaviour, and ``banger.*`` settings."""
    # root=/dev/vda rw also serves kernels booted without banger's initramfs.
    args = ["console=ttyS0", "root=/dev/vda", "rw", "reboot=k", "panic=-1"]
    if spec.quiet:
        args.append("quiet")
    args.append(hostname_arg(spec.name))
    # A template has no address: each clone gets its own over the control channel.
    args += ["banger.agent=1"] if spec.snapshot_role == "template" else net_args(spec)
    if spec.init is not None:
        args.append(f"banger.init={_check_token(spec.init, 'init')}")
    args += [_check_token(a, "kernel argument") for a in spec.cmdline_extra]
    line = " ".join(args)
    if len(line) >= CMDLINE_MAX:
        raise InvalidInput(f"kernel command line is {len(line)} bytes, at most {CMDLINE_MAX - 1}")
    return line
