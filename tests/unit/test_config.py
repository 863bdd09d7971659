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
