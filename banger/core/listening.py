"""The guest's listening sockets, from ``ss -Hltunp`` run inside it (``vm ports``).

The text comes from the guest, so it is parsed as hostile: bounded, every field
checked against a narrow grammar, and a line that does not fit is counted and
dropped, never half-read. A process name is kept only when it is printable
ASCII (it ends up in the user's terminal).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

SS_ARGV = ("ss", "-Hltunp")
LINES_MAX = 4096
LINE_MAX = 1024
_IFACE_RE = re.compile(r"[A-Za-z0-9_.@-]{1,15}", re.ASCII)
_PROCESS_RE = re.compile(r'users:\(\("(?P<name>[\x20-\x21\x23-\x7e]{1,64})",pid=[0-9]{1,10},'
                         r"fd=[0-9]{1,10}\)", re.ASCII)
_STATES = {"tcp": "LISTEN", "udp": "UNCONN"}


@dataclass(frozen=True, order=True)
class Listening:
    """One socket a guest listens on (``address`` ``*`` means every address)."""

    proto: str
    port: int
    address: str
    process: str | None = None


def _address(text: str) -> str | None:
    """``0.0.0.0``, ``[::]``, ``*``, ``127.0.0.53%lo`` -> the address, else None."""
    host, _, iface = text.partition("%")
    if iface and not _IFACE_RE.fullmatch(iface):
        return None
    if host == "*":
        return "*"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def parse_line(line: str) -> Listening | None:
    """One line of ``ss -Hltunp``, or None when it is not exactly one."""
    if len(line) > LINE_MAX or not line.isascii() or not line.isprintable():
        return None
    fields = line.split(None, 6)
    if len(fields) < 6:
        return None
    proto, state, recv_q, send_q, local, peer = fields[:6]
    if _STATES.get(proto) != state or not (recv_q.isdigit() and send_q.isdigit()):
        return None
    host, sep, port_text = local.rpartition(":")
    if not sep or not port_text.isdigit() or len(port_text) > 5 or not peer.endswith(":*"):
        return None
    port = int(port_text)
    address = _address(host)
    if address is None or not 1 <= port <= 65535:
        return None
    process = None
    if len(fields) == 7:
        match = _PROCESS_RE.match(fields[6])
        if match is None:
            return None
        process = match["name"]
    return Listening(proto, port, address, process)


def parse_ss(output: bytes) -> tuple[list[Listening], int]:
    """Every listening socket in ``output`` (sorted, duplicates once) and how many lines
    were not understood."""
    text = output.decode("ascii", "replace")
    lines = [line for line in text.split("\n") if line.strip()]
    unparsed = max(0, len(lines) - LINES_MAX)
    found: set[Listening] = set()
    for line in lines[:LINES_MAX]:
        parsed = parse_line(line.rstrip("\r"))
        if parsed is None:
            unparsed += 1
        else:
            found.add(parsed)
    return sorted(found), unparsed
