"""bangerd's DNS service over real loopback sockets: the store's VMs, forwarding, its bounds.

The guests' listener binds the bridge address (only in a network namespace with a
bridge: tests/vm/test_dns.py); here its handler is called with the peer addresses a
guest or a stranger would have, and forwards to a real upstream on loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from banger.config import Settings
from banger.core.dns import IPAddress
from banger.core.states import NetMode, VMState
from banger.daemon.dns_service import DnsService
from banger.daemon.vm_network import VMNetwork
from banger.host.dns import DnsListener, Forwarder
from banger.store import Store, VMRecord
from tests.support.fake_host_ops import RecordingHostOps

T = TypeVar("T")
GUEST = ipaddress.ip_address("172.16.0.9")
STRANGER = ipaddress.ip_address("192.0.2.50")


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro())  # type: ignore[arg-type]


class Upstream:
    """A real DNS server on loopback that answers ``example.test`` and notes every name."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.asked: list[str] = []

    async def handle(self, data: bytes, peer: IPAddress, tcp: bool) -> bytes | None:
        query = DNSRecord.parse(data)
        self.asked.append(str(query.q.qname))
        if self.silent:
            await asyncio.sleep(3600)
        reply = query.reply()
        reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("198.51.100.80"), ttl=60))
        return reply.pack()


@asynccontextmanager
async def service(tmp_path: Path, upstream: Upstream | None = None,
                  listen: str = "127.0.0.1:0") -> AsyncIterator[DnsService]:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    settings = Settings(state_dir=tmp_path, cache_dir=tmp_path, runtime_dir=tmp_path,
                        dns_listen=listen, dns_upstream_resolv_conf=resolv)
    store = Store.open(tmp_path / "state.db")
    network = VMNetwork(store, "banger0", "172.16.0.1/24", "banger:0:000000000000",
                        frozenset({NetMode.TAP}), RecordingHostOps())
    dns = DnsService(settings, store, network)
    up = await DnsListener.open("127.0.0.1", 0, upstream.handle) if upstream else None
    if up is not None:
        dns.forwarder = Forwarder(dns.upstreams, port=up.port, timeout=0.5, max_inflight=2)
    await dns.start()
    try:
        yield dns
    finally:
        await dns.close()
        if up is not None:
            await up.close()
        store.close()


def add_vm(store: Store, name: str, state: VMState, ip: str = "172.16.0.7") -> VMRecord:
    return store.vms.add(VMRecord(id=os.urandom(6).hex(), name=name, backend="qemu", vcpu=1,
                                  memory_mib=128, disk_bytes=1 << 30, state=state, guest_ip=ip))


async def udp(address: str, message: bytes) -> DNSRecord:
    host, port = address.rsplit(":", 1)
    reply = await asyncio.to_thread(DNSRecord(q=DNSRecord.parse(message).q).send, host,
                                    int(port), timeout=5)
    return DNSRecord.parse(reply)


def question(name: str, qtype: str = "A") -> bytes:
    return DNSRecord.question(name, qtype).pack()


def test_the_host_listener_answers_from_the_store_at_query_time(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[int, list[str]]]:
        async with service(tmp_path) as dns:
            vm = add_vm(dns.store, "box", VMState.RUNNING)
            add_vm(dns.store, "idle", VMState.STOPPED, ip="172.16.0.8")
            address = dns.status().host.address
            seen = []
            for name in ("box.vm", "BOX.VM", "idle.vm", "nobody.vm", "example.com"):
                reply = await udp(address, question(name))
                seen.append((reply.header.rcode, [str(r.rdata) for r in reply.rr]))
            dns.store.vms.transition(vm, VMState.STOPPING, reason="test")
            reply = await udp(address, question("box.vm"))
            seen.append((reply.header.rcode, [str(r.rdata) for r in reply.rr]))
            return seen

    assert run(scenario) == [
        (RCODE.NOERROR, ["172.16.0.7"]),
        (RCODE.NOERROR, ["172.16.0.7"]),
        (RCODE.NXDOMAIN, []),  # not running
        (RCODE.NXDOMAIN, []),
        (RCODE.REFUSED, []),  # the host's listener serves the zone only
        (RCODE.NXDOMAIN, []),  # stopping: gone at once
    ]


def test_the_host_listener_answers_over_tcp_and_survives_garbage(tmp_path: Path) -> None:
    async def scenario() -> tuple[bytes, DNSRecord]:
        async with service(tmp_path) as dns:
            add_vm(dns.store, "box", VMState.RUNNING)
            host, port = dns.status().host.address.rsplit(":", 1)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for junk in (b"\xff" * 40, b"", b"\x00" * 12 + b"\xc0\x0c", b"x"):
                    s.sendto(junk, (host, int(port)))
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(struct.pack("!H", 5) + b"\xff" * 5)  # garbage: the stream is closed
            closed = await reader.read()
            writer.close()
            reader, writer = await asyncio.open_connection(host, int(port))
            message = question("box.vm")
            writer.write(struct.pack("!H", len(message)) + message)
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            reply = DNSRecord.parse(await reader.readexactly(size))
            writer.close()
            return closed, reply

    closed, reply = run(scenario)
    assert closed == b""
    assert [str(r.rdata) for r in reply.rr] == ["172.16.0.7"]


def test_a_taken_port_leaves_the_daemon_running_and_names_the_holder(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]

        async def scenario() -> tuple[bool, str | None]:
            async with service(tmp_path, listen=f"127.0.0.1:{port}") as dns:
                status = dns.status().host
                return status.serving, status.error

        serving, error = run(scenario)
    assert not serving
    assert error is not None and f"pid {os.getpid()} (" in error and f"127.0.0.1:{port}" in error


def test_guests_get_the_zone_and_forwarding_strangers_and_vm_names_never_go_upstream(
    tmp_path: Path,
) -> None:
    upstream = Upstream()

    async def scenario() -> list[tuple[int, list[str]]]:
        async with service(tmp_path, upstream) as dns:
            add_vm(dns.store, "box", VMState.RUNNING)
            seen = []
            for name, peer in (("example.test", GUEST), ("box.vm", GUEST),
                               ("nobody.vm", GUEST), ("example.test", STRANGER)):
                data = question(name)
                reply = DNSRecord.parse(await dns.answer_guest(data, peer, False) or b"")
                assert reply.header.id == DNSRecord.parse(data).header.id
                seen.append((reply.header.rcode, [str(r.rdata) for r in reply.rr]))
            tcp = await dns.answer_guest(question("example.test"), GUEST, True)
            seen.append((DNSRecord.parse(tcp or b"").header.rcode, []))
            update = DNSRecord.question("example.test")
            update.header.opcode = 5  # UPDATE: never forwarded
            reply = await dns.answer_guest(update.pack(), GUEST, False)
            seen.append((DNSRecord.parse(reply or b"").header.rcode, []))
            return seen

    assert run(scenario) == [
        (RCODE.NOERROR, ["198.51.100.80"]),
        (RCODE.NOERROR, ["172.16.0.7"]),
        (RCODE.NXDOMAIN, []),
        (RCODE.REFUSED, []),  # outside the bridge's subnet: no open resolver
        (RCODE.NOERROR, []),  # over TCP too
        (RCODE.NOTIMP, []),
    ]
    assert upstream.asked == ["example.test.", "example.test."]


def test_forwarding_is_bounded_in_time_and_in_flight(tmp_path: Path) -> None:
    upstream = Upstream(silent=True)

    async def scenario() -> tuple[list[int], float]:
        async with service(tmp_path, upstream) as dns:
            loop = asyncio.get_running_loop()
            started = loop.time()
            replies = await asyncio.gather(*(
                dns.answer_guest(question(f"n{i}.example.test"), GUEST, False) for i in range(5)
            ))
            elapsed = loop.time() - started
            return [DNSRecord.parse(r or b"").header.rcode for r in replies], elapsed

    rcodes, elapsed = run(scenario)
    assert rcodes == [RCODE.SERVFAIL] * 5
    assert len(upstream.asked) == 2  # max_inflight=2: the others were refused at once
    assert elapsed < 2.0  # one 0.5 s timeout per upstream, not a queue


def test_a_stub_only_resolv_conf_forwards_nowhere_it_would_loop(tmp_path: Path) -> None:
    upstream = Upstream()

    async def scenario() -> tuple[int, tuple[str, ...]]:
        async with service(tmp_path, upstream) as dns:
            (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.53\nnameserver 127.0.0.54\n")
            reply = await dns.answer_guest(question("example.test"), GUEST, False)
            return DNSRecord.parse(reply or b"").header.rcode, dns.status().upstreams

    rcode, upstreams = run(scenario)
    assert rcode == RCODE.SERVFAIL and upstream.asked == []
    assert "127.0.0.53" not in upstreams


def test_upstream_replies_that_do_not_answer_the_query_are_ignored(tmp_path: Path) -> None:
    async def wrong(data: bytes, peer: IPAddress, tcp: bool) -> bytes:
        return DNSRecord.question("other.test").reply().pack()  # a different id and name

    async def scenario() -> int:
        bad = await DnsListener.open("127.0.0.1", 0, wrong)
        try:
            forwarder = Forwarder(lambda: [ipaddress.ip_address("127.0.0.1")], port=bad.port,
                                  timeout=0.3)
            data = question("example.test")
            reply = await forwarder.forward(data, DNSRecord.parse(data), False)
            return 0 if reply is None else 1
        finally:
            await bad.close()

    assert run(scenario) == 0


@pytest.mark.parametrize("mode", [NetMode.USER])
def test_a_running_user_mode_vm_has_a_name_but_no_address(tmp_path: Path, mode: NetMode) -> None:
    async def scenario() -> DNSRecord:
        async with service(tmp_path) as dns:
            vm = add_vm(dns.store, "slirp", VMState.RUNNING)
            dns.store.vms.update(vm.id, net_mode=mode)
            return await udp(dns.status().host.address, question("slirp.vm"))

    reply = run(scenario)
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr
