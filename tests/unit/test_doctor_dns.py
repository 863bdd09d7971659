"""Doctor's DNS rows, from the states the DNS service can be in."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest

from banger.config import Settings
from banger.core.states import NetMode
from banger.daemon.dns_service import DnsStatus, ListenerStatus
from banger.daemon.doctor import HostView, run_checks

SERVING = DnsStatus(
    bridge="banger0", bridge_ip="172.16.0.1",
    host=ListenerStatus("127.0.0.1:42069", True),
    guests=ListenerStatus("172.16.0.1:53", True),
    net_mode=NetMode.TAP, upstreams=("192.0.2.1",), resolv_conf=Path("/etc/resolv.conf"),
    resolved=None,
)


@pytest.fixture
def rows(tmp_path: Path) -> object:
    def run(status: DnsStatus, *, resolvectl: bool = False) -> dict[str, tuple[str, str, str]]:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        if resolvectl:
            (bin_dir / "resolvectl").write_text("#!/bin/sh\n")
            (bin_dir / "resolvectl").chmod(stat.S_IRWXU)
        proc = tmp_path / "proc"  # this process in the host's network namespace
        for pid in ("self", "1"):
            (proc / pid / "ns").mkdir(parents=True, exist_ok=True)
            if not (proc / pid / "ns" / "net").is_symlink():
                (proc / pid / "ns" / "net").symlink_to("net:[4026531840]")
        settings = Settings(state_dir=tmp_path, cache_dir=tmp_path, runtime_dir=tmp_path)
        host = HostView(search_path=str(bin_dir), resolved_dir=tmp_path, proc_root=proc)
        found = run_checks(settings, host, status)
        return {r.name: (r.status.value, r.detail, r.hint or "") for r in found[-3:]}

    return run


def test_without_the_daemons_status_there_are_no_dns_rows(tmp_path: Path) -> None:
    names = [r.name for r in run_checks(Settings(state_dir=tmp_path, cache_dir=tmp_path,
                                                 runtime_dir=tmp_path))]
    assert "dns" not in names and "guest dns" not in names


def test_a_serving_daemon_without_resolved_says_how_to_resolve_vm_names(rows: object) -> None:
    got = rows(SERVING)  # type: ignore[operator]
    assert got["dns"][0] == "PASS" and "127.0.0.1:42069" in got["dns"][1]
    assert got["guest dns"][0] == "PASS" and "192.0.2.1" in got["guest dns"][1]
    status, detail, hint = got[".vm on host"]
    assert status == "WARN" and "resolve only by asking bangerd" in detail
    assert "dig @127.0.0.1 -p 42069 NAME.vm" in hint and "server=/vm/127.0.0.1#42069" in hint


def test_a_taken_port_names_its_holder_and_the_fix(rows: object) -> None:
    taken = replace(SERVING, host=ListenerStatus(
        "127.0.0.1:42069", False, "udp 127.0.0.1:42069 is held by pid 4242 (dnsmasq)"))
    status, detail, hint = rows(taken)["dns"]  # type: ignore[operator]
    assert status == "WARN" and "pid 4242 (dnsmasq)" in detail and "dns_listen" in hint


def test_guests_without_a_resolver_or_upstreams_are_warned(rows: object) -> None:
    held = replace(SERVING, guests=ListenerStatus("172.16.0.1:53", False, "held by pid 7 (x)"))
    status, detail, hint = rows(held)["guest dns"]  # type: ignore[operator]
    assert status == "WARN" and "pid 7" in detail and "except-interface=banger0" in hint
    lonely = replace(SERVING, upstreams=())
    status, detail, hint = rows(lonely)["guest dns"]  # type: ignore[operator]
    assert status == "WARN" and "only .vm names" in detail and "nameserver" in hint


def test_user_mode_networking_has_no_guest_resolver_to_check(rows: object) -> None:
    got = rows(replace(SERVING, net_mode=NetMode.USER, guests=None))  # type: ignore[operator]
    assert got["guest dns"][0] == "PASS" and "user-mode" in got["guest dns"][1]
    assert got[".vm on host"][0] == "PASS"


def test_resolved_routing_failures_say_the_commands_to_run(rows: object) -> None:
    failed = replace(SERVING, resolved="resolvectl failed: Access denied")
    status, detail, hint = rows(failed, resolvectl=True)[".vm on host"]  # type: ignore[operator]
    assert status == "WARN" and "Access denied" in detail
    assert "sudo resolvectl domain banger0 '~vm'" in hint
    status, detail, _ = rows(SERVING, resolvectl=True)[".vm on host"]  # type: ignore[operator]
    assert status == "PASS" and "172.16.0.1 on banger0" in detail
