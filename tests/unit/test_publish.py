"""Published ports: the spec grammar, refusals before anything is created, the forwarders
over real loopback sockets, QEMU's hostfwd, and ``ss`` output parsed as hostile."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.api.models import VMCreateRequest
from banger.core.errors import Conflict, InvalidInput, Unavailable
from banger.core.listening import Listening, parse_line, parse_ss
from banger.core.publish import PublishedPort, parse_publish, parse_publish_list
from banger.core.vmspec import RootDisk, UserNet, VMSpec
from banger.host import portfwd
from banger.host.portfwd import Forward, answers_http, check_free
from banger.vmm.qemu import qemu_argv
from tests.support.fake_vms import FakeVMs, fake_vms


@pytest.mark.parametrize(("spec", "want"), [
    ("8080:80", PublishedPort(host_port=8080, guest_port=80)),
    ("0.0.0.0:8080:80/tcp", PublishedPort(host_ip="0.0.0.0", host_port=8080, guest_port=80)),
    ("127.0.0.2:5353:53/udp",
     PublishedPort(host_ip="127.0.0.2", host_port=5353, guest_port=53, proto="udp")),
    ("65535:1", PublishedPort(host_port=65535, guest_port=1)),
])
def test_a_publish_spec_is_parsed_with_127_0_0_1_and_tcp_by_default(
    spec: str, want: PublishedPort
) -> None:
    assert parse_publish(spec) == want


@pytest.mark.parametrize("spec", [
    "0", "70000", "abc:1", "0:80", "80:0", "70000:80", "80:70000", "8080", "8080:80/sctp",
    "8080:80/TCP", "1.2.3:8080:80", "256.0.0.1:8080:80", "224.0.0.1:8080:80",
    "255.255.255.255:1:2", "[::1]:8080:80", " 8080:80", "8080:80 ", "8080:80\n",
    "8080:80/udp/tcp", "-1:80", "+80:80", "٨٠:80", "8080:80;rm -rf /", "x" * 10000, "",
    "080080:80",
])
def test_an_invalid_publish_spec_is_one_clear_error(spec: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_publish(spec)
    assert "--publish" in err.value.message and len(err.value.message) < 200
    assert err.value.hint


def test_a_host_port_given_twice_is_refused_but_tcp_and_udp_may_share_it() -> None:
    with pytest.raises(InvalidInput, match="published twice"):
        parse_publish_list(["8080:80", "127.0.0.2:8080:81"])
    assert len(parse_publish_list(["8080:80", "8080:80/udp"])) == 2
    with pytest.raises(InvalidInput, match="at most"):
        parse_publish_list([f"{p}:80" for p in range(1000, 1100)])


def _held(kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


@pytest.mark.parametrize(("kind", "proto"), [(socket.SOCK_STREAM, "tcp"),
                                             (socket.SOCK_DGRAM, "udp")])
def test_a_taken_host_port_is_a_conflict_naming_who_holds_it(kind: int, proto: str) -> None:
    with _held(kind) as held:
        port = PublishedPort(host_port=held.getsockname()[1], guest_port=80, proto=proto)
        with pytest.raises(Conflict) as err:
            check_free(port)
    assert f"pid {os.getpid()}" in err.value.message and "another host port" in (err.value.hint
                                                                               or "")
    check_free(port)  # free again once released


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[FakeVMs]:
    with fake_vms(tmp_path) as made:
        yield made


def _create(vms: FakeVMs, **fields: object) -> None:
    async def go() -> None:
        await vms.creator.create(VMCreateRequest(name="box", image="img", disk="8M",
                                                 **fields))  # type: ignore[arg-type]
    vms.drive(go)


def test_create_refuses_bad_publishes_a_taken_port_and_nat_in_user_mode_leaving_nothing(
    vms: FakeVMs,
) -> None:
    with pytest.raises(InvalidInput):
        _create(vms, publish=["8080:80", "8080:81"])
    with _held(socket.SOCK_STREAM) as held:
        with pytest.raises(Conflict):
            _create(vms, publish=[f"{held.getsockname()[1]}:80"])
    with pytest.raises(Unavailable, match="--nat needs TAP networking"):
        _create(vms, nat=True)
    assert vms.store.vms.list() == [] and vms.leftovers() == [] and vms.backend.calls == []


def test_user_mode_networking_publishes_through_qemu_hostfwd(tmp_path: Path) -> None:
    net = UserNet(ssh_host_port=2222, mac="02:00:00:00:00:01", forwards=(
        parse_publish("8080:80"), parse_publish("0.0.0.0:5353:53/udp")))
    spec = VMSpec(vm_id="v1", name="box", vcpu=1, memory_mib=256, kernel=tmp_path / "k",
                  root=RootDisk(tmp_path / "r"), work_disk=tmp_path / "w",
                  console_log=tmp_path / "c", vmm_log=tmp_path / "l", run_dir=tmp_path, net=net)
    argv = qemu_argv(spec)
    assert argv[argv.index("-netdev") + 1] == (
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80,"
        "hostfwd=udp:0.0.0.0:5353-:53")


# -- the TAP-mode forwarders, over loopback ------------------------------------------------


async def _tcp_echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo:" + await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_published_tcp_port_reaches_the_guest_server_and_is_released_on_close() -> None:
    async def scenario() -> bytes:
        server, guest_port = await _tcp_echo_server()
        port = PublishedPort(host_port=_free(socket.SOCK_STREAM), guest_port=guest_port)
        forward = await Forward.open(port, "127.0.0.1")
        with pytest.raises(Conflict):
            await Forward.open(port, "127.0.0.1")  # the port is ours now
        reader, writer = await asyncio.open_connection("127.0.0.1", port.host_port)
        writer.write(b"hi")
        writer.write_eof()
        got = await reader.read()
        writer.close()
        await forward.close()
        await forward.close()  # idempotent
        check_free(port)
        server.close()
        return got

    assert asyncio.run(scenario()) == b"echo:hi"


def test_a_published_udp_port_relays_both_ways_per_peer() -> None:
    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(b"echo:" + data, addr)  # type: ignore[attr-defined]

        guest, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        port = PublishedPort(host_port=_free(socket.SOCK_DGRAM),
                             guest_port=guest.get_extra_info("sockname")[1], proto="udp")
        forward = await Forward.open(port, "127.0.0.1")
        replies = []
        for text in (b"one", b"two"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(5)
                client.sendto(text, ("127.0.0.1", port.host_port))
                replies.append(await asyncio.to_thread(client.recv, 100))
        await forward.close()
        guest.close()
        check_free(port)
        return replies

    assert asyncio.run(scenario()) == [b"echo:one", b"echo:two"]


def test_the_http_probe_tells_http_from_other_protocols_within_its_bound() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b"HTTP/1.0 200 OK\r\n\r\n")
            writer.close()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        web = await asyncio.start_server(http, "127.0.0.1", 0)
        mute = await asyncio.start_server(silent, "127.0.0.1", 0)
        answers = (await answers_http("127.0.0.1", web.sockets[0].getsockname()[1]),
                   await answers_http("127.0.0.1", mute.sockets[0].getsockname()[1], 0.3),
                   await answers_http("127.0.0.1", _free(socket.SOCK_STREAM)))
        for server in (web, mute):
            server.close()
        return answers

    assert asyncio.run(scenario()) == (True, False, False)


def test_forwarders_bound_their_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(portfwd, "MAX_CLIENTS", 1)

    async def scenario() -> bytes:
        server, guest_port = await _tcp_echo_server()
        port = PublishedPort(host_port=_free(socket.SOCK_STREAM), guest_port=guest_port)
        forward = await Forward.open(port, "127.0.0.1")
        _, first = await asyncio.open_connection("127.0.0.1", port.host_port)
        await asyncio.sleep(0.2)
        reader, second = await asyncio.open_connection("127.0.0.1", port.host_port)
        refused = await reader.read()  # closed at once: the one slot is taken
        for w in (first, second):
            w.close()
        await forward.close()
        server.close()
        return refused

    assert asyncio.run(scenario()) == b""


# -- ss output, as hostile input ----------------------------------------------------------

SS = (
    b'udp   UNCONN 0      0         127.0.0.53%lo:53        0.0.0.0:*    '
    b'users:(("systemd-resolve",pid=301,fd=13))\n'
    b'tcp   LISTEN 0      128             0.0.0.0:22        0.0.0.0:*    '
    b'users:(("sshd",pid=1,fd=3))\n'
    b'tcp   LISTEN 0      128                [::]:22           [::]:*    '
    b'users:(("sshd",pid=1,fd=4))\n'
    b'tcp   LISTEN 0      4096                  *:8080            *:*    '
    b'users:(("my server",pid=7,fd=5),("w",pid=8,fd=5))\n'
    b'tcp   LISTEN 0      5               0.0.0.0:9000      0.0.0.0:*\n'
)


def test_ss_output_gives_each_listening_socket_once() -> None:
    found, unparsed = parse_ss(SS + SS)
    assert unparsed == 0
    assert found == [
        Listening("tcp", 22, "0.0.0.0", "sshd"), Listening("tcp", 22, "::", "sshd"),
        Listening("tcp", 8080, "*", "my server"), Listening("tcp", 9000, "0.0.0.0", None),
        Listening("udp", 53, "127.0.0.53", "systemd-resolve"),
    ]


@pytest.mark.parametrize("line", [
    'tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("\x1b[31mred",pid=1,fd=3))',
    'tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("a"b",pid=1,fd=3))',
    'tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("' + "x" * 65 + '",pid=1,fd=3))',
    'tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* whatever',
    "tcp ESTAB 0 0 10.0.0.1:22 10.0.0.2:5555",
    "tcp LISTEN 0 128 0.0.0.0:0 0.0.0.0:*", "tcp LISTEN 0 128 0.0.0.0:65536 0.0.0.0:*",
    "tcp LISTEN 0 128 0.0.0.0:99999999999999999999 0.0.0.0:*",
    "tcp LISTEN 0 128 evil.example:22 0.0.0.0:*", "tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:80",
    "tcp LISTEN 0 128 0.0.0.0%eth0;rm:22 0.0.0.0:*", "tcp LISTEN x 128 0.0.0.0:22 0.0.0.0:*",
    "sctp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*", "udp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*",
    "tcp LISTEN 0 128 0.0.0.0:٢٢ 0.0.0.0:*", "tcp LISTEN 0 128 [::1:22 0.0.0.0:*",
    "tcp LISTEN", "tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*" + " " * 2000, "\x00" * 20,
])
def test_a_hostile_ss_line_is_dropped_and_counted_never_half_read(line: str) -> None:
    assert parse_line(line) is None
    found, unparsed = parse_ss(line.encode("utf-8", "surrogateescape") + b"\n" + SS)
    assert unparsed == 1 and len(found) == 5


def test_ss_output_is_bounded_in_lines() -> None:
    many = b"".join(b"tcp LISTEN 0 1 0.0.0.0:%d 0.0.0.0:*\n" % (p + 1) for p in range(5000))
    found, unparsed = parse_ss(many + b"\xff\xfe garbage")
    assert len(found) == 4096 and unparsed == 5000 - 4096 + 1
