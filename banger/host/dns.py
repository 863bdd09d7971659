"""DNS sockets: a UDP+TCP listener with bounded work, and a bounded forwarder.

The answers themselves are pure (``core/dns.py``); the daemon decides which
listener answers what (``daemon/dns_service.py``). Everything here is bounded:
at most ``MAX_PENDING`` queries in work per listener and ``MAX_TCP_CLIENTS``
TCP connections (more are dropped or closed, never queued), an idle TCP
connection is closed after ``TCP_IDLE_S``, and each forwarded query gets
``FORWARD_TIMEOUT_S`` per upstream server, at most ``MAX_FORWARDS`` at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from dnslib import DNSRecord

from banger.core import dns
from banger.core.dns import IPAddress

log = logging.getLogger("banger.host.dns")

MAX_PENDING = 256
MAX_TCP_CLIENTS = 32
TCP_IDLE_S = 10.0
FORWARD_TIMEOUT_S = 2.0
MAX_FORWARDS = 64
RESOLV_CONF_MAX = 64 * 1024
DNS_PORT = 53

# (query bytes, the peer's address, over TCP?) -> reply bytes, or None to stay silent.
Handler = Callable[[bytes, IPAddress, bool], Awaitable[bytes | None]]


class _Work:
    """The listener's in-flight queries: owned, bounded, cancelled on close."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, data: bytes, peer: IPAddress, tcp: bool,
              send: Callable[[bytes], None]) -> None:
        if len(self.tasks) >= MAX_PENDING:
            return  # dropped: the client retries
        task = asyncio.get_running_loop().create_task(self._answer(data, peer, tcp, send))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, peer: IPAddress, tcp: bool,
                      send: Callable[[bytes], None]) -> None:
        try:
            reply = await self.handler(data, peer, tcp)
        except Exception:  # one bad query must not take the listener down
            log.exception("DNS handler failed")
            return
        if reply is not None:
            send(reply)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, work: _Work) -> None:
        self.work = work
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        transport = self.transport
        if transport is None:
            return
        peer = ipaddress.ip_address(str(addr[0]))
        self.work.start(data, peer, False, lambda reply: transport.sendto(reply, addr))


class DnsListener:
    """UDP and TCP DNS on one address and port, answering through ``handler``."""

    def __init__(self, host: str, handler: Handler) -> None:
        self.host = host
        self.port = 0
        self._work = _Work(handler)
        self._clients: set[asyncio.StreamWriter] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    @classmethod
    async def open(cls, host: str, port: int, handler: Handler) -> DnsListener:
        """Bind UDP then TCP (port 0: any free one, the same for both); ``OSError`` when taken."""
        listener = cls(host, handler)
        loop = asyncio.get_running_loop()
        try:
            listener._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(listener._work), local_addr=(host, port)
            )
            listener.port = int(listener._udp.get_extra_info("sockname")[1])
            listener._tcp = await asyncio.start_server(listener._serve_tcp, host, listener.port)
        except BaseException:
            await listener.close()
            raise
        return listener

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= MAX_TCP_CLIENTS:
            writer.close()
            return
        self._clients.add(writer)
        peer = ipaddress.ip_address(str(writer.get_extra_info("peername")[0]))
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_S):
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    data = await reader.readexactly(size)
                reply = await self._work.handler(data, peer, True)
                if reply is None:
                    break  # garbage: a TCP stream cannot resynchronise after it
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("DNS over TCP failed")
        finally:
            self._clients.discard(writer)
            writer.close()

    async def close(self) -> None:
        """Stop answering: sockets closed, in-flight queries cancelled (idempotent)."""
        if self._udp is not None:
            self._udp.close()
        for writer in list(self._clients):
            writer.close()
        await self._work.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()


def _family(address: IPAddress) -> socket.AddressFamily:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


Match = Callable[[bytes], bool]


async def _exchange_udp(query: bytes, server: IPAddress, port: int, match: Match) -> bytes:
    """Send ``query`` from a fresh connected socket (a random source port; the kernel drops
    datagrams from anyone but ``server``); return the first datagram that ``match``es."""
    loop = asyncio.get_running_loop()
    with socket.socket(_family(server), socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((str(server), port))
        await loop.sock_sendall(sock, query)
        while True:
            reply = await loop.sock_recv(sock, dns.MAX_MESSAGE)
            if match(reply):
                return reply


async def _exchange_tcp(query: bytes, server: IPAddress, port: int, match: Match) -> bytes:
    reader, writer = await asyncio.open_connection(str(server), port)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        reply = await reader.readexactly(size)
        if not match(reply):
            raise ConnectionError("the upstream's reply does not answer the query")
        return reply
    finally:
        writer.close()


class Forwarder:
    """Forwards a query to the first upstream that answers it, bounded in time and number."""

    def __init__(self, upstreams: Callable[[], Sequence[IPAddress]], *, port: int = DNS_PORT,
                 timeout: float = FORWARD_TIMEOUT_S, max_inflight: int = MAX_FORWARDS) -> None:
        self.upstreams = upstreams
        self.port = port
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_inflight)

    async def forward(self, data: bytes, request: DNSRecord, tcp: bool) -> bytes | None:
        """The upstream's reply with the client's id, or None (none answered, or too busy)."""
        if self._slots.locked():
            return None
        async with self._slots:
            message_id = secrets.randbits(16)
            query = dns.with_id(data, message_id)

            def match(reply: bytes) -> bool:
                return reply[:2] == query[:2] and dns.answers(
                    request, dns.with_id(reply, request.header.id)
                )

            exchange = _exchange_tcp if tcp else _exchange_udp
            for server in self.upstreams():
                try:
                    async with asyncio.timeout(self.timeout):
                        reply = await exchange(query, server, self.port, match)
                except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                    log.debug("upstream %s did not answer: %r", server, exc)
                    continue
                return dns.with_id(reply, request.header.id)
        return None


class UpstreamResolvers:
    """The forwarding targets, re-read when the resolv.conf files change (a stat per call)."""

    def __init__(self, resolv_conf: Path, resolved_conf: Path) -> None:
        self.files = (resolv_conf, resolved_conf)
        self._seen: tuple[object, ...] | None = None
        self._current: list[IPAddress] = []

    def _stamp(self) -> tuple[object, ...]:
        stamps: list[object] = []
        for path in self.files:
            try:
                st = os.stat(path)
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError as exc:
                stamps.append(exc.errno)
        return tuple(stamps)

    def __call__(self) -> list[IPAddress]:
        stamp = self._stamp()
        if stamp != self._seen:
            self._seen = stamp
            resolv, resolved = (read_small_text(p) for p in self.files)
            self._current = dns.upstream_resolvers(resolv or "", resolved)
            log.info("DNS upstream servers: %s", [str(a) for a in self._current] or "none")
        return self._current


def read_small_text(path: Path) -> str | None:
    """A system file's text (resolv.conf is often a symlink: it is followed), capped at
    ``RESOLV_CONF_MAX`` bytes; None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(RESOLV_CONF_MAX).decode("utf-8", "replace")
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot read %s: %s", path, exc.strerror)
        return None
