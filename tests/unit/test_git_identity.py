"""The owner's git identity for guests, and the debugfs lines that place synced files."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput
from banger.host.ext4 import replace_file_commands
from banger.host.git_identity import guest_gitconfig, host_git_identity
from banger.host.work_files import file_sync_commands

HOSTILE = [
    'Ada "the Countess" Lovelace',
    "back\\slash\\",
    " leading and trailing ",
    "semi; colon # hash",
    "tab\there",
    "Zoë Ünïcode",
]


def git_get(config: Path, key: str) -> str:
    out = subprocess.run(["git", "config", "--file", str(config), "--get", key],
                         capture_output=True, text=True, check=True).stdout
    return out.removesuffix("\n")


@pytest.mark.parametrize("name", HOSTILE)
def test_git_reads_back_exactly_the_name_it_was_given(tmp_path: Path, name: str) -> None:
    text = guest_gitconfig({"user.name": name, "user.email": "a@b.example"})
    assert text is not None
    config = tmp_path / "gitconfig"
    config.write_bytes(text)
    assert git_get(config, "user.name") == name
    assert git_get(config, "user.email") == "a@b.example"


@pytest.mark.parametrize("bad", ["two\nlines", "nul\0byte", "cr\rhere", "bell\x07"])
def test_a_value_that_cannot_stay_one_line_is_left_out_and_logged(
    bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "banger.host.git_identity"):
        text = guest_gitconfig({"user.name": bad, "user.email": "a@b.example"})
    assert text == b'[user]\n\temail = "a@b.example"\n'
    assert "user.name not copied" in caplog.text
    assert guest_gitconfig({"user.name": bad}) is None


def test_no_identity_means_no_file() -> None:
    assert guest_gitconfig({}) is None
    assert guest_gitconfig({"user.name": ""}) is None


def test_the_identity_is_read_from_the_daemon_users_global_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert host_git_identity() == {}  # no ~/.gitconfig: nothing, no error
    for key, value in (("user.name", HOSTILE[0]), ("user.email", "ada@example.org"),
                       ("credential.helper", "store")):
        subprocess.run(["git", "config", "--file", str(tmp_path / ".gitconfig"), key, value],
                       check=True)
    assert host_git_identity() == {"user.name": HOSTILE[0], "user.email": "ada@example.org"}


def test_a_broken_global_config_means_no_identity_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".gitconfig").write_text("[user\nname = x\n")
    assert host_git_identity() == {}


def test_a_replaced_file_is_removed_written_and_owned_by_root_without_touching_its_mode() -> None:
    assert replace_file_commands(Path("/st/1"), "/.config/a b") == [
        'rm "/.config/a b"',
        'write /st/1 "/.config/a b"',
        'sif "/.config/a b" uid 0',
        'sif "/.config/a b" gid 0',
    ]


def test_file_sync_commands_make_directories_first_then_replace_files() -> None:
    cmds = file_sync_commands(["mkdir /.config"], {"/.config/gh/hosts.yml": Path("/s/1")})
    assert cmds == [
        "cd /", "mkdir /.config",
        "rm /.config/gh/hosts.yml", "write /s/1 /.config/gh/hosts.yml",
        "sif /.config/gh/hosts.yml uid 0", "sif /.config/gh/hosts.yml gid 0",
    ]
    assert not any("mode" in c for c in cmds)  # a mode comes from the staged copy


@pytest.mark.parametrize("dest", ['/a"b', "/a\\b", "/a\nrm /.ssh/authorized_keys"])
def test_a_name_debugfs_cannot_encode_never_reaches_a_command(dest: str) -> None:
    with pytest.raises(InvalidInput, match="cannot be encoded for debugfs"):
        file_sync_commands([], {dest: Path("/s/1")})
