"""systemd-resolved routing (argv, detection), who holds a port, and the seam's validators."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from banger.config import Settings
from banger.core.errors import InvalidInput
from banger.host import resolved, sockets
from banger.host.privileged import CheckedHostOps, host_ops_for
from tests.support.fake_host_ops import RecordingHostOps


def test_routing_sends_only_vm_to_the_bridge_and_never_makes_it_the_default_route() -> None:
    assert resolved.route_argvs("banger0", "172.16.0.1") == [
        ["resolvectl", "dns", "banger0", "172.16.0.1"],
        ["resolvectl", "domain", "banger0", "~vm"],
        ["resolvectl", "default-route", "banger0", "false"],
    ]
    assert resolved.revert_argv("banger0") == ["resolvectl", "revert", "banger0"]


def _fake_resolvectl(bin_dir: Path) -> None:
    bin_dir.mkdir()
    tool = bin_dir / "resolvectl"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(stat.S_IRWXU)


def test_resolved_is_detected_only_with_its_run_dir_resolvectl_and_the_hosts_netns(
    tmp_path: Path,
) -> None:
    run_dir, bin_dir = tmp_path / "resolve", tmp_path / "bin"
    why = resolved.why_not_available(run_dir, str(bin_dir))
    assert why is not None and "not running" in why
    run_dir.mkdir()
    why = resolved.why_not_available(run_dir, str(bin_dir))
    assert why is not None and "resolvectl is not installed" in why
    _fake_resolvectl(bin_dir)
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "1" / "ns").mkdir(parents=True)
    (proc / "self" / "ns" / "net").symlink_to("net:[4026531840]")
    (proc / "1" / "ns" / "net").symlink_to("net:[4026531840]")
    assert resolved.why_not_available(run_dir, str(bin_dir), proc) is None
    (proc / "self" / "ns" / "net").unlink()
    (proc / "self" / "ns" / "net").symlink_to("net:[4026532999]")  # a test namespace
    why = resolved.why_not_available(run_dir, str(bin_dir), proc)
    assert why is not None and "network namespace" in why


def test_checked_ops_refuse_hostile_resolver_arguments() -> None:
    inner = RecordingHostOps()
    ops = CheckedHostOps(inner)
    for bridge, resolver in (("banger0; rm -rf /", "172.16.0.1"), ("-banger0x" * 3, "172.16.0.1"),
                             ("banger0", "172.16.0.1 --help"), ("banger0", "::1"),
                             ("banger0", 2886729729)):
        with pytest.raises(InvalidInput):
            ops.route_vm_domain(bridge, resolver)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        ops.revert_resolver("../banger0")
    ops.route_vm_domain("banger0", "172.16.0.1")
    assert inner.calls == [("route_vm_domain", ("banger0", "172.16.0.1"))]


def _table(*rows: tuple[str, str, int]) -> str:
    """A /proc/net/{udp,tcp}[6] text: a header, then (local address, state, inode) rows."""
    lines = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when ... inode"]
    for i, (local, state, inode) in enumerate(rows):
        remote = "0" * (len(local) - 5) + ":0000"
        lines.append(f"  {i}: {local} {remote} {state} 00000000:00000000 00:00000000 "
                     f"00000000  1000        0 {inode} 2 0 0")
    return "\n".join([*lines, "  9: garbage", ""])


UDP_TABLE = _table(("0100007F:A43D", "07", 111), ("00000000:A43D", "07", 222),
                   ("0100007F:0035", "07", 333), ("0200007F:A43D", "07", 444))
TCP6_TABLE = _table(("0" * 32 + ":A43D", "0A", 555),
                    ("0000000000000000FFFF00000100007F:A43D", "01", 666))


def test_proc_net_tables_give_the_sockets_on_the_address_or_the_wildcard() -> None:
    assert sockets.socket_inodes(UDP_TABLE, "127.0.0.1", 42045, listening_only=False) == [
        111, 222
    ]
    assert sockets.socket_inodes(TCP6_TABLE, "127.0.0.1", 42045, listening_only=True) == [555]
    assert sockets.socket_inodes(TCP6_TABLE, "127.0.0.1", 42045, listening_only=False) == [
        555, 666
    ]


def test_the_holder_of_a_real_socket_is_this_process() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        holders = sockets.port_holders("udp", "127.0.0.1", port)
        text = sockets.describe_holders("127.0.0.1", port)
    assert holders is not None and os.getpid() in {h.pid for h in holders}
    assert f"pid {os.getpid()} (" in text
    assert sockets.port_holders("udp", "127.0.0.1", port) is None  # closed: nobody


@pytest.mark.parametrize("bad", ["localhost:42069", "127.0.0.1", "127.0.0.1:65536",
                                 "[::1]:53", "127.0.0.1:4x", 42069])
def test_dns_listen_must_be_an_ipv4_address_and_port(bad: object) -> None:
    with pytest.raises(InvalidInput, match="dns_listen"):
        Settings(dns_listen=bad)  # type: ignore[arg-type]


def test_dns_upstream_resolv_conf_must_be_absolute() -> None:
    with pytest.raises(InvalidInput, match="dns_upstream_resolv_conf"):
        Settings(dns_upstream_resolv_conf="etc/resolv.conf")  # type: ignore[arg-type]


def test_the_in_process_ops_run_resolvectl_with_exactly_those_argvs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    tool = bin_dir / "resolvectl"
    tool.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    tool.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '')}")
    ops = host_ops_for()
    ops.route_vm_domain("banger0", "172.16.0.1")
    ops.revert_resolver("banger0")
    assert log.read_text().splitlines() == [
        "dns banger0 172.16.0.1", "domain banger0 ~vm", "default-route banger0 false",
        "revert banger0",
    ]
