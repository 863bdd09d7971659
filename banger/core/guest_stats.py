"""The guest's own view of itself (``vm stats``, ``vm health``, ``top``, auto-stop).

One fixed shell script runs in the guest over its shared SSH connection and prints
labelled sections: ``/proc/loadavg``, ``/proc/meminfo``, ``/proc/uptime``, the boot
id, ``df -kP / /root`` and one ``PID PPID FLAG`` line per process (FLAG ``s`` for an
sshd process, else ``-``). The text comes from the guest, so it is parsed as hostile:
every section is matched against a narrow grammar, numbers are ASCII digits within
bounds, a section that does not fit (or comes twice) is dropped whole and counted,
never half-read; no guest string reaches the answer except the boot id's hex.

SSH sessions are the processes whose parent is an sshd process and which are not
sshd themselves: one per shell or command of any SSH connection (those multiplexed
over banger's shared connection too, which is how ``vm ssh`` goes in), minus the
script itself. An idle shared connection has no such child, so it does not count.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

# Builtins only in the process loop (no fork per process); the process section is
# last, so no process name (never printed anyway) can forge an earlier section.
STATS_SCRIPT = r"""
echo @load; cat /proc/loadavg
echo @mem; cat /proc/meminfo
echo @uptime; cat /proc/uptime
echo @boot; cat /proc/sys/kernel/random/boot_id
echo @df; df -kP / /root 2>/dev/null
echo "@procs $$ $PPID"
for p in /proc/[0-9]*; do
  read -r l 2>/dev/null <"$p/stat" || continue
  c=${l#*\(}; c=${c%\)*}; r=${l##*\) }; r=${r#* }
  case $c in sshd|sshd-session) k=s;; *) k=-;; esac
  echo "${p#/proc/} ${r%% *} $k"
done
exit 0
"""
HEALTH_SCRIPT = "echo @uptime; cat /proc/uptime; echo @boot; cat /proc/sys/kernel/random/boot_id"
STATS_ARGV = ("sh", "-c", STATS_SCRIPT)
HEALTH_ARGV = ("sh", "-c", HEALTH_SCRIPT)
OUTPUT_LIMIT = 1 << 20  # ~40,000 processes' lines; a guest saying more is refused
PROCS_MAX = 65536
NUMBER_MAX = 1 << 62

_HEADER = re.compile(r"@(load|mem|uptime|boot|df)|@(procs) ([0-9]{1,10}) ([0-9]{1,10})", re.ASCII)
_LOAD = re.compile(r"([0-9]{1,6}\.[0-9]{2}) ([0-9]{1,6}\.[0-9]{2}) ([0-9]{1,6}\.[0-9]{2}) "
                   r"[0-9]{1,10}/[0-9]{1,10} [0-9]{1,10}", re.ASCII)
_MEMINFO = re.compile(r"(MemTotal|MemAvailable): +([0-9]{1,15}) kB", re.ASCII)
_UPTIME = re.compile(r"([0-9]{1,12}\.[0-9]{1,2}) [0-9]{1,14}\.[0-9]{1,2}", re.ASCII)
_BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)
_DF_HEADER = re.compile(r"Filesystem +1024-blocks +Used +Available +Capacity +Mounted on",
                        re.ASCII)
_DF_NUMBERS = re.compile(r"[0-9]{1,18} [0-9]{1,18} [0-9]{1,18} (?:[0-9]{1,3}%|-)", re.ASCII)
_PROC = re.compile(r"([0-9]{1,10}) ([0-9]{1,10}) ([s-])", re.ASCII)
DISK_MOUNTS = ("/", "/root")
T = TypeVar("T")


@dataclass(frozen=True)
class DiskUse:
    """One guest filesystem, in bytes."""

    total_bytes: int
    used_bytes: int
    available_bytes: int


@dataclass(frozen=True)
class GuestView:
    """What the guest says of itself; a field is None when its section did not parse."""

    load: tuple[float, float, float] | None = None
    mem_total_bytes: int | None = None
    mem_available_bytes: int | None = None
    uptime_seconds: float | None = None
    boot_id: str | None = None
    disks: dict[str, DiskUse] = field(default_factory=dict)  # by mount point: "/", "/root"
    ssh_sessions: int | None = None
    unparsed: int = 0  # sections dropped, plus process lines not understood

    @property
    def mem_used_bytes(self) -> int | None:
        if self.mem_total_bytes is None or self.mem_available_bytes is None:
            return None
        return self.mem_total_bytes - self.mem_available_bytes


def _sections(text: str) -> tuple[dict[str, tuple[list[str], list[str]]], int]:
    """Lines by section name, with each header's arguments; sections seen twice are dropped."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    twice: set[str] = set()
    current: list[str] | None = None
    for line in text.split("\n"):
        header = _HEADER.fullmatch(line) if "procs" not in found else None
        if header is None:
            if current is not None and line:
                current.append(line)
            continue
        name = header[1] or header[2]
        if name in found:
            twice.add(name)
        current = []
        found[name] = ([a for a in header.groups()[2:] if a], current)
    for name in twice:
        del found[name]
    return found, len(twice)


def _load(lines: list[str]) -> tuple[float, float, float] | None:
    match = _LOAD.fullmatch(lines[0]) if len(lines) == 1 else None
    return (float(match[1]), float(match[2]), float(match[3])) if match else None


def _memory(lines: list[str]) -> tuple[int, int] | None:
    values: dict[str, int] = {}
    for line in lines:
        match = _MEMINFO.fullmatch(line)
        if match is not None:
            if match[1] in values:
                return None
            values[match[1]] = int(match[2]) * 1024
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if total is None or available is None or available > total:
        return None
    return total, available


def _uptime(lines: list[str]) -> float | None:
    match = _UPTIME.fullmatch(lines[0]) if len(lines) == 1 else None
    return float(match[1]) if match else None


def _boot_id(lines: list[str]) -> str | None:
    return lines[0] if len(lines) == 1 and _BOOT_ID.fullmatch(lines[0]) else None


def _disks(lines: list[str]) -> dict[str, DiskUse] | None:
    """``df -kP`` rows of ``/`` and ``/root`` by mount point (a row read from its right)."""
    if not lines or not _DF_HEADER.fullmatch(lines[0]):
        return None
    disks: dict[str, DiskUse] = {}
    for line in lines[1:]:
        parts = line.rsplit(" ", 1)
        numbers = parts[0].rstrip().rsplit(None, 4)
        if len(parts) != 2 or parts[1] not in DISK_MOUNTS or len(numbers) != 5:
            return None
        if not _DF_NUMBERS.fullmatch(" ".join(numbers[1:])):
            return None
        total, used, available = (int(n) * 1024 for n in numbers[1:4])
        if used > total or available > total:
            return None
        disks.setdefault(parts[1], DiskUse(total, used, available))
    return disks


def count_ssh_sessions(self_pids: list[str], lines: list[str]) -> tuple[int | None, int]:
    """SSH sessions among ``PID PPID FLAG`` lines (the script's own pids left out), and how
    many lines were not understood; None when there are too many lines to trust."""
    if len(lines) > PROCS_MAX:
        return None, len(lines)
    sshd: set[str] = set()
    children: list[tuple[str, str]] = []
    unparsed = 0
    for line in lines:
        match = _PROC.fullmatch(line)
        if match is None:
            unparsed += 1
        elif match[3] == "s":
            sshd.add(match[1])
        else:
            children.append((match[1], match[2]))
    mine = set(self_pids)
    return sum(1 for pid, ppid in children if ppid in sshd and pid not in mine), unparsed


def _read(sections: dict[str, tuple[list[str], list[str]]], name: str,
          parse: Callable[[list[str]], T | None]) -> tuple[T | None, int]:
    """Section ``name`` parsed, and 1 when it was there but did not parse."""
    body = sections[name][1] if name in sections else []
    value = parse(body) if body else None
    return value, int(bool(body) and value is None)


def parse_guest_view(output: bytes) -> GuestView:
    """The guest's answer to ``STATS_ARGV`` or ``HEALTH_ARGV``, each section checked."""
    sections, unparsed = _sections(output.decode("ascii", "replace"))
    load, bad_load = _read(sections, "load", _load)
    memory, bad_mem = _read(sections, "mem", _memory)
    uptime, bad_uptime = _read(sections, "uptime", _uptime)
    boot_id, bad_boot = _read(sections, "boot", _boot_id)
    disks, bad_df = _read(sections, "df", _disks)
    sessions, bad_procs = (count_ssh_sessions(*sections["procs"]) if "procs" in sections
                           else (None, 0))
    total, available = memory if memory is not None else (None, None)
    return GuestView(
        load=load, mem_total_bytes=total, mem_available_bytes=available, uptime_seconds=uptime,
        boot_id=boot_id, disks=disks or {}, ssh_sessions=sessions,
        unparsed=unparsed + bad_load + bad_mem + bad_uptime + bad_boot + bad_df + bad_procs,
    )
