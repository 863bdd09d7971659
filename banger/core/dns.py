"""The ``.vm`` zone and DNS forwarding decisions: pure functions over dnslib messages.

No sockets here (``host/dns.py`` has them): these take bytes or parsed
messages and return replies, so every answer has a unit test.

- ``<name>.vm`` is answered authoritatively from a lookup the caller passes
  (the daemon's store): an A record for a running VM with a guest address,
  NOERROR with no answers for other types of a running VM's name, NXDOMAIN
  for every other name in the zone. Negative answers carry the zone's SOA so
  resolvers cache them only for ``TTL`` seconds: records follow VM starts and
  stops.
- Anything that does not parse as one query (garbage, a response, several
  questions) is dropped: never answered, so the server can't be made to
  reflect or loop.
- The upstream resolvers for guests come from the host's resolv.conf, or from
  systemd-resolved's upstream list when resolv.conf names only its stub.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from dnslib import OPCODE, QTYPE, RCODE, RR, SOA, A, DNSLabel, DNSRecord

from banger.core.validate import NAME_RE

ZONE = "vm"
TTL = 5  # seconds: short, since a record lives as long as a VM runs
MAX_MESSAGE = 65535
HEADER_LEN = 12
MAX_UPSTREAMS = 3  # glibc's MAXNS: the same servers the host itself would try
RESOLVED_STUBS = frozenset(
    ipaddress.ip_address(a) for a in ("127.0.0.53", "127.0.0.54")
)  # systemd-resolved's stub and proxy listeners

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# A running VM's name -> its guest IPv4 addresses (possibly none); None: no such running VM.
Lookup = Callable[[str], Sequence[str] | None]

_SOA = SOA(mname=f"ns.{ZONE}.", rname=f"hostmaster.{ZONE}.", times=(1, 60, 60, 600, TTL))


def parse_query(data: bytes) -> DNSRecord | None:
    """``data`` as one DNS query, or None for anything that must be dropped unanswered."""
    if not HEADER_LEN <= len(data) <= MAX_MESSAGE:
        return None
    try:
        record = DNSRecord.parse(data)
    except Exception:  # hostile bytes: dnslib raises DNSError, and also Unicode/Index errors
        return None
    if record.header.qr or len(record.questions) != 1:
        return None
    return record


def _labels(qname: DNSLabel) -> list[bytes]:
    return [bytes(label).lower() for label in qname.label]


def in_zone(request: DNSRecord) -> bool:
    """True when the question is ``vm.`` or a name under it (any letter case)."""
    labels = _labels(request.q.qname)
    return bool(labels) and labels[-1] == ZONE.encode()


def vm_name(request: DNSRecord) -> str | None:
    """The VM name a ``<name>.vm`` question asks for, lowercased; None for other names."""
    labels = _labels(request.q.qname)
    if len(labels) != 2 or labels[1] != ZONE.encode():
        return None
    try:
        name = labels[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    return name if NAME_RE.fullmatch(name) else None


def _reply(request: DNSRecord, rcode: int, *, recursion: bool) -> DNSRecord:
    reply = request.reply(ra=int(recursion), aa=0)
    reply.header.rcode = rcode
    return reply


def unsupported(request: DNSRecord) -> bytes | None:
    """NOTIMP for an opcode other than QUERY (never answered, never forwarded), else None."""
    if request.header.opcode == OPCODE.QUERY:
        return None
    return _reply(request, RCODE.NOTIMP, recursion=False).pack()


def refused(request: DNSRecord) -> bytes:
    """REFUSED: not a name this listener serves."""
    return _reply(request, RCODE.REFUSED, recursion=False).pack()


def servfail(request: DNSRecord, *, recursion: bool = True) -> bytes:
    """SERVFAIL: the upstream servers did not answer (or too many queries in flight)."""
    return _reply(request, RCODE.SERVFAIL, recursion=recursion).pack()


def answer_zone(request: DNSRecord, lookup: Lookup, *, recursion: bool = False) -> bytes:
    """The authoritative answer to a question in the ``vm`` zone (``in_zone`` is true)."""
    reply = request.reply(ra=int(recursion), aa=1)
    q = request.q
    apex = len(_labels(q.qname)) == 1
    name = vm_name(request)
    addresses = None if apex or name is None else lookup(name)
    if apex and q.qtype in (QTYPE.SOA, QTYPE.ANY):
        reply.add_answer(RR(q.qname, QTYPE.SOA, rdata=_SOA, ttl=TTL))
    elif not apex and addresses is None:
        reply.header.rcode = RCODE.NXDOMAIN
    elif addresses and q.qtype in (QTYPE.A, QTYPE.ANY):
        for address in addresses:
            reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(address), ttl=TTL))
    if not reply.rr:
        reply.add_auth(RR(ZONE + ".", QTYPE.SOA, rdata=_SOA, ttl=TTL))
    return reply.pack()


def with_id(message: bytes, message_id: int) -> bytes:
    """``message`` with its 16-bit id replaced (forwarded queries get a fresh random one)."""
    return message_id.to_bytes(2, "big") + message[2:]


def answers(query: DNSRecord, reply: bytes) -> bool:
    """True when ``reply`` parses as a response to ``query`` (same id, same question)."""
    if not HEADER_LEN <= len(reply) <= MAX_MESSAGE:
        return False
    try:
        parsed = DNSRecord.parse(reply)
    except Exception:  # as in parse_query
        return False
    return (
        bool(parsed.header.qr)
        and parsed.header.id == query.header.id
        and [(_labels(q.qname), q.qtype, q.qclass) for q in parsed.questions]
        == [(_labels(q.qname), q.qtype, q.qclass) for q in query.questions]
    )


def nameservers(resolv_conf: str) -> list[IPAddress]:
    """The ``nameserver`` addresses of a resolv.conf text, in order; bad lines skipped."""
    found: list[IPAddress] = []
    for line in resolv_conf.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                address = ipaddress.ip_address(words[1])
            except ValueError:
                continue
            if address not in found:
                found.append(address)
    return found


def upstream_resolvers(resolv_conf: str, resolved_conf: str | None) -> list[IPAddress]:
    """The servers bangerd forwards guests' names to.

    The host's resolv.conf servers, except systemd-resolved's stub: when that is
    all it names, resolved's own upstream list (``resolved_conf``, the text of
    /run/systemd/resolve/resolv.conf). The stub would route names back through
    resolved's per-link settings (which include ours), and guests' queries have
    no business in the host's caches and split-DNS views beyond what upstream gives.
    """
    listed = nameservers(resolv_conf)
    chosen = [a for a in listed if a not in RESOLVED_STUBS]
    if listed and not chosen and resolved_conf is not None:
        chosen = [a for a in nameservers(resolved_conf) if a not in RESOLVED_STUBS]
    return chosen[:MAX_UPSTREAMS]
