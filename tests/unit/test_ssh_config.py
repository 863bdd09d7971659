"""``banger ssh-config``: the Include line added and removed byte-exactly; the managed file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from banger.core.sshcmd import vm_ssh_config
from banger.host import ssh_config

MANAGED = Path("/state/ssh/config")
USER = (b"Host github.com\n    User git\n\n# the user's last block, never closed\n"
        b"Host work\n    HostName 10.0.0.1\n    User me")  # no final newline


def test_the_include_goes_first_and_twice_changes_nothing() -> None:
    once = ssh_config.with_include(USER, MANAGED)
    assert once.startswith(ssh_config.MARKER + b"\nInclude /state/ssh/config\n")
    assert once.endswith(USER)
    assert ssh_config.with_include(once, MANAGED) == once


def test_uninstall_leaves_the_users_lines_byte_for_byte() -> None:
    odd = USER + b"\r\n\xff\xfe not utf-8\n\tIndented\n"
    assert ssh_config.without_include(ssh_config.with_include(odd, MANAGED)) == odd
    assert ssh_config.without_include(odd) == odd


def test_an_include_the_user_wrote_is_not_banger_s() -> None:
    theirs = b"Include ~/.ssh/other\n" + USER
    assert ssh_config.without_include(theirs) == theirs


def test_install_and_uninstall_on_disk(tmp_path: Path) -> None:
    home_ssh = tmp_path / ".ssh"
    config = home_ssh / "config"
    assert ssh_config.install(config, MANAGED) is True
    assert oct(home_ssh.stat().st_mode & 0o777) == "0o700"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert ssh_config.install(config, MANAGED) is False
    assert ssh_config.uninstall(config) is True
    assert config.read_bytes() == b""
    assert ssh_config.uninstall(config) is False


def test_a_symlinked_config_is_edited_where_it_points(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "ssh_config"
    real.parent.mkdir()
    real.write_bytes(USER)
    os.chmod(real, 0o644)
    link = tmp_path / ".ssh" / "config"
    link.parent.mkdir()
    link.symlink_to(real)
    assert ssh_config.install(link, MANAGED)
    assert link.is_symlink() and real.read_bytes().endswith(USER)
    assert oct(real.stat().st_mode & 0o777) == "0o644"  # the user's mode is kept


def test_the_managed_file_has_a_block_per_running_vm() -> None:
    text = vm_ssh_config(Path("/state/ssh/id_ed25519"), [
        ("box", "172.16.0.2", 22, Path("/state/vms/abc/known_hosts"), Path("/run/b/abc/ssh")),
        ("web", "127.0.0.1", 40022, Path("/state/vms/def/known_hosts"), None),
    ])
    assert "Host box.vm\n    HostName 172.16.0.2\n    Port 22\n" in text
    assert "    ControlPath /run/b/abc/ssh\n" in text
    assert "Host web.vm\n    HostName 127.0.0.1\n    Port 40022\n" in text
    assert text.index("Host box.vm") < text.index("Host *.vm")  # first match wins
    assert "    IdentityFile /state/ssh/id_ed25519\n" in text
    assert "StrictHostKeyChecking yes" in text


def test_a_path_ssh_cannot_read_is_refused() -> None:
    with pytest.raises(ValueError):
        vm_ssh_config(Path('/state/"x'), [])
