"""Published ports: ``-p/--publish [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]``, parsed once.

The CLI parses them before any request and the daemon again from the request
body; a VM keeps them in its row (``vms.ports``) and they are set up at every
start (docs/network.md, "Published ports").
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from banger.core.errors import InvalidInput

DEFAULT_HOST_IP = "127.0.0.1"
PUBLISH_MAX = 64  # per VM
_RULE = "use [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp], e.g. 8080:80 or 127.0.0.1:5353:53/udp"
_SPEC_RE = re.compile(
    r"(?:(?P<ip>[0-9.]{7,15}):)?(?P<host>[0-9]{1,5}):(?P<guest>[0-9]{1,5})(?:/(?P<proto>tcp|udp))?",
    re.ASCII,
)

Proto = Literal["tcp", "udp"]


class PublishedPort(BaseModel):
    """One host port forwarded to one guest port."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host_ip: str = DEFAULT_HOST_IP
    host_port: int = Field(ge=1, le=65535)
    guest_port: int = Field(ge=1, le=65535)
    proto: Proto = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}:{self.guest_port}/{self.proto}"


class PortMap(BaseModel):
    """A VM's published ports, as its row keeps them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ports: tuple[PublishedPort, ...] = ()


def _shown(spec: str) -> str:
    return repr(spec if len(spec) <= 60 else spec[:57] + "...")


def _port(text: str, what: str, spec: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise InvalidInput(f"invalid --publish {_shown(spec)}: {what} {value} is not in 1..65535",
                           hint=_RULE)
    return value


def parse_publish(spec: str) -> PublishedPort:
    """One ``--publish`` value; InvalidInput naming what is wrong with it."""
    match = _SPEC_RE.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise InvalidInput(f"invalid --publish {_shown(str(spec))}", hint=_RULE)
    host_ip = match["ip"] or DEFAULT_HOST_IP
    try:
        address = ipaddress.IPv4Address(host_ip)
    except ValueError:
        raise InvalidInput(f"invalid --publish {_shown(spec)}: {host_ip!r} is not an IPv4 address",
                           hint=_RULE) from None
    if address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        raise InvalidInput(f"invalid --publish {_shown(spec)}: cannot listen on {address}",
                           hint="use 127.0.0.1 (the default), 0.0.0.0 or one of this host's "
                           "addresses")
    return PublishedPort(
        host_ip=str(address),
        host_port=_port(match["host"], "host port", spec),
        guest_port=_port(match["guest"], "guest port", spec),
        proto="udp" if match["proto"] == "udp" else "tcp",
    )


def parse_publish_list(specs: Iterable[str]) -> tuple[PublishedPort, ...]:
    """Every ``--publish`` of one VM; a host port given twice (same protocol) is refused."""
    ports = tuple(parse_publish(spec) for spec in specs)
    if len(ports) > PUBLISH_MAX:
        raise InvalidInput(f"{len(ports)} --publish values, at most {PUBLISH_MAX}",
                           hint="publish fewer ports")
    seen: dict[tuple[int, str], PublishedPort] = {}
    for port in ports:
        key = (port.host_port, port.proto)
        if key in seen:
            raise InvalidInput(
                f"host port {port.host_port}/{port.proto} is published twice "
                f"({seen[key]} and {port})",
                hint="give each --publish its own host port",
            )
        seen[key] = port
    return ports
