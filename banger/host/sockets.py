"""Who holds a port: /proc/net/{udp,tcp}[6] give the socket's inode, /proc/<pid>/fd the process.

Used when a bind fails (the DNS port taken by another program), so the daemon's
log and ``banger doctor`` can name the holder. Processes of other users are not
readable without privileges: they show up as "not visible", never guessed.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PROC = Path("/proc")
_UCRED = struct.Struct("3i")
TCP_LISTEN = "0A"
Proto = Literal["udp", "tcp"]


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _decode_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net's address: 4-byte groups in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(ordered)


def _covers(bound: ipaddress.IPv4Address | ipaddress.IPv6Address,
            wanted: ipaddress.IPv4Address) -> bool:
    """True when a socket bound to ``bound`` blocks a bind to ``wanted`` on the same port."""
    if isinstance(bound, ipaddress.IPv6Address):
        return bound.is_unspecified or bound.ipv4_mapped == wanted
    return bound.is_unspecified or bound == wanted


def socket_inodes(table: str, address: str, port: int, *, listening_only: bool) -> list[int]:
    """Inodes of the sockets in one /proc/net table text bound to ``address:port`` (or the
    wildcard address); ``listening_only`` keeps TCP listeners."""
    wanted = ipaddress.IPv4Address(address)
    found = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or ":" not in fields[1]:
            continue
        local, hex_port = fields[1].rsplit(":", 1)
        try:
            bound = _decode_address(local)
            if int(hex_port, 16) != port or not _covers(bound, wanted):
                continue
        except ValueError:
            continue
        if listening_only and fields[3] != TCP_LISTEN:
            continue
        if fields[9].isdigit() and fields[9] != "0":
            found.append(int(fields[9]))
    return found


def _fd_targets(pid_dir: Path) -> set[str]:
    try:
        names = os.listdir(pid_dir / "fd")
    except OSError:
        return set()
    targets = set()
    for name in names:
        try:
            targets.add(os.readlink(pid_dir / "fd" / name))
        except OSError:
            continue
    return targets


def port_holders(proto: Proto, address: str, port: int, proc: Path = PROC) -> list[Holder] | None:
    """The processes holding ``proto`` ``address:port``; [] when none is visible, None when no
    socket holds it at all."""
    inodes: list[int] = []
    for table in (proto, proto + "6"):
        text = _read(proc / "net" / table)
        if text:
            inodes += socket_inodes(text, address, port, listening_only=proto == "tcp")
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    for entry in sorted((e for e in os.listdir(proc) if e.isdigit()), key=int):
        if _fd_targets(proc / entry) & wanted:
            command = (_read(proc / entry / "comm") or "?").strip()
            holders.append(Holder(int(entry), command))
    return holders


def describe_holders(address: str, port: int, proc: Path = PROC) -> str:
    """One phrase naming who holds UDP or TCP ``address:port``, for a log line or doctor."""
    for proto in ("udp", "tcp"):
        holders = port_holders(proto, address, port, proc)
        if holders is None:
            continue
        if not holders:
            return (f"{proto} {address}:{port} is held by a process this user cannot see "
                    "(another user's)")
        names = ", ".join(f"pid {h.pid} ({h.command})" for h in holders)
        return f"{proto} {address}:{port} is held by {names}"
    return f"{address}:{port} was taken, and is not held by any socket now"


def socket_peer(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of Unix socket ``sock``
    (SO_PEERCRED: the kernel's record, which the peer cannot forge)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def listen_private(path: Path, backlog: int) -> socket.socket:
    """A Unix socket listening at ``path`` (which must be free), mode 0600 from its first moment."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window in which another user could connect
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    return sock
