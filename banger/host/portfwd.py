"""Published ports in TAP mode: a TCP proxy and a UDP relay on the daemon's event loop.

``HOST_IP:HOST_PORT`` on the host -> ``GUEST_IP:GUEST_PORT`` on the bridge. A
userspace forwarder rather than nftables DNAT: it works for 127.0.0.1 (DNAT of
locally-originated traffic to loopback needs ``route_localnet`` and output-chain
rules), needs no privileges, and a port taken by another program is an error at
bind time, before anything is created. Bounded: at most ``MAX_CLIENTS`` TCP
connections or UDP peers per port; an idle UDP peer is forgotten after
``UDP_IDLE_S``. Also here: the try-bind check and the HTTP probe of ``vm ports``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any, cast

from banger.core.errors import Conflict
from banger.core.publish import PublishedPort
from banger.host.sockets import describe_holders

MAX_CLIENTS = 256
CONNECT_TIMEOUT_S = 5.0
UDP_IDLE_S = 60.0
PENDING_MAX = 16  # datagrams held per peer while its guest socket is being made
CHUNK = 64 * 1024
PROBE_TIMEOUT_S = 1.0


def port_taken(port: PublishedPort, exc: OSError) -> Conflict:
    """The error for a host port we cannot bind, naming who holds it when visible."""
    holder = describe_holders(port.host_ip, port.host_port)
    return Conflict(
        f"cannot publish {port}: {port.proto} {port.host_ip}:{port.host_port} is not free "
        f"({exc.strerror}; {holder})",
        hint="pick another host port for --publish, or stop what holds it",
    )


def check_free(port: PublishedPort) -> None:
    """Bind and release ``port``'s host address now; Conflict when it is taken."""
    kind = socket.SOCK_STREAM if port.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if port.proto == "tcp":  # as the forwarder binds: TIME_WAIT leftovers do not count
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((port.host_ip, port.host_port))
        except OSError as exc:
            raise port_taken(port, exc) from None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class Forward:
    """One published port, forwarding to ``guest_ip``; ``close`` is idempotent."""

    def __init__(self, port: PublishedPort, guest_ip: str) -> None:
        self.port = port
        self.guest = (guest_ip, port.guest_port)
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    async def open(cls, port: PublishedPort, guest_ip: str) -> Forward:
        """Bind the host side now (Conflict when taken); the guest is reached per client."""
        forward = cls(port, guest_ip)
        loop = asyncio.get_running_loop()
        try:
            if port.proto == "tcp":
                forward._server = await asyncio.start_server(
                    forward._serve_tcp, port.host_ip, port.host_port, reuse_address=True)
            else:
                forward._udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpListener(forward), local_addr=(port.host_ip, port.host_port))
        except OSError as exc:
            raise port_taken(port, exc) from None
        return forward

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= MAX_CLIENTS:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            guest_r, guest_w = await asyncio.wait_for(
                asyncio.open_connection(*self.guest), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(_pipe(reader, guest_w), _pipe(guest_r, writer))
        except asyncio.CancelledError:
            pass  # close(): asyncio's stream callback would log a cancelled handler as an error
        finally:
            for w in (writer, guest_w):
                w.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._udp is not None:
            listener = cast(_UdpListener, self._udp.get_protocol())
            self._udp.close()
            self._udp = None
            await listener.closed  # the socket is released once the loop has closed it
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()


class _UdpPeer(asyncio.DatagramProtocol):
    """The guest side of one host peer: a connected socket, replies sent back to the peer."""

    def __init__(self, listener: _UdpListener, peer: tuple[str, int]) -> None:
        self.listener = listener
        self.peer = peer
        self.transport: asyncio.DatagramTransport | None = None
        self.used = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.used = time.monotonic()
        if self.listener.transport is not None:
            self.listener.transport.sendto(data, self.peer)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable: the guest has no server
        pass


class _UdpListener(asyncio.DatagramProtocol):
    """The host side of a published UDP port."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: dict[tuple[str, int], _UdpPeer] = {}
        self.pending: dict[tuple[str, int], list[bytes]] = {}  # peers being connected
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        for peer in self.peers.values():
            if peer.transport is not None:
                peer.transport.close()
        self.peers.clear()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        peer = self.peers.get(addr)
        if peer is not None and peer.transport is not None:
            peer.used = time.monotonic()
            peer.transport.sendto(data)
            return
        waiting = self.pending.get(addr)
        if waiting is not None:
            if len(waiting) < PENDING_MAX:
                waiting.append(data)
            return
        self._expire()
        if len(self.peers) + len(self.pending) < MAX_CLIENTS:
            self.pending[addr] = [data]
            task = asyncio.ensure_future(self._connect(addr))
            self.forward._tasks.add(task)
            task.add_done_callback(self.forward._tasks.discard)

    def _expire(self) -> None:
        now = time.monotonic()
        for addr, peer in list(self.peers.items()):
            if now - peer.used > UDP_IDLE_S and peer.transport is not None:
                peer.transport.close()
                del self.peers[addr]

    async def _connect(self, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, peer = await loop.create_datagram_endpoint(
                lambda: _UdpPeer(self, addr), remote_addr=self.forward.guest)
        except OSError:
            self.pending.pop(addr, None)
            return
        waiting = self.pending.pop(addr, [])
        if self.transport is None:  # closed meanwhile
            transport.close()
            return
        self.peers[addr] = peer
        for data in waiting:
            transport.sendto(data)


async def answers_http(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when ``host:port`` answers a ``HEAD /`` with an HTTP status line (bounded)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"HEAD / HTTP/1.0\r\nHost: banger\r\n\r\n")
            await writer.drain()
            head = await reader.read(16)
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
    return head.startswith(b"HTTP/")
