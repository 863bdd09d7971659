"""bangerd's DNS listener as the host meets it: answers, a taken port, closed at stop."""

from __future__ import annotations

import json
import os
import socket

from dnslib import RCODE, DNSRecord

from tests.conftest import BangerEnv


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _doctor_rows(env: BangerEnv) -> dict[str, dict[str, str]]:
    result = env.banger("doctor", "--json")
    assert result.stdout, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)["checks"]}


def test_the_daemon_answers_vm_names_on_dns_listen_and_frees_the_port_at_stop(
    banger_env: BangerEnv,
) -> None:
    port = _free_udp_port()
    env = banger_env.env(BANGER_DNS_LISTEN=f"127.0.0.1:{port}")
    assert banger_env.banger("daemon", "start", env=env).returncode == 0
    unknown = DNSRecord.parse(DNSRecord.question("nobody.vm").send("127.0.0.1", port, timeout=5))
    assert unknown.header.rcode == RCODE.NXDOMAIN and unknown.header.aa
    tcp = DNSRecord.parse(DNSRecord.question("nobody.vm").send("127.0.0.1", port, tcp=True,
                                                               timeout=5))
    assert tcp.header.rcode == RCODE.NXDOMAIN
    other = DNSRecord.parse(DNSRecord.question("example.com").send("127.0.0.1", port, timeout=5))
    assert other.header.rcode == RCODE.REFUSED  # the host's listener is no open resolver
    assert _doctor_rows(banger_env)["dns"]["status"] == "PASS"
    assert banger_env.banger("daemon", "stop", env=env).returncode == 0
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", port))  # closed with the daemon


def test_a_dns_port_held_by_another_program_leaves_the_daemon_up_and_doctor_names_it(
    banger_env: BangerEnv,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        banger_env.extra_env["BANGER_DNS_LISTEN"] = f"127.0.0.1:{port}"
        assert banger_env.banger("daemon", "start").returncode == 0
        row = _doctor_rows(banger_env)["dns"]
    assert row["status"] == "WARN"
    assert f"pid {os.getpid()} (" in row["detail"] and f"127.0.0.1:{port}" in row["detail"]
    assert "dns_listen" in row["hint"]
    log = (banger_env.state_dir / "bangerd.log").read_text()
    assert "DNS listener not started" in log and f"pid {os.getpid()}" in log
