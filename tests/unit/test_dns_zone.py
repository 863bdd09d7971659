"""The ``.vm`` zone's answers and the upstream choice: pure functions, real DNS messages."""

from __future__ import annotations

import ipaddress
import random

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from banger.core import dns

RUNNING = {"box": ("172.16.0.7",), "usermode": ()}


def lookup(name: str) -> tuple[str, ...] | None:
    return RUNNING.get(name)


def ask(name: str, qtype: str = "A", *, recursion: bool = False) -> DNSRecord:
    request = dns.parse_query(DNSRecord.question(name, qtype).pack())
    assert request is not None and dns.in_zone(request)
    return DNSRecord.parse(dns.answer_zone(request, lookup, recursion=recursion))


def test_a_running_vm_gets_its_guest_address_authoritatively() -> None:
    reply = ask("box.vm")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa
    assert [(str(rr.rname), rr.rtype, str(rr.rdata), rr.ttl) for rr in reply.rr] == [
        ("box.vm.", QTYPE.A, "172.16.0.7", dns.TTL)
    ]


def test_names_are_case_insensitive_and_the_question_keeps_its_case() -> None:
    reply = ask("BoX.Vm")
    assert [str(rr.rdata) for rr in reply.rr] == ["172.16.0.7"]
    assert str(reply.rr[0].rname) == "BoX.Vm."


@pytest.mark.parametrize("name", ["nobody.vm", "stopped.vm", "a.box.vm", "-x.vm", "x_y.vm"])
def test_unknown_or_not_running_names_are_nxdomain_with_the_zone_soa(name: str) -> None:
    reply = ask(name)
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.header.aa and not reply.rr
    assert [rr.rtype for rr in reply.auth] == [QTYPE.SOA]


@pytest.mark.parametrize("qtype", ["AAAA", "MX", "TXT"])
def test_other_types_of_a_known_name_are_noerror_without_answers(qtype: str) -> None:
    reply = ask("box.vm", qtype)
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr
    assert [rr.rtype for rr in reply.auth] == [QTYPE.SOA]


def test_a_running_vm_without_a_bridge_address_has_no_a_record() -> None:
    reply = ask("usermode.vm")
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr


def test_the_zone_apex_answers_its_soa() -> None:
    reply = ask("vm", "SOA")
    assert reply.header.rcode == RCODE.NOERROR and [rr.rtype for rr in reply.rr] == [QTYPE.SOA]


def test_recursion_available_only_where_asked() -> None:
    assert not ask("box.vm").header.ra
    assert ask("box.vm", recursion=True).header.ra


def test_names_outside_the_zone_are_not_in_it_and_get_refused() -> None:
    request = dns.parse_query(DNSRecord.question("example.com").pack())
    assert request is not None and not dns.in_zone(request)
    assert not dns.in_zone(dns.parse_query(DNSRecord.question("vm.example.com").pack()))  # type: ignore[arg-type]
    assert DNSRecord.parse(dns.refused(request)).header.rcode == RCODE.REFUSED


@pytest.mark.parametrize("opcode", [1, 2, 4, 5])  # IQUERY, STATUS, NOTIFY, UPDATE
def test_a_non_query_opcode_is_not_implemented(opcode: int) -> None:
    message = DNSRecord.question("example.com")
    message.header.opcode = opcode
    request = dns.parse_query(message.pack())
    assert request is not None
    assert DNSRecord.parse(dns.unsupported(request) or b"").header.rcode == RCODE.NOTIMP
    assert dns.unsupported(dns.parse_query(DNSRecord.question("x").pack())) is None  # type: ignore[arg-type]


def _hostile_packets() -> list[bytes]:
    good = DNSRecord.question("box.vm").pack()
    rng = random.Random(7)
    packets = [b"", b"\x00", good[:11], good[:-1], good + b"\xff" * 3, b"\xff" * 512,
               b"\x00" * 12 + b"\x00" * 70000]
    packets += [good[:12] + bytes([0xC0, 0x0C]) + good[14:]]  # a name pointing at itself
    packets += [bytes(rng.randrange(256) for _ in range(rng.randrange(12, 80)))
                for _ in range(2000)]
    for _ in range(500):  # one flipped byte anywhere
        flipped = bytearray(good)
        flipped[rng.randrange(len(good))] ^= 1 << rng.randrange(8)
        packets.append(bytes(flipped))
    return packets


def test_malformed_packets_are_dropped_never_raised() -> None:
    for packet in _hostile_packets():
        request = dns.parse_query(packet)
        if request is not None:  # what parses is answered without raising
            if dns.in_zone(request):
                dns.answer_zone(request, lookup)
            else:
                dns.refused(request)


def test_responses_and_multi_question_messages_are_dropped() -> None:
    response = DNSRecord.question("box.vm").reply().pack()
    assert dns.parse_query(response) is None
    two = DNSRecord.question("box.vm")
    two.add_question(*DNSRecord.question("other.vm").questions)
    assert dns.parse_query(two.pack()) is None


def test_answers_matches_id_and_question_only() -> None:
    query = DNSRecord.question("example.test")
    reply = query.reply()
    assert dns.answers(query, reply.pack())
    assert not dns.answers(query, dns.with_id(reply.pack(), (query.header.id + 1) % 65536))
    assert not dns.answers(query, DNSRecord.question("other.test").reply().pack())
    assert not dns.answers(query, query.pack())  # not a response
    assert not dns.answers(query, b"\x00" * 5)


RESOLVED_UPSTREAM = "# resolved\nnameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch lan\n"


def addrs(*values: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(v) for v in values]


def test_resolv_conf_servers_are_used_in_order_skipping_bad_lines() -> None:
    text = ("; comment\nnameserver 10.0.0.1\nnameserver bogus\nnameserver\n"
            "options edns0\nnameserver 2001:db8::1\nnameserver 10.0.0.1\n")
    assert dns.upstream_resolvers(text, RESOLVED_UPSTREAM) == addrs("10.0.0.1", "2001:db8::1")


def test_the_resolved_stub_alone_means_resolveds_upstream_list() -> None:
    stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
    assert dns.upstream_resolvers(stub, RESOLVED_UPSTREAM) == addrs("192.0.2.1", "192.0.2.2")


def test_the_stub_is_never_an_upstream_even_beside_others_or_without_resolveds_list() -> None:
    mixed = "nameserver 127.0.0.53\nnameserver 10.0.0.1\n"
    assert dns.upstream_resolvers(mixed, RESOLVED_UPSTREAM) == addrs("10.0.0.1")
    assert dns.upstream_resolvers("nameserver 127.0.0.53\n", None) == []
    assert dns.upstream_resolvers("nameserver 127.0.0.53\n", "nameserver 127.0.0.53\n") == []


def test_at_most_three_upstreams_like_glibc() -> None:
    text = "".join(f"nameserver 10.0.0.{i}\n" for i in range(1, 6))
    assert dns.upstream_resolvers(text, None) == addrs("10.0.0.1", "10.0.0.2", "10.0.0.3")
    assert dns.upstream_resolvers("", RESOLVED_UPSTREAM) == []
