"""``vm ports``: what a running guest listens on, read over its SSH connection.

``ss -Hltunp`` runs in the guest (bounded output and time), its answer is parsed
as hostile (``core/listening.py``), and every TCP port the host can reach is
probed with a bounded ``HEAD /`` so that ports speaking HTTP get a URL.
"""

from __future__ import annotations

import asyncio
import ipaddress

from banger.api.models import GuestPort, VMPorts
from banger.core.errors import Conflict
from banger.core.listening import SS_ARGV, Listening, parse_ss
from banger.core.states import NetMode, VMState
from banger.daemon.vm_runtime import VMRuntime
from banger.host.portfwd import answers_http
from banger.store.records import VMRecord

SS_LIMIT = 1 << 20
SS_TIMEOUT = 10.0
PROBES_AT_ONCE = 32


def probe_target(vm: VMRecord, sock: Listening) -> tuple[str, int] | None:
    """Where the host reaches ``sock`` of ``vm``, or None (UDP, loopback-only, unpublished)."""
    if sock.proto != "tcp":
        return None
    if sock.address != "*" and ipaddress.ip_address(sock.address).is_loopback:
        return None
    if vm.net_mode is NetMode.TAP and vm.guest_ip:
        return vm.guest_ip, sock.port
    for port in vm.published:  # user-mode networking: only through a published port
        if port.proto == "tcp" and port.guest_port == sock.port:
            host = "127.0.0.1" if port.host_ip == "0.0.0.0" else port.host_ip
            return host, port.host_port
    return None


async def guest_ports(rt: VMRuntime, ref: str) -> VMPorts:
    """The running VM ``ref``'s listening sockets, with endpoints and HTTP URLs."""
    vm = rt.store.vms.get(ref)
    if vm.state is not VMState.RUNNING:
        raise Conflict(f"VM '{vm.name}' is {vm.state}",
                       hint=f"start it first: banger vm start {vm.name}")
    output = await rt.guest.read(rt.guest_target(vm), SS_ARGV, limit=SS_LIMIT,
                                 timeout=SS_TIMEOUT)
    sockets, unparsed = parse_ss(output)
    gate = asyncio.Semaphore(PROBES_AT_ONCE)

    async def http(sock: Listening) -> bool:
        target = probe_target(vm, sock)
        if target is None:
            return False
        async with gate:
            return await answers_http(*target)

    answers = await asyncio.gather(*(http(s) for s in sockets))
    return VMPorts(vm=vm.name, unparsed=unparsed, ports=[
        GuestPort(proto=s.proto, address=s.address, port=s.port, process=s.process,
                  endpoint=f"{vm.name}.vm:{s.port}",
                  url=f"http://{vm.name}.vm:{s.port}/" if is_http else None)
        for s, is_http in zip(sockets, answers, strict=True)
    ])
