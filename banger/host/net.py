"""Host networking over netlink (pyroute2): the bridge, per-VM TAPs and a pool of idle TAPs.

Never ``ip`` in a shell. Every name passes a narrow grammar first: TAPs carry
our prefix, so teardown can never touch an interface banger did not make.

A bridge belongs to one daemon: its alias (IFLA_IFALIAS) records the owner
(``owner_alias``), and a daemon refuses a bridge another one owns, and a subnet
another interface already uses; two daemons on one bridge delete each other's
TAPs and hand out the same guest addresses. The bridge's MAC is pinned
(``bridge_mac``): a bridge without one takes the lowest MAC of its ports, so
every TAP added or removed could move the gateway's MAC under running guests.

The daemon reaches these functions only through ``host.privileged.HostOps``
(in-process today, the root helper later); the TAP pool makes its TAPs through
one too.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from banger.core.cancel import checkpoint, to_thread_joined
from banger.core.errors import Conflict, Forbidden, HostToolError, InvalidInput
from banger.core.validate import parse_bridge_cidr

if TYPE_CHECKING:
    from banger.host.privileged import HostOps

log = logging.getLogger("banger.host.net")

TAP_PREFIX = "bgt"
IFNAME_MAX = 15  # IFNAMSIZ - 1
_TAP_RE = re.compile(rf"{TAP_PREFIX}[0-9a-f]{{1,{IFNAME_MAX - len(TAP_PREFIX)}}}", re.ASCII)
_BRIDGE_RE = re.compile(r"[a-zA-Z0-9_-]{1,15}", re.ASCII)
CAP_NET_ADMIN = 12
# First MAC octets: locally administered (bit 1 set) and unicast (bit 0 clear); the
# guests' and the bridges' differ, so a bridge's MAC can never be a guest's.
GUEST_MAC_OCTET = 0x02
BRIDGE_MAC_OCTET = 0x06
OWNER_PREFIX = "banger:"
_OWNER_RE = re.compile(rf"{OWNER_PREFIX}[0-9]{{1,10}}:[0-9a-f]{{12}}", re.ASCII)


def _matching(pattern: re.Pattern[str], value: object, what: str, hint: str) -> str:
    """``value`` if it is a string that ``pattern`` matches whole, else InvalidInput."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidInput(f"invalid {what} {value!r}", hint=hint)
    return value


def validate_tap_name(name: str) -> str:
    """Return ``name`` if it is one of ours (``bgt`` + hex, at most 15 chars), else raise."""
    hint = f"banger's TAPs are {TAP_PREFIX!r} plus 1-12 lowercase hex digits"
    return _matching(_TAP_RE, name, "TAP name", hint)


def validate_bridge_name(name: str) -> str:
    return _matching(_BRIDGE_RE, name, "bridge name", "use 1-15 letters, digits, '_' or '-'")


def validate_owner(owner: str) -> str:
    """Return ``owner`` if it has the grammar of ``owner_alias``, else raise."""
    hint = f"a bridge owner is {OWNER_PREFIX!r}<uid>:<12 hex digits> (see owner_alias)"
    return _matching(_OWNER_RE, owner, "bridge owner", hint)


def new_tap_name() -> str:
    """A fresh random TAP name with our prefix (15 characters)."""
    return TAP_PREFIX + secrets.token_hex((IFNAME_MAX - len(TAP_PREFIX)) // 2)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _derived_mac(first_octet: int, seed: str) -> str:
    """``first_octet`` then five bytes of sha256(``seed``)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return ":".join(f"{b:02x}" for b in (first_octet, *digest[:5]))


def allocate_mac(vm_id: str) -> str:
    """A deterministic, locally administered unicast MAC for ``vm_id``."""
    return _derived_mac(GUEST_MAC_OCTET, vm_id)


def bridge_mac(name: str, owner: str) -> str:
    """The MAC pinned on bridge ``name`` of ``owner``: stable across restarts, never a guest's."""
    return _derived_mac(BRIDGE_MAC_OCTET, f"{owner}\0{name}")


def owner_alias(uid: int, state_dir: str) -> str:
    """The alias a daemon stamps on its bridge: its uid and a hash of its state dir."""
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:12]
    return f"{OWNER_PREFIX}{uid}:{digest}"


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


def tap_counters(name: str) -> tuple[int, int] | None:
    """(rx, tx) bytes of TAP ``name`` (one of ours, checked), from netlink in our own
    namespace (``/sys/class/net`` shows the namespace sysfs was mounted in); None if gone."""
    validate_tap_name(name)
    try:
        with _netlink(f"read the counters of {name}") as ipr:
            idx = _index(ipr, name)
            link = ipr.get_links(idx)[0] if idx is not None else None
    except (Forbidden, HostToolError):
        return None
    rx, tx = (link.get(("stats64", f)) if link else None for f in ("rx_bytes", "tx_bytes"))
    return (int(rx), int(tx)) if isinstance(rx, int) and isinstance(tx, int) else None


def _kind(link: object) -> str | None:
    return link.get(("linkinfo", "kind"))  # type: ignore[attr-defined]


def parse_cidr(cidr: str) -> ipaddress.IPv4Interface:
    """The bridge's address and prefix, by the config's grammar, naming the key on refusal."""
    try:
        return parse_bridge_cidr(cidr)
    except InvalidInput as exc:
        raise InvalidInput(f"invalid bridge_cidr {cidr!r}: {exc.message}", hint=exc.hint) from None


def _link_addresses(ipr: IPRoute, index: int | None = None) -> list[tuple[int, str, int]]:
    """(interface index, address, prefix length) of every IPv4 address, or of one interface's."""
    found = ipr.get_addr(family=socket.AF_INET, **({} if index is None else {"index": index}))
    return [(a["index"], str(a.get("address")), int(a["prefixlen"])) for a in found]


def _refuse_foreign_bridge(ipr: IPRoute, idx: int, iface: ipaddress.IPv4Interface,
                           owner: str) -> None:
    """Raise unless bridge ``idx`` is ``owner``'s, or an unstamped bridge provably ours."""
    link = ipr.get_links(idx)[0]
    name = link.get("ifname")
    if _kind(link) != "bridge":
        raise Conflict(
            f"interface {name} exists and is not a bridge",
            hint="set bridge_name in the config to an unused name",
        )
    alias = link.get("ifalias") or ""
    if alias == owner:
        return
    mine = (str(iface.ip), iface.network.prefixlen) in {a[1:] for a in _link_addresses(ipr, idx)}
    if not alias and (mine or link.get("address") == bridge_mac(name, owner)):
        return  # made by banger before owners were recorded, or by us a moment ago
    fix = (
        "give this daemon its own bridge_name and bridge_cidr in its config "
        f"(e.g. banger1 and 172.16.1.1/24), or delete {name} if nothing uses it: "
        f"ip link delete {name}"
    )
    if alias.startswith(OWNER_PREFIX):
        uid = alias.split(":")[1]
        raise Conflict(
            f"bridge_name {name}: that bridge belongs to another banger daemon "
            f"(uid {uid if uid.isdigit() else '?'}, another state_dir)",
            hint=fix,
        )
    raise Conflict(f"bridge_name {name}: that bridge exists and is not banger's", hint=fix)


def _refuse_overlap(ipr: IPRoute, iface: ipaddress.IPv4Interface, bridge: int | None) -> None:
    """Raise when an interface other than ``bridge`` has an address in our subnet."""
    for index, address, prefixlen in _link_addresses(ipr):
        theirs = ipaddress.IPv4Interface(f"{address}/{prefixlen}")
        if index != bridge and theirs.network.overlaps(iface.network):
            links = ipr.get_links(index)
            holder = links[0].get("ifname") if links else f"interface {index}"
            raise Conflict(
                f"bridge_cidr {iface} overlaps {theirs} on {holder}",
                hint="set bridge_cidr (and bridge_name) in the config to a subnet nothing uses",
            )


def _configure_bridge(ipr: IPRoute, idx: int, iface: ipaddress.IPv4Interface,
                      owner: str, mac: str) -> None:
    """Stamp the owner, pin the MAC (even an equal one: it marks the address as set), add
    the address and bring the bridge up."""
    ipr.link("set", index=idx, address=mac, ifalias=owner)
    if (str(iface.ip), iface.network.prefixlen) not in {a[1:] for a in _link_addresses(ipr, idx)}:
        try:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
    ipr.link("set", index=idx, state="up")


def _add_bridge(ipr: IPRoute, name: str, mac: str) -> int | None:
    """Create bridge ``name`` with ``mac``; None when another creator got there first."""
    try:
        ipr.link("add", ifname=name, kind="bridge", address=mac)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
        return None
    idx = _index(ipr, name)
    if idx is None:
        raise HostToolError(f"bridge {name} vanished right after it was created")
    return idx


def claim_bridge(name: str, cidr: str, owner: str, *, create: bool = True) -> bool:
    """Make bridge ``name`` exist as ``owner``'s, carrying ``cidr`` (e.g. 172.16.0.1/24), up.

    Refuses (``Conflict``) a bridge of another owner and a subnet that another
    interface already uses; a refused or failed claim leaves nothing behind. With
    ``create=False`` an absent bridge is left absent (returns False).
    """
    validate_bridge_name(name)
    validate_owner(owner)
    iface = parse_cidr(cidr)
    mac = bridge_mac(name, owner)
    with _netlink(f"set up bridge {name}") as ipr:
        idx = _index(ipr, name)
        if idx is None:
            if not create:
                return False
            _refuse_overlap(ipr, iface, None)
            idx = _add_bridge(ipr, name, mac)
            if idx is not None:
                try:
                    _configure_bridge(ipr, idx, iface, owner, mac)
                except BaseException:
                    ipr.link("del", index=idx)
                    raise
                return True
            idx = _index(ipr, name)
            if idx is None:
                raise HostToolError(f"bridge {name} appeared and vanished", hint="try again")
        _refuse_foreign_bridge(ipr, idx, iface, owner)
        _refuse_overlap(ipr, iface, idx)
        _configure_bridge(ipr, idx, iface, owner, mac)
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


def link_facts(name: str) -> tuple[str | None, int | None] | None:
    """(alias, TUN owner uid) of interface ``name`` (a uid only for a TUN/TAP with an owner),
    or None when there is no such interface: what the root helper checks before it acts."""
    with _netlink(f"look at {name}") as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return None
        link = ipr.get_links(idx)[0]
    data = link.get(("linkinfo", "data"))
    owner = data.get("IFLA_TUN_OWNER") if data is not None and _kind(link) == "tun" else None
    return link.get("ifalias"), owner if isinstance(owner, int) else None


def taps_on_our_bridge(bridge: str, owner: str) -> list[str]:
    """Our-prefix TAPs enslaved to ``bridge`` when that bridge is ``owner``'s; else none.

    What a daemon may reap: never a TAP on another daemon's bridge, nor one on ours
    that banger did not name.
    """
    validate_bridge_name(bridge)
    validate_owner(owner)
    with _netlink(f"list TAPs on {bridge}") as ipr:
        idx = _index(ipr, bridge)
        if idx is None or ipr.get_links(idx)[0].get("ifalias") != owner:
            return []
        names = [
            link.get("ifname")
            for link in ipr.get_links()
            if _kind(link) == "tun" and link.get("master") == idx
        ]
    return sorted(n for n in names if n and _TAP_RE.fullmatch(n))


class TapPool:
    """Idle TAPs on the bridge, made ahead of time so a VM create never waits on netlink.

    ``acquire`` is instant when the pool has one; call ``arefill`` (or ``fill``
    in a worker thread) afterwards, off the hot path. A TAP handed out never
    comes back: the daemon deletes it when its VM is done, so no VM inherits
    another's TAP state. Every TAP is made and deleted through ``ops`` (the
    privileged-operations seam). A create that fails may still have made its TAP
    (a helper killed mid-call): its name is kept, and the next create or ``drain``
    deletes it first, once the transport answers again.
    """

    def __init__(self, ops: HostOps, bridge: str, size: int = 2,
                 owner_uid: int | None = None) -> None:
        if size < 0:
            raise InvalidInput(f"TAP pool size must be >= 0, got {size}")
        self.ops = ops
        self.bridge = validate_bridge_name(bridge)
        self.size = size
        self.owner_uid = owner_uid
        self._idle: list[str] = []
        self._doubtful: list[str] = []  # a create that failed may have made the TAP
        self._pending = 0
        self._lock = threading.Lock()

    def _create(self, name: str) -> None:
        """``create_tap``; on failure the name is kept as doubtful: a transport that died
        mid-call (a killed helper) may have made the TAP without saying so."""
        self._settle_doubtful()
        try:
            self.ops.create_tap(name, self.bridge, self.owner_uid)
        except BaseException:
            with self._lock:
                self._doubtful.append(name)
            raise

    def _settle_doubtful(self) -> None:
        """Delete the TAPs of failed creates (idempotent); keep those still unreachable."""
        with self._lock:
            names, self._doubtful = self._doubtful, []
        for i, name in enumerate(names):
            try:
                self.ops.delete_tap(name)
            except Exception as exc:  # any failure: keep the names for the next try
                log.warning("cannot delete TAP %s of a failed create yet: %s", name, exc)
                with self._lock:
                    self._doubtful.extend(names[i:])
                return

    def fill(self) -> int:
        """Create TAPs until ``size`` are idle; return how many were made (blocking).

        Under a cancelled token it stops between TAPs (raising ``Cancelled``).
        """
        made = 0
        while True:
            checkpoint()
            with self._lock:
                if len(self._idle) + self._pending >= self.size:
                    return made
                self._pending += 1
            name = new_tap_name()
            try:
                self._create(name)
            finally:
                with self._lock:
                    self._pending -= 1
            with self._lock:
                self._idle.append(name)
            made += 1

    async def arefill(self) -> int:
        """``fill`` in a worker thread; a cancel returns once that thread has ended,
        so a ``drain`` after it sees every TAP the fill made."""
        return await to_thread_joined(self.fill)

    def acquire(self) -> str:
        """An idle TAP from the pool, or a new one made now when the pool is empty."""
        with self._lock:
            if self._idle:
                return self._idle.pop(0)
        name = new_tap_name()
        self._create(name)
        return name

    def drain(self) -> None:
        """Delete every idle TAP (daemon shutdown), and those of failed creates."""
        self._settle_doubtful()
        with self._lock:
            names, self._idle = self._idle, []
        for name in names:
            self.ops.delete_tap(name)
