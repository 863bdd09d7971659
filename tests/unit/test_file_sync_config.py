"""``[[file_sync]]`` in the config file: entries inside the home and /root, checked at load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from banger.config import load_settings
from banger.core.errors import InvalidInput
from banger.core.file_sync import FileSyncEntry


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("BANGER_")]:
        monkeypatch.delenv(key)
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("BANGER_CONFIG", str(tmp_path / "config.toml"))
    return home


def write_config(home: Path, text: str) -> Path:
    path = home.parent.parent / "config.toml"
    path.write_text(text)
    return path


def entry(host: str, guest: str, mode: str | None = None) -> str:
    line = f'[[file_sync]]\nhost = "{host}"\nguest = "{guest}"\n'
    return line + (f'mode = "{mode}"\n' if mode is not None else "")


def test_entries_expand_the_home_and_normalise_both_paths(home: Path) -> None:
    write_config(home, entry("~/.config/gh/hosts.yml", "/root/.config/gh/hosts.yml", "0600")
                 + entry(f"{home}/a/../b", "/root//x/./y"))
    settings = load_settings()
    assert settings.file_sync == (
        FileSyncEntry(home / ".config/gh/hosts.yml", "/root/.config/gh/hosts.yml", 0o600),
        FileSyncEntry(home / "b", "/root/x/y", None),
    )
    assert settings.file_sync[1].work_path == "/x/y"


def test_no_entries_is_an_empty_tuple(home: Path) -> None:
    assert load_settings().file_sync == ()


@pytest.mark.parametrize(
    ("host", "guest", "mode", "key", "why"),
    [
        ("/etc/shadow", "/root/x", None, "host", "inside your home"),
        ("~/../x", "/root/x", None, "host", "inside your home"),
        ("~/a/../../../etc/passwd", "/root/x", None, "host", "inside your home"),
        ("~/", "/root/x", None, "host", "inside your home"),
        ("~other/.aws", "/root/x", None, "host", "must start with ~/"),
        ("relative/x", "/root/x", None, "host", "must start with ~/"),
        ("~/x", "/etc/x", None, "guest", "inside /root/"),
        ("~/x", "/root/../etc", None, "guest", "inside /root/"),
        ("~/x", "/root", None, "guest", "inside /root/"),
        ("~/x", "/root/", None, "guest", "inside /root/"),
        ("~/x", "/rootkit/x", None, "guest", "inside /root/"),
        ("~/x", "root/x", None, "guest", "inside /root/"),
        ("~/x", "/root/x", "0o600", "mode", "octal string"),
        ("~/x", "/root/x", "600x", "mode", "octal string"),
        ("~/x", "/root/x", "4755", "mode", "octal string"),
        ("~/x", "/root/x", "0200", "mode", "owner read"),
    ],
)
def test_a_bad_entry_names_its_number_key_and_the_file(
    home: Path, host: str, guest: str, mode: str | None, key: str, why: str
) -> None:
    path = write_config(home, entry("~/fine", "/root/fine") + entry(host, guest, mode))
    with pytest.raises(InvalidInput) as err:
        load_settings()
    message = err.value.message
    assert message.startswith(f"config {path}: [[file_sync]] entry 2: '{key}'"), message
    assert why in message and "\n" not in message
    assert err.value.hint and "[[file_sync]]" in err.value.hint


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("file_sync = 'x'\n", "must be a list of [[file_sync]] tables"),
        ("file_sync = ['x']\n", "entry 1: 'file_sync' must be a table"),
        ('[[file_sync]]\nhost = "~/x"\n', "entry 1: 'guest' is missing"),
        ('[[file_sync]]\nhost = "~/x"\nguest = "/root/x"\nowner = 1\n',
         "entry 1: 'owner' is not a file_sync key"),
        ('[[file_sync]]\nhost = "~/x"\nguest = "/root/x"\nmode = 0o600\n',
         "entry 1: 'mode' must be an octal string"),
        ('[[file_sync]]\nhost = 7\nguest = "/root/x"\n', "entry 1: 'host' must be a non-empty"),
    ],
)
def test_malformed_file_sync_tables_are_refused(home: Path, text: str, why: str) -> None:
    write_config(home, text)
    with pytest.raises(InvalidInput, match="file_sync") as err:
        load_settings()
    assert why in err.value.message


def test_the_environment_cannot_set_file_sync(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANGER_FILE_SYNC", "/etc/shadow")
    assert load_settings().file_sync == ()
