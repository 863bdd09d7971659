"""bangerd's DNS: ``<name>.vm`` for the host and the guests, other names forwarded for guests.

Two listeners (docs/network.md):

- ``dns_listen`` (default 127.0.0.1:42069), UDP and TCP, for the host: the
  ``vm`` zone only, anything else REFUSED. Started with the daemon; when the
  port is taken the daemon still starts, logs who holds it, and ``banger
  doctor`` says so.
- the bridge address, port 53, for guests (their resolver, from the kernel
  command line): the ``vm`` zone, and every other name forwarded to the host's
  upstream servers, only for clients in the bridge's subnet. Started when the
  bridge is claimed; then, where systemd-resolved runs, the ``vm`` domain is
  routed to it on the bridge link, and reverted when the daemon stops.

Records are read from the store at query time (one indexed row by name): always
what the store says, with no cache to keep in step with VM state changes.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from pathlib import Path

import structlog
from dnslib import DNSRecord

from banger.config import Settings
from banger.core import dns
from banger.core.dns import IPAddress
from banger.core.errors import BangerError
from banger.core.states import NetMode, VMState
from banger.daemon.vm_network import VMNetwork
from banger.host import resolved, sockets
from banger.host.dns import DNS_PORT, DnsListener, Forwarder, Handler, UpstreamResolvers
from banger.store.db import Store

log = structlog.get_logger("banger.daemon.dns")


@dataclass(frozen=True)
class ListenerStatus:
    """One listener as doctor reports it: serving, or why not."""

    address: str
    serving: bool
    error: str | None = None


@dataclass(frozen=True)
class DnsStatus:
    """What doctor reports of the DNS service (docs/doctor.md)."""

    bridge: str
    bridge_ip: str
    host: ListenerStatus
    guests: ListenerStatus | None  # None: no bridge yet, or user-mode networking
    net_mode: NetMode
    upstreams: tuple[str, ...]
    resolv_conf: Path
    resolved: str | None  # None: resolved routes .vm here; else why not


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class DnsService:
    def __init__(self, settings: Settings, store: Store, network: VMNetwork) -> None:
        self.store = store
        self.network = network
        self.listen = settings.dns_listen
        self.upstreams = UpstreamResolvers(settings.dns_upstream_resolv_conf,
                                           resolved.RESOLVED_UPSTREAM_CONF)
        self.resolv_conf = settings.dns_upstream_resolv_conf
        self.forwarder = Forwarder(self.upstreams)
        self._host: DnsListener | None = None
        self._host_error: str | None = None
        self._guests: DnsListener | None = None
        self._guests_error: str | None = None
        self._resolved: str | None = "the bridge does not exist yet (first TAP VM)"
        self._routed = False
        self._bridge_lock = asyncio.Lock()

    def lookup(self, name: str) -> tuple[str, ...] | None:
        """A running VM's guest addresses (none in user-mode networking), else None."""
        vm = self.store.vms.find(name)
        if vm is None or vm.name != name or vm.state is not VMState.RUNNING:
            return None
        return (vm.guest_ip,) if vm.guest_ip and vm.net_mode is NetMode.TAP else ()

    async def answer_host(self, data: bytes, peer: IPAddress, tcp: bool) -> bytes | None:
        """The loopback listener: the ``vm`` zone, nothing else."""
        request = dns.parse_query(data)
        if request is None:
            return None
        if not dns.in_zone(request):
            return dns.refused(request)
        return dns.unsupported(request) or dns.answer_zone(request, self.lookup)

    async def answer_guest(self, data: bytes, peer: IPAddress, tcp: bool) -> bytes | None:
        """The bridge listener: the ``vm`` zone, and forwarding for the bridge's subnet."""
        request = dns.parse_query(data)
        if request is None:
            return None
        if unsupported := dns.unsupported(request):
            return unsupported
        if dns.in_zone(request):
            return dns.answer_zone(request, self.lookup, recursion=True)
        if peer not in self.network.bridge.network:
            return dns.refused(request)
        return await self._forward(data, request, tcp)

    async def _forward(self, data: bytes, request: DNSRecord, tcp: bool) -> bytes:
        reply = await self.forwarder.forward(data, request, tcp)
        return reply if reply is not None else dns.servfail(request)

    async def _open(self, address: str, handler: Handler
                    ) -> tuple[DnsListener | None, str | None]:
        host, port = _split(address)
        try:
            listener = await DnsListener.open(host, port, handler)
        except OSError as exc:
            why = f"cannot listen on {address}: {exc.strerror}"
            if exc.errno == errno.EADDRINUSE:
                why = await asyncio.to_thread(sockets.describe_holders, host, port)
            log.warning("DNS listener not started", address=address, error=why)
            return None, why
        log.info("DNS listening", address=listener.address)
        return listener, None

    async def start(self) -> None:
        """The host listener; the guests' one follows the bridge (``on_bridge_up``)."""
        self._host, self._host_error = await self._open(self.listen, self.answer_host)
        self.network.on_bridge_up(self.bridge_up)

    async def bridge_up(self) -> None:
        """Start the guests' listener on the bridge address and route ``vm`` there (once)."""
        async with self._bridge_lock:
            if self._guests is not None:
                return
            address = f"{self.network.bridge.ip}:{DNS_PORT}"
            self._guests, self._guests_error = await self._open(address, self.answer_guest)
            if self._guests is not None and not self._routed:
                await self._route()

    async def _route(self) -> None:
        bridge, ip = self.network.bridge_name, str(self.network.bridge.ip)
        why = await asyncio.to_thread(resolved.why_not_available)
        if why is not None:
            log.info("not routing .vm through systemd-resolved", reason=why)
            self._resolved = why
            return
        try:
            await asyncio.to_thread(self.network.ops.route_vm_domain, bridge, ip)
        except BangerError as exc:
            self._resolved = f"resolvectl failed: {exc.message}"
            log.warning("cannot route .vm through systemd-resolved", error=exc.message)
            return
        self._routed, self._resolved = True, None
        log.info("systemd-resolved routes .vm to the bridge", bridge=bridge, resolver=ip)

    async def close(self) -> None:
        if self._routed:
            try:
                await asyncio.to_thread(self.network.ops.revert_resolver, self.network.bridge_name)
            except BangerError as exc:
                log.warning("cannot revert systemd-resolved's settings", error=exc.message)
            self._routed = False
        for listener in (self._guests, self._host):
            if listener is not None:
                await listener.close()
        self._guests = self._host = None

    def status(self) -> DnsStatus:
        """A snapshot for doctor (taken on the loop, read in a thread)."""
        host = ListenerStatus(self._host.address if self._host else self.listen,
                              self._host is not None, self._host_error)
        guests = None
        if self._guests is not None or self._guests_error is not None:
            address = f"{self.network.bridge.ip}:{DNS_PORT}"
            guests = ListenerStatus(address, self._guests is not None, self._guests_error)
        return DnsStatus(self.network.bridge_name, str(self.network.bridge.ip), host, guests,
                         self.network.mode,
                         tuple(str(a) for a in self.upstreams()), self.resolv_conf,
                         self._resolved)
