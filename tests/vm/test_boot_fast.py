"""The golden image on the test kernel, booted by a bare QEMU command (no daemon).

The guest contract end to end: SSH with a key the test put on the work disk,
hostname and address from the kernel command line, the VM's own host key, a
lean PID 1 that reaps orphans and powers off cleanly, and the systemd profile.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.image import SLIRP_IP, Guest, boot_guest, ensure_test_image
from tests.support.kernel import ensure_test_kernel

pytestmark = pytest.mark.vm

BOOT_DEADLINE_S = 90  # generous: a loaded CI host; the figure itself is a benchmark


@pytest.fixture(scope="module")
def artifacts() -> tuple[Path, Path]:
    return ensure_test_kernel(), ensure_test_image()


@pytest.fixture
def guest(artifacts: tuple[Path, Path], tmp_path: Path) -> Iterator[Guest]:
    kernel, image = artifacts
    with boot_guest(kernel, image, tmp_path, hostname="fastbox") as g:
        try:
            g.wait_ssh(BOOT_DEADLINE_S)
            yield g
        except BaseException:
            print(g.console_tail(80))
            raise


def test_ssh_reaches_the_guest_with_the_key_from_the_work_disk(guest: Guest) -> None:
    result = guest.ssh("id -u; findmnt -n -o SOURCE,FSTYPE /root")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "/dev/vdb", "ext4"]
    print(f"boot to SSH-ready: {guest.ready_seconds:.2f}s")


def test_hostname_and_address_come_from_the_kernel_command_line(guest: Guest) -> None:
    result = guest.ssh("hostname; ip -4 -o addr show scope global; ip route show default")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "fastbox"
    assert f"inet {SLIRP_IP} " in lines[1]
    assert lines[2].startswith("default via 10.0.2.2 ")


def test_dns_and_hosts_are_written_by_the_bootstrap(guest: Guest) -> None:
    result = guest.ssh("cat /etc/resolv.conf; getent hosts fastbox")
    assert result.stdout.splitlines()[0] == "nameserver 10.0.2.3"
    assert "127.0.1.1" in result.stdout


def test_password_login_is_refused(guest: Guest) -> None:
    probe = subprocess.run(
        ["ssh", "-p", str(guest.port), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "PreferredAuthentications=password",
         "-o", "PubkeyAuthentication=no", "-o", "BatchMode=yes", "root@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert probe.returncode == 255
    assert "Permission denied (publickey)" in probe.stderr


def test_lean_init_reaps_orphaned_processes(guest: Guest) -> None:
    # The subshell exits at once, so its sleep is reparented to PID 1 and must be reaped.
    result = guest.ssh(
        "(sleep 0.2 &); sleep 1.5; ps -eo stat=,comm= | awk '$1 ~ /^Z/'; cat /proc/1/cmdline"
    )
    assert result.returncode == 0, result.stderr
    assert "sleep" not in result.stdout.split("\n")[0]
    assert "/usr/lib/banger/init" in result.stdout


def test_lean_init_restarts_sshd_when_it_dies(guest: Guest) -> None:
    guest.ssh("kill $(cat /run/sshd.pid)")
    guest.started = time.monotonic()
    guest.wait_ssh(30)
    assert "sshd exited; restarting" in guest.console.read_text()


def test_poweroff_in_the_guest_ends_qemu(guest: Guest) -> None:
    guest.ssh("touch /root/kept && poweroff", timeout=30)
    deadline = time.monotonic() + 30
    while guest.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert guest.proc.returncode == 0, guest.console_tail()
    assert "banger-init: [" in guest.console.read_text() and "poweroff" in guest.console_tail()


def test_the_vm_presents_its_own_host_key_from_the_work_disk(
    artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    key = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kernel, image = artifacts
    with boot_guest(kernel, image, tmp_path / "vm", host_key=key) as g:
        g.wait_ssh(BOOT_DEADLINE_S)
        scan = subprocess.run(
            ["ssh-keyscan", "-t", "ed25519", "-p", str(g.port), "127.0.0.1"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    presented = scan.stdout.split()[-1]
    assert presented == key.with_suffix(".pub").read_text().split()[1]


def test_the_systemd_profile_still_boots_to_ssh(
    artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    kernel, image = artifacts
    with boot_guest(kernel, image, tmp_path, hostname="fullbox", init=None) as g:
        ready = g.wait_ssh(180)
        result = g.ssh("hostname; readlink /proc/1/exe; findmnt -n -o SOURCE /root")
    assert result.stdout.split() == ["fullbox", "/usr/lib/systemd/systemd", "/dev/vdb"]
    print(f"systemd profile boot to SSH-ready: {ready:.2f}s")
