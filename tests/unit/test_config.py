"""Config file + BANGER_* overrides: defaults, precedence, and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.config import load_settings
from banger.core.errors import InvalidInput


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.toml"
    import os

    for key in [k for k in os.environ if k.startswith("BANGER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("BANGER_CONFIG", str(path))
    return path


def test_every_key_is_optional(config_path: Path) -> None:
    settings = load_settings()
    assert settings.bridge_name == "banger0"
    assert settings.backend == "auto"
    assert settings.paths.db.name == "state.db"


def test_file_values_apply_and_environment_wins(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path.write_text('log_level = "debug"\ndefault_vcpu = 3\n')
    monkeypatch.setenv("BANGER_DEFAULT_VCPU", "4")
    settings = load_settings()
    assert settings.log_level == "debug"
    assert settings.default_vcpu == 4


def test_bad_value_names_the_key_the_file_and_what_is_allowed(config_path: Path) -> None:
    config_path.write_text('log_level = "loud"\n')
    with pytest.raises(InvalidInput) as err:
        load_settings()
    assert "log_level" in err.value.message
    assert str(config_path) in err.value.message
    assert "'debug'" in err.value.message


def test_unknown_key_is_refused(config_path: Path) -> None:
    config_path.write_text("brdige_name = 'x'\n")
    with pytest.raises(InvalidInput, match="unknown key 'brdige_name'"):
        load_settings()


def test_bad_environment_value_names_the_variable(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANGER_DEFAULT_VCPU", "ninety")
    with pytest.raises(InvalidInput, match="BANGER_DEFAULT_VCPU"):
        load_settings()


def test_broken_toml_is_a_clear_error(config_path: Path) -> None:
    config_path.write_text("log_level = \n")
    with pytest.raises(InvalidInput, match="cannot parse"):
        load_settings()


@pytest.mark.parametrize("cidr, words", [
    ("172.16.0.0/24", "network or broadcast"),
    ("172.16.0.255/24", "network or broadcast"),
    ("172.16.0.1", "prefix length"),
    ("172.16.0.1/31", "prefix length"),
    ("10.0.0.1/4", "prefix length"),
    ("300.1.1.1/24", "not an IPv4 address"),
    ("fd00::1/64", "not an IPv4 address"),
])
def test_bridge_cidr_must_be_a_host_address_with_room_for_guests(
    config_path: Path, cidr: str, words: str
) -> None:
    config_path.write_text(f'bridge_cidr = "{cidr}"\n')
    with pytest.raises(InvalidInput) as err:
        load_settings()
    assert f"config {config_path}: key 'bridge_cidr': " in err.value.message
    assert words in err.value.message and "\n" not in err.value.message


@pytest.mark.parametrize("disk", ["", "8X", "-1G", "0"])
def test_default_disk_must_be_a_size(config_path: Path, disk: str) -> None:
    config_path.write_text(f'default_disk = "{disk}"\n')
    with pytest.raises(InvalidInput, match=f"config {config_path}: key 'default_disk': invalid"):
        load_settings()


def test_a_config_file_that_is_not_utf8_is_one_clear_line(config_path: Path) -> None:
    config_path.write_bytes(b'log_level = "d\xe9bug"\n')
    with pytest.raises(InvalidInput) as err:
        load_settings()
    assert err.value.message == f"config {config_path}: not UTF-8 (byte 0xe9 at offset 14)"


def test_a_runtime_dir_too_long_for_a_socket_is_refused_naming_the_key(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_dir = "/tmp/" + "r" * 100
    config_path.write_text(f'runtime_dir = "{long_dir}"\n')
    with pytest.raises(InvalidInput) as err:
        load_settings()
    assert f"config {config_path}: key 'runtime_dir'" in err.value.message
    assert "over the 107 a Unix socket path allows" in err.value.message
    config_path.write_text("")
    monkeypatch.setenv("XDG_RUNTIME_DIR", long_dir)
    with pytest.raises(InvalidInput, match="XDG_RUNTIME_DIR"):
        load_settings()


@pytest.mark.parametrize("line, words", [
    ("default_vcpu = true", "must be a whole number"),
    ("default_vcpu = 2.5", "must be a whole number"),
    ('daemon_start_timeout = "soon"', "must be a number of seconds"),
    ("daemon_start_timeout = 0", "above 0"),
    ("bridge_name = 5", "must be a string"),
    ('bridge_name = "br;rm -rf"', "1-15 of"),
    ('state_dir = "relative/dir"', "must be an absolute path"),
])
def test_a_value_of_the_wrong_kind_is_refused_naming_the_key(
    config_path: Path, line: str, words: str
) -> None:
    config_path.write_text(line + "\n")
    key = line.split()[0]
    with pytest.raises(InvalidInput) as err:
        load_settings()
    assert err.value.message.startswith(f"config {config_path}: key '{key}': ")
    assert words in err.value.message


def test_settings_built_in_code_are_checked_too() -> None:
    from banger.config import Settings

    with pytest.raises(InvalidInput, match="key 'default_memory_mib': must be >= 128"):
        Settings(default_memory_mib=64)


def test_the_backend_key_takes_auto_and_exactly_the_backends_the_factory_builds(
    config_path: Path,
) -> None:
    from banger.core.defaults import IMPLEMENTED_BACKENDS
    from banger.vmm.factory import HostFacts, backend_for

    host = HostFacts(accel="kvm", firecracker=Path("/usr/bin/firecracker"))
    for name in ("auto", *IMPLEMENTED_BACKENDS):
        config_path.write_text(f'backend = "{name}"\n')
        settings = load_settings()
        assert backend_for(settings.backend, host).name in IMPLEMENTED_BACKENDS
    config_path.write_text('backend = "cloud-hypervisor"\n')
    with pytest.raises(InvalidInput) as err:
        load_settings()
    assert "key 'backend'" in err.value.message and "'firecracker'" in err.value.message


def test_snapshot_on_cold_create_takes_a_boolean_from_the_file_or_the_environment(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().snapshot_on_cold_create is True
    config_path.write_text("snapshot_on_cold_create = false\n")
    assert load_settings().snapshot_on_cold_create is False
    monkeypatch.setenv("BANGER_SNAPSHOT_ON_COLD_CREATE", "on")
    assert load_settings().snapshot_on_cold_create is True
    for bad in ("maybe", "2", ""):
        monkeypatch.setenv("BANGER_SNAPSHOT_ON_COLD_CREATE", bad)
        with pytest.raises(InvalidInput, match="snapshot_on_cold_create.*true or false"):
            load_settings()
    monkeypatch.delenv("BANGER_SNAPSHOT_ON_COLD_CREATE")
    config_path.write_text('snapshot_on_cold_create = "sometimes"\n')
    with pytest.raises(InvalidInput, match="true or false"):
        load_settings()
