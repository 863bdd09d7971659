"""``<name>.vm`` for the host and for guests, and guests' other names forwarded upstream.

Two real VMs on the test's bridge; the upstream is a DNS server in a second network
namespace (tests/support/fake_internet.py) named by the test's own resolv.conf, so
no query leaves the test namespaces. The guests reach only the bridge address.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

from tests.support.fake_internet import DNS_ADDRESS, FakeInternet
from tests.vm.conftest import VMFactory

pytestmark = pytest.mark.vm


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ask(port: int, name: str) -> tuple[int, list[str]]:
    reply = DNSRecord.parse(DNSRecord.question(name).send("127.0.0.1", port, timeout=5))
    return reply.header.rcode, [str(rr.rdata) for rr in reply.rr]


def test_vm_names_resolve_on_the_host_and_in_guests_and_other_names_go_upstream(
    vms: VMFactory, tmp_path: Path
) -> None:
    port = _free_udp_port()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_ADDRESS}\n")
    vms.env.extra_env.update(BANGER_DNS_LISTEN=f"127.0.0.1:{port}",
                             BANGER_DNS_UPSTREAM_RESOLV_CONF=str(resolv))
    with FakeInternet({"example.test": "198.51.100.80"}) as internet:
        box_ip = str(vms.create("box")["guest_ip"])
        other_ip = str(vms.create("other")["guest_ip"])
        assert _ask(port, "box.vm") == (RCODE.NOERROR, [box_ip])
        assert _ask(port, "Other.VM") == (RCODE.NOERROR, [other_ip])
        assert _ask(port, "unknown.vm") == (RCODE.NXDOMAIN, [])

        seen = vms.ssh("box", "getent", "hosts", "other.vm")
        assert seen.returncode == 0 and seen.stdout.split()[0] == other_ip, seen.stderr
        upstream = vms.ssh("box", "getent", "ahostsv4", "example.test")
        assert upstream.returncode == 0, upstream.stderr
        assert upstream.stdout.split()[0] == "198.51.100.80"
        assert vms.ssh("box", "getent", "hosts", "nothing.test").returncode == 2  # NXDOMAIN

        vms.ok("vm", "stop", "other")
        assert _ask(port, "other.vm") == (RCODE.NXDOMAIN, [])
        assert vms.ssh("box", "getent", "hosts", "other.vm").returncode == 2
    assert "example.test" in internet.asked
    assert not [name for name in internet.asked if name.endswith(".vm")]  # never forwarded
