"""The guest bootstrap script, executed for real under /bin/sh against a fake root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from banger.images.guest_bits import Kind, guest_files

BOOTSTRAP = next(f for f in guest_files() if f.path == "/usr/lib/banger/bootstrap").content


# The script must run on whatever /bin/sh an image has: dash, busybox ash, bash.
SHELLS = [
    argv
    for argv in (["/bin/sh"], ["busybox", "sh"], ["bash", "--posix"])
    if shutil.which(argv[0])
]


@pytest.fixture(params=SHELLS, ids=lambda argv: argv[0].rsplit("/", 1)[-1])
def fake_root(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    root = tmp_path / "root"
    for d in ("sys/class/net/lo", "sys/class/net/eth0", "proc/sys/kernel/random", "etc"):
        (root / d).mkdir(parents=True)
    (root / "proc/sys/kernel/hostname").write_text("localhost\n")
    (root / "proc/sys/kernel/random/uuid").write_text("0f8fad5b-d9cb-469f-a165-70867728950e\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 old # banger\n")
    (root / "etc/machine-id").write_text("")
    (root / "bin").mkdir()
    fake_ip = root / "bin/fake-ip"
    fake_ip.write_text(f'#!/bin/sh\n[ "$1 $2" = "-batch -" ] && cat > {root}/ip-batch\n')
    fake_ip.chmod(0o755)
    (root / ".shell").write_text("\n".join(request.param))
    return root


def run_bootstrap(root: Path, cmdline: str, *, lib_call: str | None = None) -> str:
    script = root / "bootstrap"
    script.write_bytes(BOOTSTRAP)
    (root / "cmdline").write_text(cmdline + "\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "BANGER_CMDLINE": str(root / "cmdline"),
        "BANGER_ROOT": str(root),
        "BANGER_IP": str(root / "bin/fake-ip"),
    }
    shell = (root / ".shell").read_text().splitlines()
    if lib_call is None:
        argv = [*shell, str(script)]
    else:
        env["BANGER_BOOTSTRAP_LIB"] = "1"
        argv = [*shell, "-c", f'. "$0"; {lib_call}', str(script)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10, check=True)
    return proc.stdout


CMDLINE = (
    "console=ttyS0 root=/dev/vda rw banger.init=/usr/lib/banger/init "
    "banger.hostname=devbox banger.ip=172.16.0.7/24 banger.gw=172.16.0.1 "
    "banger.dns=172.16.0.1,1.1.1.1 quiet"
)


def test_param_prints_the_value_of_the_named_key(fake_root: Path) -> None:
    assert run_bootstrap(fake_root, CMDLINE, lib_call="banger_param banger.ip") == "172.16.0.7/24\n"


def test_param_takes_the_last_occurrence_like_the_kernel(fake_root: Path) -> None:
    out = run_bootstrap(fake_root, "banger.hostname=a banger.hostname=b", lib_call=(
        "banger_param banger.hostname"))
    assert out == "b\n"


def test_param_does_not_match_a_key_that_merely_shares_a_prefix(fake_root: Path) -> None:
    out = run_bootstrap(
        fake_root, "banger.ipv6=x banger.ip=10.0.2.15/24", lib_call="banger_param banger.ip"
    )
    assert out == "10.0.2.15/24\n"


def test_param_fails_for_an_absent_key_and_never_globs(fake_root: Path) -> None:
    out = run_bootstrap(
        fake_root,
        "* banger.hostname=x",
        lib_call="banger_param banger.gw || echo absent; banger_param banger.hostname",
    )
    assert out == "absent\nx\n"


def test_bootstrap_applies_hostname_network_and_dns_from_the_cmdline(fake_root: Path) -> None:
    run_bootstrap(fake_root, CMDLINE)
    assert (fake_root / "proc/sys/kernel/hostname").read_text() == "devbox\n"
    assert (fake_root / "etc/hostname").read_text() == "devbox\n"
    assert (fake_root / "etc/hosts").read_text() == (
        "127.0.0.1 localhost\n127.0.1.1 devbox # banger\n"
    )
    assert (fake_root / "ip-batch").read_text() == (
        "link set dev lo up\n"
        "link set dev eth0 up\n"
        "addr flush dev eth0\n"
        "addr replace 172.16.0.7/24 dev eth0\n"
        "route replace default via 172.16.0.1 dev eth0\n"
    )
    assert (fake_root / "etc/resolv.conf").read_text() == (
        "nameserver 172.16.0.1\nnameserver 1.1.1.1\n"
    )


def test_bootstrap_defaults_a_bare_address_to_a_24_prefix(fake_root: Path) -> None:
    run_bootstrap(fake_root, "banger.ip=10.0.2.15")
    assert "addr replace 10.0.2.15/24 dev eth0\n" in (fake_root / "ip-batch").read_text()


def test_bootstrap_without_settings_only_brings_links_up(fake_root: Path) -> None:
    (fake_root / "etc/resolv.conf").write_text("nameserver 9.9.9.9\n")
    run_bootstrap(fake_root, "console=ttyS0")
    assert (fake_root / "ip-batch").read_text() == "link set dev lo up\nlink set dev eth0 up\n"
    assert (fake_root / "proc/sys/kernel/hostname").read_text() == "localhost\n"
    assert (fake_root / "etc/resolv.conf").read_text() == "nameserver 9.9.9.9\n"


def test_bootstrap_refuses_a_hostname_with_shell_metacharacters(fake_root: Path) -> None:
    run_bootstrap(fake_root, "banger.hostname=a;reboot")
    assert (fake_root / "proc/sys/kernel/hostname").read_text() == "localhost\n"


def test_bootstrap_replaces_a_symlinked_resolv_conf(fake_root: Path) -> None:
    (fake_root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    run_bootstrap(fake_root, "banger.dns=10.0.2.3")
    conf = fake_root / "etc/resolv.conf"
    assert not conf.is_symlink()
    assert conf.read_text() == "nameserver 10.0.2.3\n"


def test_bootstrap_gives_each_vm_a_machine_id_once(fake_root: Path) -> None:
    run_bootstrap(fake_root, "")
    assert (fake_root / "etc/machine-id").read_text() == "0f8fad5bd9cb469fa16570867728950e\n"
    (fake_root / "proc/sys/kernel/random/uuid").write_text("11111111-2222-3333-4444-555555555555\n")
    run_bootstrap(fake_root, "")
    assert (fake_root / "etc/machine-id").read_text() == "0f8fad5bd9cb469fa16570867728950e\n"


def test_the_bootstrap_and_init_are_posix_sh_that_parses() -> None:
    for entry in guest_files():
        if entry.kind is Kind.FILE and entry.content.startswith(b"#!/bin/sh"):
            proc = subprocess.run(["/bin/sh", "-n"], input=entry.content, capture_output=True)
            assert proc.returncode == 0, (entry.path, proc.stderr)


def test_an_ip_without_batch_mode_gets_one_command_at_a_time(fake_root: Path) -> None:
    # busybox ip has no -batch: the bootstrap falls back to one run per line.
    (fake_root / "bin/fake-ip").write_text(
        f'#!/bin/sh\n[ "$1" = -batch ] && exit 1\necho "$*" >> {fake_root}/ip-calls\n'
    )
    run_bootstrap(fake_root, "banger.ip=10.0.2.15/24 banger.gw=10.0.2.2")
    assert (fake_root / "ip-calls").read_text().splitlines() == [
        "link set dev lo up",
        "link set dev eth0 up",
        "addr flush dev eth0",
        "addr replace 10.0.2.15/24 dev eth0",
        "route replace default via 10.0.2.2 dev eth0",
    ]


def test_a_clone_identity_replaces_the_address_then_changes_the_mac(fake_root: Path) -> None:
    # A restored snapshot: the template's address goes, and the MAC change comes after the
    # new address so the kernel's gratuitous ARP announces it (docs/snapshots.md).
    run_bootstrap(fake_root, "banger.ip=172.16.0.9/24 banger.gw=172.16.0.1 "
                  "banger.mac=02:aa:bb:cc:dd:ee")
    assert (fake_root / "ip-batch").read_text().splitlines()[2:] == [
        "addr flush dev eth0",
        "addr replace 172.16.0.9/24 dev eth0",
        "link set dev eth0 address 02:aa:bb:cc:dd:ee",
        "route replace default via 172.16.0.1 dev eth0",
    ]


def test_a_hostile_mac_never_reaches_ip(fake_root: Path) -> None:
    run_bootstrap(fake_root, "banger.ip=172.16.0.9/24 banger.mac=02:aa;reboot")
    assert "address" not in (fake_root / "ip-batch").read_text()
