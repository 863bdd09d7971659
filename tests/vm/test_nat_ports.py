"""NAT and published ports with real guests, inside the test network namespace.

The "internet" is a second namespace behind a veth (tests/support/fake_internet.py):
DNS answering ``example.test`` and an HTTP server at 198.51.100.80, the test
namespace's default route pointing there. A ``--nat`` guest resolves the name
through bangerd and fetches the page; a guest without NAT cannot. Published TCP and
UDP ports reach servers in the guest (perl, which the image has); ``vm ports``
lists them. The nftables set holds exactly the running NAT guests after a
daemon SIGKILL (with the set tampered meanwhile) and after delete. Nothing leaves
the test namespaces.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from banger.core.publish import PublishedPort
from banger.core.wait import poll_until
from banger.host.portfwd import check_free
from banger.host.proc import pid_alive
from tests.support.fake_internet import DNS_ADDRESS, HTTP_ADDRESS, PAGE, FakeInternet
from tests.vm.conftest import VMFactory

pytestmark = pytest.mark.vm

HTTP_SERVER = (
    'use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => 8000, Listen => 5, '
    'ReuseAddr => 1) or die; while (my $c = $s->accept) { while (my $l = <$c>) '
    '{ last if $l =~ /^\\r?\\n$/ } print $c "HTTP/1.0 200 OK\\r\\nContent-Length: 6\\r\\n\\r\\n'
    'guest\\n"; close $c }'
)
UDP_ECHO = (
    'use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => 9000, Proto => "udp") '
    'or die; while (1) { my $peer = $s->recv(my $d, 1500); $s->send("echo:$d", 0, $peer) }'
)


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nat_set(bridge: str) -> list[str]:
    out = subprocess.run(["nft", "-j", "list", "set", "ip", f"banger_{bridge}", "nat_guests"],
                         capture_output=True, text=True, check=True).stdout
    items = json.loads(out)["nftables"]
    return sorted(e for i in items if "set" in i for e in i["set"].get("elem", []))


def _start_in_guest(vms: VMFactory, name: str, script: str) -> None:
    daemonised = f"setsid perl -e {shlex.quote(script)} </dev/null >/dev/null 2>&1 &"
    done = vms.ssh(name, "sh", "-c", daemonised)
    assert done.returncode == 0, done.stderr


def _http(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
        return bytes(answer.read())


def _udp(port: int, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(10):  # the guest's echo server may still be starting
            s.sendto(data, ("127.0.0.1", port))
            try:
                return s.recv(100)
            except TimeoutError:
                continue
    raise AssertionError(f"no UDP answer on 127.0.0.1:{port}")


def test_nat_guests_reach_the_internet_and_published_ports_reach_guests(
    vms: VMFactory, tmp_path: Path
) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_ADDRESS}\n")
    vms.env.extra_env.update(BANGER_DNS_LISTEN=f"127.0.0.1:{_free(socket.SOCK_DGRAM)}",
                             BANGER_DNS_UPSTREAM_RESOLV_CONF=str(resolv))
    tcp, udp = _free(socket.SOCK_STREAM), _free(socket.SOCK_DGRAM)
    with FakeInternet({"example.test": HTTP_ADDRESS}) as internet:
        out = vms.create("out", "--nat", "-p", f"{tcp}:8000", "-p", f"{udp}:9000/udp")
        assert out["nat"] is True and [p["host_port"] for p in out["ports"]] == [tcp, udp]
        fenced = vms.create("fenced")
        assert _nat_set(vms.bridge) == [out["guest_ip"]]

        fetched = vms.ssh("out", "curl", "-sS", "--max-time", "10", "http://example.test/")
        assert fetched.returncode == 0 and fetched.stdout.encode() == PAGE, fetched.stderr
        blocked = vms.ssh("fenced", "curl", "-sS", "--connect-timeout", "3",
                          f"http://{HTTP_ADDRESS}/")
        assert blocked.returncode != 0  # it resolves names (bangerd) but reaches nothing

        _start_in_guest(vms, "out", HTTP_SERVER)
        _start_in_guest(vms, "out", UDP_ECHO)
        assert poll_until(lambda: _try_http(tcp), timeout=20)
        assert _http(tcp) == b"guest\n"
        assert _udp(udp, b"ping") == b"echo:ping"

        ports = json.loads(vms.ok("vm", "ports", "out", "fenced", "--json"))
        seen = {(p["proto"], p["port"]): p for answer in ports for p in answer["ports"]
                if answer["vm"] == "out"}
        assert seen[("tcp", 22)]["process"] == "sshd"
        assert seen[("tcp", 22)]["endpoint"] == "out.vm:22" and seen[("tcp", 22)]["url"] is None
        assert seen[("tcp", 8000)]["url"] == "http://out.vm:8000/"
        assert seen[("udp", 9000)]["process"] == "perl"
        assert {a["vm"] for a in ports} == {"out", "fenced"}

        _kill_daemon(vms)
        subprocess.run(["nft", "add", "element", "ip", f"banger_{vms.bridge}", "nat_guests",
                        "{ 172.31.250.99 }"], check=True)  # a stale element to be repaired
        vms.ok("vm", "list")  # a new daemon: reconcile
        assert _nat_set(vms.bridge) == [out["guest_ip"]]
        assert _http(tcp) == b"guest\n"  # published again by the new daemon

        vms.ok("vm", "delete", "out")
        assert _nat_set(vms.bridge) == []
        for published in out["ports"]:  # released (TIME_WAIT aside, as the forwarder binds)
            check_free(PublishedPort.model_validate(published))
        assert fenced["nat"] is False
    assert "http:/" in internet.asked and "example.test" in internet.asked


def _try_http(port: int) -> bool:
    try:
        return _http(port) == b"guest\n"
    except OSError:
        return False


def _kill_daemon(vms: VMFactory) -> None:
    pid = vms.env.daemon_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    assert poll_until(lambda: not pid_alive(pid), timeout=10)


def test_bad_publishes_a_taken_port_and_nat_on_stopped_vms_without_booting(
    vms: VMFactory,
) -> None:
    for spec in ("0", "70000", "abc:1"):
        refused = vms.banger("vm", "create", "--name", "bad", "--no-start", "-p", spec)
        assert refused.returncode == 2 and "--publish" in refused.stderr, refused.stderr
    twice = vms.banger("vm", "create", "--name", "bad", "--no-start", "-p", "8080:80",
                       "-p", "8080:81")
    assert twice.returncode == 2 and "published twice" in twice.stderr
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        taken = vms.banger("vm", "create", "--name", "bad", "--no-start", "-p", f"{port}:80")
    assert taken.returncode == 4 and f"pid {os.getpid()}" in taken.stderr, taken.stderr
    assert vms.rows() == []

    vms.create("idle", "--no-start")
    assert vms.show("idle")["nat"] is False
    vms.ok("vm", "set", "idle", "--nat")
    assert vms.show("idle")["nat"] is True
    vms.ok("vm", "set", "idle", "--no-nat")
    assert vms.show("idle")["nat"] is False
