"""Host networking over netlink (pyroute2): the bridge, per-VM TAPs and a pool of idle TAPs.

Never ``ip`` in a shell. Every name passes a narrow grammar first: TAPs carry
our prefix, so teardown can never touch an interface banger did not make.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import logging
import re
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from banger.core.errors import Conflict, Forbidden, HostToolError, InvalidInput

log = logging.getLogger("banger.host.net")

TAP_PREFIX = "bgt"
IFNAME_MAX = 15  # IFNAMSIZ - 1
_TAP_RE = re.compile(rf"{TAP_PREFIX}[0-9a-f]{{1,{IFNAME_MAX - len(TAP_PREFIX)}}}", re.ASCII)
_BRIDGE_RE = re.compile(r"[a-zA-Z0-9_-]{1,15}", re.ASCII)
CAP_NET_ADMIN = 12


def validate_tap_name(name: str) -> str:
    """Return ``name`` if it is one of ours (``bgt`` + hex, at most 15 chars), else raise."""
    if not _TAP_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid TAP name {name!r}",
            hint=f"banger's TAPs are {TAP_PREFIX!r} plus 1-12 lowercase hex digits",
        )
    return name


def validate_bridge_name(name: str) -> str:
    if not _BRIDGE_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid bridge name {name!r}", hint="use 1-15 letters, digits, '_' or '-'"
        )
    return name


def new_tap_name() -> str:
    """A fresh random TAP name with our prefix (15 characters)."""
    return TAP_PREFIX + secrets.token_hex((IFNAME_MAX - len(TAP_PREFIX)) // 2)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def allocate_mac(vm_id: str) -> str:
    """A deterministic, locally administered unicast MAC for ``vm_id``."""
    digest = hashlib.sha256(vm_id.encode()).digest()
    # 0x02: locally administered (bit 1 set), unicast (bit 0 clear).
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def have_net_admin() -> bool:
    """True when this process holds CAP_NET_ADMIN (can make bridges and TAPs)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return False


@contextmanager
def _netlink(action: str) -> Iterator[IPRoute]:
    """An IPRoute socket whose errors become typed banger errors naming ``action``."""
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        if exc.code == errno.EPERM:
            raise Forbidden(
                f"cannot {action}: operation not permitted",
                hint="run bangerd as root or with CAP_NET_ADMIN, or use user-mode networking",
            ) from exc
        raise HostToolError(f"cannot {action}: {exc.args[-1]}") from exc


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _kind(link: object) -> str | None:
    return link.get(("linkinfo", "kind"))  # type: ignore[attr-defined]


def ensure_bridge(name: str, cidr: str) -> None:
    """Make sure bridge ``name`` exists, carries ``cidr`` (e.g. 172.16.0.1/24) and is up."""
    validate_bridge_name(name)
    try:
        iface = ipaddress.IPv4Interface(cidr)
    except ValueError as exc:
        raise InvalidInput(f"invalid bridge address {cidr!r}: {exc}") from exc
    with _netlink(f"set up bridge {name}") as ipr:
        idx = _index(ipr, name)
        if idx is None:
            try:
                ipr.link("add", ifname=name, kind="bridge")
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # lost a race with another creator
                    raise
            idx = _index(ipr, name)
            assert idx is not None
        link = ipr.get_links(idx)[0]
        if _kind(link) != "bridge":
            raise Conflict(
                f"interface {name} exists and is not a bridge",
                hint="set bridge_name in the config to an unused name",
            )
        have = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=2)}
        if (str(iface.ip), iface.network.prefixlen) not in have:
            try:
                ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
        ipr.link("set", index=idx, state="up")


def delete_bridge(name: str) -> bool:
    """Delete bridge ``name``; False when it did not exist."""
    validate_bridge_name(name)
    with _netlink(f"delete bridge {name}") as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return False
        if _kind(ipr.get_links(idx)[0]) != "bridge":
            raise Conflict(f"interface {name} is not a bridge; not deleting it")
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
            return False
    return True


def create_tap(name: str, bridge: str, owner_uid: int | None = None) -> None:
    """Create persistent TAP ``name`` owned by ``owner_uid``, enslaved to ``bridge`` and up."""
    validate_tap_name(name)
    validate_bridge_name(bridge)
    with _netlink(f"create TAP {name}") as ipr:
        br = _index(ipr, bridge)
        if br is None:
            raise HostToolError(f"bridge {bridge} does not exist", hint="ensure the bridge first")
        kwargs = {} if owner_uid is None else {"uid": owner_uid}
        ipr.link("add", ifname=name, kind="tuntap", mode="tap", **kwargs)
        try:
            idx = _index(ipr, name)
            assert idx is not None
            ipr.link("set", index=idx, master=br, state="up")
        except BaseException:
            ipr.link("del", ifname=name)
            raise


def delete_tap(name: str) -> bool:
    """Delete TAP ``name``; False when it did not exist (idempotent)."""
    validate_tap_name(name)
    with _netlink(f"delete TAP {name}") as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
    return True


def list_our_taps() -> list[str]:
    """Names of every TAP with our prefix on this host (network namespace)."""
    with _netlink("list TAPs") as ipr:
        names = [link.get("ifname") for link in ipr.get_links() if _kind(link) == "tun"]
    return sorted(n for n in names if n and _TAP_RE.fullmatch(n))


def link_master(name: str) -> str | None:
    """The name of the bridge ``name`` is enslaved to, or None."""
    with _netlink(f"inspect {name}") as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return None
        master = ipr.get_links(idx)[0].get("master")
        if not master:
            return None
        return str(ipr.get_links(master)[0].get("ifname"))


class TapPool:
    """Idle TAPs on the bridge, made ahead of time so a VM create never waits on netlink.

    ``acquire`` is instant when the pool has one; call ``arefill`` (or ``fill``
    in a worker thread) afterwards, off the hot path. A released TAP is
    deleted, not recycled, so no VM inherits another's TAP state.
    """

    def __init__(self, bridge: str, size: int = 2, owner_uid: int | None = None) -> None:
        if size < 0:
            raise InvalidInput(f"TAP pool size must be >= 0, got {size}")
        self.bridge = validate_bridge_name(bridge)
        self.size = size
        self.owner_uid = owner_uid
        self._idle: list[str] = []
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def idle(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._idle)

    def adopt(self, names: list[str]) -> None:
        """Take existing idle TAPs (e.g. after a daemon restart) into the pool."""
        for name in names:
            validate_tap_name(name)
        with self._lock:
            self._idle += [n for n in names if n not in self._idle]

    def fill(self) -> int:
        """Create TAPs until ``size`` are idle; return how many were made (blocking)."""
        made = 0
        while True:
            with self._lock:
                if len(self._idle) + self._pending >= self.size:
                    return made
                self._pending += 1
            name = new_tap_name()
            try:
                create_tap(name, self.bridge, self.owner_uid)
            finally:
                with self._lock:
                    self._pending -= 1
            with self._lock:
                self._idle.append(name)
            made += 1

    async def arefill(self) -> int:
        """``fill`` in a worker thread."""
        return await asyncio.to_thread(self.fill)

    def acquire(self) -> str:
        """An idle TAP from the pool, or a new one made now when the pool is empty."""
        with self._lock:
            if self._idle:
                return self._idle.pop(0)
        name = new_tap_name()
        create_tap(name, self.bridge, self.owner_uid)
        return name

    def release(self, name: str) -> None:
        """Delete a TAP a VM no longer uses (idempotent)."""
        delete_tap(name)

    def drain(self) -> None:
        """Delete every idle TAP (daemon shutdown)."""
        with self._lock:
            names, self._idle = self._idle, []
        for name in names:
            delete_tap(name)
