"""Tiny host capability probes, shared by fallback selection and ``banger doctor``.

Each probe answers one question cheaply and never raises for an absent
capability. Filesystem roots and the PATH are parameters so tests can point
them at a fake tree.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import sys
from enum import StrEnum
from pathlib import Path

from banger.core.errors import HostToolError
from banger.host.run import CommandError, clean_env, run

SYS_ROOT = Path("/sys")
DEV_ROOT = Path("/dev")
QEMU_SYSTEM = "qemu-system-x86_64"
PYTHON_MIN = (3, 11)
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
_VERSION_TIMEOUT = 10.0

Version = tuple[int, int, int]


class KvmStatus(StrEnum):
    """What ``/dev/kvm`` can do for a standard (non-PVM) guest kernel."""

    USABLE = "usable"
    PVM_HOST = "pvm_host"  # only kvm_pvm: standard guests hang, so use TCG
    NO_ACCESS = "no_access"  # present but this user cannot open it read-write
    ABSENT = "absent"


def _module_loaded(sys_root: Path, name: str) -> bool:
    return (sys_root / "module" / name).is_dir()


def _can_open_rw(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def kvm_status(sys_root: Path = SYS_ROOT, dev_root: Path = DEV_ROOT) -> KvmStatus:
    """Classify KVM on this host for standard guests."""
    if not (dev_root / "kvm").exists():
        return KvmStatus.ABSENT
    vendor = _module_loaded(sys_root, "kvm_intel") or _module_loaded(sys_root, "kvm_amd")
    # A PVM host's /dev/kvm opens fine, but a stock guest kernel hangs under it.
    if not vendor and _module_loaded(sys_root, "kvm_pvm"):
        return KvmStatus.PVM_HOST
    if not _can_open_rw(dev_root / "kvm"):
        return KvmStatus.NO_ACCESS
    return KvmStatus.USABLE


def have_usable_kvm(sys_root: Path = SYS_ROOT, dev_root: Path = DEV_ROOT) -> bool:
    """True when a standard guest kernel can run under KVM here."""
    return kvm_status(sys_root, dev_root) is KvmStatus.USABLE


def find_tool(name: str, search_path: str | None = None) -> Path | None:
    """Locate ``name`` on ``search_path`` (default: the PATH that ``run()`` uses)."""
    found = shutil.which(name, path=search_path if search_path is not None else clean_env()["PATH"])
    return Path(found) if found else None


def have_tool(name: str, search_path: str | None = None) -> bool:
    """True when ``name`` is an executable on the PATH."""
    return find_tool(name, search_path) is not None


def qemu_binary(search_path: str | None = None) -> Path | None:
    """Path of ``qemu-system-x86_64``, or None."""
    return find_tool(QEMU_SYSTEM, search_path)


def _version_output(binary: Path) -> str | None:
    try:
        proc = run([str(binary), "--version"], timeout=_VERSION_TIMEOUT)
    except (CommandError, OSError):
        return None
    return (proc.stdout + b"\n" + proc.stderr).decode("utf-8", "replace")


_QEMU_RE = re.compile(r"^QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE | re.ASCII)


def parse_qemu_version(text: str) -> Version | None:
    """Parse ``qemu-system-* --version`` output ("QEMU emulator version 7.2.22 (...)")."""
    m = _QEMU_RE.search(text)
    if m is None:
        return None
    return int(m[1]), int(m[2]), int(m[3] or 0)


def qemu_version(binary: Path | None = None) -> Version | None:
    """The version of ``binary`` (default: the QEMU on PATH), or None if unknown."""
    binary = binary or qemu_binary()
    if binary is None:
        return None
    text = _version_output(binary)
    return parse_qemu_version(text) if text is not None else None


# Only the canonical first line counts: older releases also list snapshot format
# versions ("v0.23.0, ...") and newer ones append an "exiting successfully" log line.
_FIRECRACKER_RE = re.compile(
    r"^Firecracker v(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?\s*$", re.MULTILINE | re.ASCII
)


def parse_firecracker_version(text: str) -> Version | None:
    """Parse ``firecracker --version`` output; a pre-release suffix (``-dev``) is ignored."""
    m = _FIRECRACKER_RE.search(text)
    if m is None:
        return None
    return int(m[1]), int(m[2]), int(m[3])


def firecracker_version(binary: Path) -> Version | None:
    """Run ``binary --version`` and parse it; None when it fails or prints something else."""
    text = _version_output(binary)
    return parse_firecracker_version(text) if text is not None else None


_PT_INTERP = 3
_PN_XNUM = 0xFFFF
_ET_EXEC, _ET_DYN = 2, 3


def _program_header_types(data: bytes) -> list[int] | None:
    """The p_type of every program header of an ELF image, or None if it is not ELF."""
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    e_type = struct.unpack_from(end + "H", data, 16)[0]
    if e_type not in (_ET_EXEC, _ET_DYN) or (is64 and len(data) < 64):
        return None
    if is64:
        phoff, shoff = struct.unpack_from(end + "QQ", data, 32)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 54)
    else:
        phoff, shoff = struct.unpack_from(end + "II", data, 28)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 42)
    if phnum == _PN_XNUM:  # the real count lives in section header 0's sh_info
        if shoff == 0:
            return None
        info_at = shoff + (44 if is64 else 28)
        if info_at + 4 > len(data):
            return None
        phnum = struct.unpack_from(end + "I", data, info_at)[0]
    if phentsize < 4 or phoff + phnum * phentsize > len(data):
        return None
    return [struct.unpack_from(end + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]


def is_static_elf(path: Path) -> bool:
    """True when ``path`` is an ELF executable with no program interpreter (PT_INTERP)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)  # program headers sit near the start
    except OSError:
        return False
    types = _program_header_types(data)
    return types is not None and _PT_INTERP not in types


def busybox_static_path(candidates: tuple[Path, ...] = BUSYBOX_CANDIDATES) -> Path | None:
    """The first statically linked, executable busybox (package busybox-static), or None."""
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK) and is_static_elf(path):
            return path
    return None


def static_busybox(candidates: tuple[Path, ...] = BUSYBOX_CANDIDATES) -> Path:
    """The busybox an initramfs can run (``busybox_static_path``), or HostToolError saying why."""
    found = busybox_static_path(candidates)
    if found is not None:
        return found
    present = [p for p in candidates if p.exists()]
    raise HostToolError(
        f"{present[0]} is not a statically linked busybox and cannot run in an initramfs"
        if present else "no busybox found (needed for the initramfs)",
        hint="install the static build: sudo apt-get install busybox-static",
    )


def python_ok(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> bool:
    """True when the running Python is new enough (3.11+)."""
    return version[:2] >= PYTHON_MIN


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """The host CPU clock in kHz from ``cpu MHz`` (None when unknown).

    Under TCG a guest kernel that cannot calibrate its TSC may hang at boot on
    a loaded host; ``tsc_early_khz=`` on its command line skips calibration.
    """
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                return int(float(value) * 1000)
    except (OSError, ValueError):
        return None
    return None


def _meminfo_mib(key: str, meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_available_mib(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` in MiB (None when unknown)."""
    return _meminfo_mib("MemAvailable", meminfo)


def memory_total_mib(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemTotal`` in MiB (None when unknown)."""
    return _meminfo_mib("MemTotal", meminfo)
