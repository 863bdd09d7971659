"""The system ssh argv (golden), remote quoting and known_hosts lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput
from banger.core.sshcmd import ssh_argv
from banger.host.ssh import known_hosts_line

KEY = Path("/home/u/.local/state/banger/ssh/id_ed25519")
KH = Path("/home/u/.local/state/banger/vms/0123abcd/known_hosts")


def test_argv_for_a_command_on_a_vm_with_a_recorded_host_key_is_golden() -> None:
    assert ssh_argv("172.16.0.7", 22, KEY, KH, command=["uname", "-r"]) == [
        "ssh", "-F", "/dev/null",
        "-i", str(KEY), "-p", "22",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", f"UserKnownHostsFile={KH}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=10",
        "--", "root@172.16.0.7",
        "uname -r",
    ]  # fmt: skip


def test_unknown_host_key_is_accepted_once_never_prompted() -> None:
    argv = ssh_argv("127.0.0.1", 40022, KEY, KH, host_key_recorded=False)
    assert "StrictHostKeyChecking=accept-new" in argv
    assert argv[-1] == "root@127.0.0.1"  # no command: a login shell


def test_tty_flag_comes_before_the_destination() -> None:
    argv = ssh_argv("h", 22, KEY, KH, command=["top"], tty=True)
    assert argv.index("-t") < argv.index("--") < argv.index("root@h")


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (["sh", "-c", "exit 42"], 42),
        (["sh", "-c", 'test "$0" = "a b"', "a b"], 0),
        (["sh", "-c", "exit $1", "-", "7; exit 3"], 2),  # never run as code
        (["sh", "-c", "[ \"$1\" = '$(false)' ]", "-", "$(false)"], 0),
    ],
)
def test_remote_command_survives_the_remote_shell_word_for_word(
    command: list[str], status: int
) -> None:
    remote = ssh_argv("h", 22, KEY, KH, command=command)[-1]
    # What sshd does with it: `$SHELL -c <the string>`.
    assert subprocess.run(["/bin/sh", "-c", remote], check=False).returncode == status


def test_known_hosts_line_uses_brackets_for_a_non_default_port() -> None:
    pub = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1 banger-vm\n"
    assert (
        known_hosts_line("172.16.0.7", 22, pub)
        == "172.16.0.7 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1\n"
    )
    assert known_hosts_line("127.0.0.1", 40022, pub.decode()) == (
        "[127.0.0.1]:40022 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1\n"
    )


def test_known_hosts_line_refuses_text_that_is_not_a_public_key() -> None:
    with pytest.raises(InvalidInput):
        known_hosts_line("h", 22, b"-----BEGIN OPENSSH PRIVATE KEY-----")


def test_authenticate_only_starts_a_master_and_asks_for_no_session() -> None:
    ctl = Path("/run/banger/vms/x/ssh")
    argv = ssh_argv("h", 22, KEY, KH, control_path=ctl, authenticate_only=True)
    assert argv[-3:] == ["-N", "--", "root@h"]
    assert "ControlPersist=60s" in argv  # what makes ssh -N return after authenticating
    for wrong in ({"command": ["true"], "control_path": ctl}, {},
                  {"control_path": ctl, "start_master": False}):
        with pytest.raises(ValueError, match="starts a master"):
            ssh_argv("h", 22, KEY, KH, authenticate_only=True, **wrong)  # type: ignore[arg-type]


def test_a_held_master_sends_no_keepalive_a_paused_guest_could_not_answer() -> None:
    ctl = Path("/run/banger/vms/x/ssh")
    argv = ssh_argv("h", 22, KEY, KH, control_path=ctl, authenticate_only=True, held=True)
    options = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"ControlPersist=yes", "ServerAliveInterval=0", "TCPKeepAlive=no"} <= options
    assert not any(o.startswith("ServerAliveCountMax") or o == "ControlPersist=60s"
                   for o in options)
    with pytest.raises(ValueError, match="held"):
        ssh_argv("h", 22, KEY, KH, control_path=ctl, held=True)
