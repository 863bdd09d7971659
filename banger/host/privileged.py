"""The privileged host operations behind one typed interface (DESIGN.md s.1).

Everything banger does that needs root or CAP_NET_ADMIN goes through a
``HostOps``: claiming the bridge, making and deleting TAPs, listing the TAPs a
daemon may reap, signalling a VMM it can prove is its own, and routing the
``vm`` domain to the bridge through systemd-resolved, and NAT for guests (the
set of NAT'd guests in banger's nftables table, IPv4 forwarding). Callers hold a
``HostOps`` and never know which transport runs the operation, like mkosi's
``sandbox=`` argument:

- ``InProcessHostOps``: the daemon holds the privileges itself (root, as in CI,
  or CAP_NET_ADMIN) and the operations run in its process.
- ``host.helper_client.HelperHostOps``: the daemon runs as its owner and asks
  ``bangerd-root``, the root helper of a system install, over its socket; the
  helper runs each call through ``CheckedHostOps`` again, its owner guard
  (``helper/guard.py``), then ``InProcessHostOps``.

For Firecracker there are the block devices of a root overlay (loop devices and
dm-snapshots, ``host.blockdev``) and the launch of Firecracker under its jailer
(``host.jailer``).

``CheckedHostOps`` validates every argument against a narrow grammar before
any transport sees it (TAP names with our prefix, bridge names, CIDRs, owner
aliases, uids, pids above 1, argv markers naming a path, allowlisted signals,
IPv4 resolver and guest addresses),
and ``host_ops_for`` always wraps the transport in it; the root helper's server
wraps its in-process operations in it again. Blocking methods (netlink)
belong in a worker thread.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from banger.core.errors import BangerError, Forbidden, InternalError, InvalidInput
from banger.core.signals import validate_signal
from banger.core.validate import show_value
from banger.host import blockdev, jailer, nat, net, resolved
from banger.host import proc_identity as proc
from banger.host.jailer import JailConfig, JailedVmm, validate_jail_id

log = logging.getLogger("banger.host.privileged")

HELLO_TIMEOUT = 5.0
HELLO_ATTEMPTS = 6  # about 3 s for a helper started at the same time
PID_MAX = 1 << 22  # the kernel's ceiling for /proc/sys/kernel/pid_max
UID_MAX = (1 << 32) - 2  # (uid_t)-1 means "no uid"
MARKER_MAX = 4096
NAT_GUESTS_MAX = 1 << 16  # the addresses of a /16 bridge


@runtime_checkable
class HostOps(Protocol):
    """The privileged subset of host operations; every transport implements all of it."""

    def can_manage_network(self) -> bool:
        """True when this transport can make bridges and TAPs (else: user-mode networking)."""
        ...

    def claim_bridge(self, name: str, cidr: str, owner: str, *, create: bool = True) -> bool:
        """``host.net.claim_bridge``: bridge ``name`` up as ``owner``'s, carrying ``cidr``."""
        ...

    def create_tap(self, name: str, bridge: str, owner_uid: int | None = None) -> None:
        """A persistent TAP ``name`` (our prefix) enslaved to ``bridge``, up."""
        ...

    def delete_tap(self, name: str) -> bool:
        """Delete TAP ``name``; False when it did not exist."""
        ...

    def taps_on_our_bridge(self, bridge: str, owner: str) -> list[str]:
        """Our-prefix TAPs on ``bridge`` when it is ``owner``'s: what a daemon may reap."""
        ...

    def signal_vmm(self, pid: int, start_time: int, markers: tuple[str, ...],
                   sig: signal.Signals) -> bool:
        """Send ``sig`` to the VMM ``pid`` started at ``start_time`` whose argv holds every
        marker, one of them its pidfile; False when it is gone, ``Forbidden`` when ``pid``
        is another process."""
        ...

    def route_vm_domain(self, bridge: str, resolver: str) -> None:
        """systemd-resolved sends ``*.vm`` (only) to ``resolver`` on link ``bridge``."""
        ...

    def revert_resolver(self, bridge: str) -> None:
        """Drop resolved's settings on link ``bridge``."""
        ...

    def nat_sync(self, bridge: str, guests: tuple[str, ...]) -> None:
        """(Re)make the NAT table of ``bridge``'s daemon with exactly ``guests`` in its set."""
        ...

    def nat_add(self, bridge: str, guest: str) -> None:
        """Put ``guest`` in the NAT set of ``bridge``'s table."""
        ...

    def nat_remove(self, bridge: str, guest: str) -> None:
        """Take ``guest`` out of the NAT set (idempotent)."""
        ...

    def enable_ip_forward(self) -> None:
        """Turn IPv4 forwarding on (NAT'd guests need it; banger never turns it off)."""
        ...

    def attach_loop(self, backing: str, read_only: bool) -> str:
        """A free loop device on the file ``backing``; its ``/dev/loopN``."""
        ...

    def detach_loop(self, device: str) -> bool:
        """Detach loop ``device``; False when it was not attached."""
        ...

    def create_snapshot(self, name: str, origin: str, cow: str) -> str:
        """dm-snapshot ``name`` of loop ``origin`` writing to loop ``cow``; its mapper path."""
        ...

    def remove_snapshot(self, name: str) -> bool:
        """Remove dm-snapshot ``name``; False when there is none."""
        ...

    def launch_jailed(self, jail_id: str, uid: int, gid: int) -> JailedVmm:
        """Firecracker under its jailer as ``uid:gid``, chrooted under the transport's own
        root-only chroot base (never a caller's); ``Conflict`` when the jail exists."""
        ...

    def remove_jail(self, jail_id: str, uid: int) -> bool:
        """Delete jail ``jail_id``'s tree when its chroot is ``uid``'s; False when none."""
        ...


def _validate_int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(
            f"invalid {what} {show_value(value)}", hint=f"use an integer in {low}..{high}"
        )
    return value


def validate_pid(pid: object) -> int:
    """A pid banger may signal: never 0, init (1) or a negative process group."""
    return _validate_int(pid, "pid", 2, PID_MAX)


def validate_uid(uid: object) -> int | None:
    """A TAP owner's uid, or None for root's."""
    return None if uid is None else _validate_int(uid, "uid", 0, UID_MAX)


def validate_resolver(address: object) -> str:
    """An IPv4 address a resolver may be set to (the bridge's), as a plain string."""
    try:
        if not isinstance(address, str):
            raise TypeError(address)
        return str(ipaddress.IPv4Address(address))
    except (ValueError, TypeError):
        raise InvalidInput(
            f"invalid resolver address {show_value(address)}", hint="use an IPv4 address"
        ) from None


def validate_guest_address(address: object) -> str:
    """A guest's IPv4 address for the NAT set: a unicast host address, as a plain string."""
    try:
        if not isinstance(address, str):
            raise TypeError(address)
        ip = ipaddress.IPv4Address(address)
    except (ValueError, TypeError):
        ip = None
    if ip is None or ip.is_loopback or ip.is_multicast or ip.is_unspecified or (
            ip == ipaddress.IPv4Address("255.255.255.255")):
        raise InvalidInput(f"invalid guest address {show_value(address)}",
                           hint="a guest address is a unicast IPv4 address on the bridge")
    return str(ip)


def validate_guest_addresses(guests: object) -> tuple[str, ...]:
    """A tuple of distinct guest addresses, at most ``NAT_GUESTS_MAX``."""
    if not isinstance(guests, tuple) or len(guests) > NAT_GUESTS_MAX:
        raise InvalidInput(f"invalid NAT guest list {show_value(guests)}",
                           hint=f"a tuple of at most {NAT_GUESTS_MAX} IPv4 addresses")
    checked = tuple(validate_guest_address(g) for g in guests)
    if len(set(checked)) != len(checked):
        raise InvalidInput(f"NAT guest list {show_value(guests)} names an address twice")
    return checked


def validate_host_path(path: object, what: str) -> str:
    """A normalised absolute path of two or more components, at most ``MARKER_MAX`` long."""
    if not isinstance(path, str) or not 0 < len(path) <= MARKER_MAX or "\0" in path or (
            not path_marker(path)):
        raise InvalidInput(f"invalid {what} {show_value(path)}",
                           hint="a normalised absolute path (no '..', '//' or trailing '/')")
    return path


def validate_backing_file(path: object) -> str:
    """A loop device's backing file: a host path (``validate_host_path``) whose components
    are all of ``[A-Za-z0-9._-]`` (no newline or control character, whatever the kernel
    and ``losetup`` would make of it)."""
    checked = validate_host_path(path, "loop backing file")
    if not all(blockdev.BACKING_PART_RE.fullmatch(p) for p in checked.split("/")[1:]):
        raise InvalidInput(f"invalid loop backing file {show_value(path)}",
                           hint="a backing file's path has only A-Z, a-z, 0-9, '.', '_', '-' "
                                "between its slashes")
    return checked


def path_marker(marker: str) -> bool:
    """A normalised absolute path of at least two components (``/run/.../vmm.pid``)."""
    return marker.startswith("/") and os.path.normpath(marker) == marker and marker.count("/") > 1


def validate_markers(markers: object) -> tuple[str, ...]:
    """The argv fragments proving a VMM ours: at least one names a file of ours by path.

    With no markers any process started at the same tick would pass for the VMM;
    with a marker like ``/`` any program run by path would.
    """
    if not isinstance(markers, tuple) or not all(
        isinstance(m, str) and 0 < len(m) <= MARKER_MAX and "\0" not in m for m in markers
    ):
        raise InvalidInput(
            f"invalid VMM markers {show_value(markers)}",
            hint=f"a tuple of 1-{MARKER_MAX} character strings without NUL",
        )
    if not any(path_marker(m) for m in markers):
        raise InvalidInput(
            f"VMM markers {show_value(markers)} name no path: they cannot prove a process is ours",
            hint="pass the VMM's pidfile path (as in its argv) as a marker",
        )
    return markers


class InProcessHostOps:
    """``HostOps`` run in the daemon's own process (it holds the privileges)."""

    def __init__(self, jail: JailConfig | None = None) -> None:
        self.jail = jail or JailConfig()

    def can_manage_network(self) -> bool:
        return net.have_net_admin()

    def claim_bridge(self, name: str, cidr: str, owner: str, *, create: bool = True) -> bool:
        return net.claim_bridge(name, cidr, owner, create=create)

    def create_tap(self, name: str, bridge: str, owner_uid: int | None = None) -> None:
        net.create_tap(name, bridge, owner_uid)

    def delete_tap(self, name: str) -> bool:
        return net.delete_tap(name)

    def taps_on_our_bridge(self, bridge: str, owner: str) -> list[str]:
        return net.taps_on_our_bridge(bridge, owner)

    def signal_vmm(self, pid: int, start_time: int, markers: tuple[str, ...],
                   sig: signal.Signals) -> bool:
        """Prove identity with a pidfd held, then signal through it: the pid cannot be
        reused between the proof and the signal. Proof: the start time, every marker
        in the argv, and a marker that is a pidfile (not a symlink) naming ``pid``."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        try:
            if not proc.is_running(pid, start_time, ()):
                return False  # exited, or the pid now names a later process
            if not proc.is_running(pid, start_time, markers) or not any(
                path_marker(m) and proc.pidfile_names(Path(m), pid) for m in markers
            ):
                raise Forbidden(
                    f"refusing to signal pid {pid}: it is not a VMM of this daemon (its "
                    "command line lacks the VM's files, or no pidfile among them names it)",
                    hint="banger signals only the VMMs it started; stop the VM with banger vm stop",
                )
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)
        return True

    def route_vm_domain(self, bridge: str, resolver: str) -> None:
        resolved.route_vm_domain(bridge, resolver)

    def revert_resolver(self, bridge: str) -> None:
        resolved.revert(bridge)

    def nat_sync(self, bridge: str, guests: tuple[str, ...]) -> None:
        nat.apply(nat.table_document(bridge, guests))

    def nat_add(self, bridge: str, guest: str) -> None:
        nat.apply(nat.add_document(bridge, guest))

    def nat_remove(self, bridge: str, guest: str) -> None:
        nat.apply(nat.remove_document(bridge, guest))

    def enable_ip_forward(self) -> None:
        nat.enable_ip_forwarding()

    def attach_loop(self, backing: str, read_only: bool) -> str:
        return blockdev.attach_loop(backing, read_only)

    def detach_loop(self, device: str) -> bool:
        return blockdev.detach_loop(device)

    def create_snapshot(self, name: str, origin: str, cow: str) -> str:
        return blockdev.create_snapshot(name, origin, cow, os.getuid())

    def remove_snapshot(self, name: str) -> bool:
        return blockdev.remove_snapshot(name, os.getuid())

    def launch_jailed(self, jail_id: str, uid: int, gid: int) -> JailedVmm:
        return jailer.launch(self.jail, jail_id, uid, gid)

    def remove_jail(self, jail_id: str, uid: int) -> bool:
        return jailer.remove(self.jail, jail_id, uid)


class CheckedHostOps:
    """Validates every argument, then hands the call to ``transport`` (any ``HostOps``)."""

    def __init__(self, transport: HostOps) -> None:
        self.transport = transport

    def can_manage_network(self) -> bool:
        return self.transport.can_manage_network()

    def claim_bridge(self, name: str, cidr: str, owner: str, *, create: bool = True) -> bool:
        net.validate_bridge_name(name)
        net.parse_cidr(cidr)
        net.validate_owner(owner)
        return self.transport.claim_bridge(name, cidr, owner, create=bool(create))

    def create_tap(self, name: str, bridge: str, owner_uid: int | None = None) -> None:
        net.validate_tap_name(name)
        net.validate_bridge_name(bridge)
        self.transport.create_tap(name, bridge, validate_uid(owner_uid))

    def delete_tap(self, name: str) -> bool:
        return self.transport.delete_tap(net.validate_tap_name(name))

    def taps_on_our_bridge(self, bridge: str, owner: str) -> list[str]:
        net.validate_bridge_name(bridge)
        net.validate_owner(owner)
        return [net.validate_tap_name(t) for t in self.transport.taps_on_our_bridge(bridge, owner)]

    def signal_vmm(self, pid: int, start_time: int, markers: tuple[str, ...],
                   sig: signal.Signals) -> bool:
        validate_pid(pid)
        _validate_int(start_time, "process start time", 0, 1 << 63)
        validate_markers(markers)
        validate_signal(sig)
        return self.transport.signal_vmm(pid, start_time, markers, sig)

    def route_vm_domain(self, bridge: str, resolver: str) -> None:
        net.validate_bridge_name(bridge)
        self.transport.route_vm_domain(bridge, validate_resolver(resolver))

    def revert_resolver(self, bridge: str) -> None:
        self.transport.revert_resolver(net.validate_bridge_name(bridge))

    def nat_sync(self, bridge: str, guests: tuple[str, ...]) -> None:
        net.validate_bridge_name(bridge)
        self.transport.nat_sync(bridge, validate_guest_addresses(guests))

    def nat_add(self, bridge: str, guest: str) -> None:
        net.validate_bridge_name(bridge)
        self.transport.nat_add(bridge, validate_guest_address(guest))

    def nat_remove(self, bridge: str, guest: str) -> None:
        net.validate_bridge_name(bridge)
        self.transport.nat_remove(bridge, validate_guest_address(guest))

    def enable_ip_forward(self) -> None:
        self.transport.enable_ip_forward()

    def attach_loop(self, backing: str, read_only: bool) -> str:
        validate_backing_file(backing)
        if not isinstance(read_only, bool):
            raise InvalidInput(f"invalid read_only {show_value(read_only)}", hint="true or false")
        device = self.transport.attach_loop(backing, read_only)
        try:
            return blockdev.validate_loop_device(device)
        except InvalidInput:
            raise InternalError(f"the transport attached {backing} as {show_value(device)}, not a "
                                "loop device", hint="look for it with losetup -a") from None

    def detach_loop(self, device: str) -> bool:
        return self.transport.detach_loop(blockdev.validate_loop_device(device))

    def create_snapshot(self, name: str, origin: str, cow: str) -> str:
        blockdev.validate_dm_name(name)
        blockdev.validate_loop_device(origin)
        blockdev.validate_loop_device(cow)
        if origin == cow:
            raise InvalidInput(f"snapshot origin and cow are both {origin}",
                               hint="the copy-on-write device is a second loop device")
        mapper = self.transport.create_snapshot(name, origin, cow)
        try:
            return blockdev.validate_mapper_path(mapper)
        except InvalidInput:
            self.transport.remove_snapshot(name)
            raise InternalError(f"the transport made snapshot {name} as {show_value(mapper)}, not "
                                "its mapper path", hint="it was removed again") from None

    def remove_snapshot(self, name: str) -> bool:
        return self.transport.remove_snapshot(blockdev.validate_dm_name(name))

    def launch_jailed(self, jail_id: str, uid: int, gid: int) -> JailedVmm:
        validate_jail_id(jail_id)
        _validate_int(uid, "jail uid (never root)", 1, UID_MAX)
        _validate_int(gid, "jail gid (never root's)", 1, UID_MAX)
        return self.transport.launch_jailed(jail_id, uid, gid)

    def remove_jail(self, jail_id: str, uid: int) -> bool:
        validate_jail_id(jail_id)
        _validate_int(uid, "jail uid (never root)", 1, UID_MAX)
        return self.transport.remove_jail(jail_id, uid)


def host_ops_for(helper_socket: Path | None = None) -> HostOps:
    """The host operations this daemon uses, validated on every call.

    In-process when this process holds CAP_NET_ADMIN (root, as in CI); else the
    ``bangerd-root`` client when ``helper_socket`` names a helper that answers and
    serves our uid; else in-process without privileges, whose
    ``can_manage_network`` is False: VMs get user-mode networking.
    """
    if helper_socket is not None and not net.have_net_admin():
        from banger.host.helper_client import HelperHostOps

        helper = HelperHostOps(helper_socket, timeout=HELLO_TIMEOUT)
        for attempt in range(HELLO_ATTEMPTS):  # started together under systemd: it may lag
            try:
                hello = helper.hello()
                break
            except BangerError as exc:
                failure = exc.message
                time.sleep(0.5 if attempt < HELLO_ATTEMPTS - 1 else 0)
        else:
            log.warning("bangerd-root at %s unusable (%s): user-mode networking",
                        helper_socket, failure)
            return CheckedHostOps(InProcessHostOps())
        if hello.owner_uid == os.getuid():
            return CheckedHostOps(HelperHostOps(helper_socket))
        log.warning("bangerd-root at %s serves uid %d, not us: user-mode networking",
                    helper_socket, hello.owner_uid)
    return CheckedHostOps(InProcessHostOps())
