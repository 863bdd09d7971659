"""Shared fixtures: an isolated banger environment per test, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from banger.core.signals import ALLOWED_SIGNALS
from banger.host.proc import restore_ignored


def pytest_configure(config: pytest.Config) -> None:
    """As bangerd does at its start: a run launched in the background of a script (SIGINT
    and SIGQUIT ignored) must not hand that on to the fake VMMs the tests signal."""
    restore_ignored(ALLOWED_SIGNALS)


@dataclass
class BangerEnv:
    """Private state/runtime/cache/config dirs for one test; env to run banger in."""

    root: Path
    runtime_override: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def runtime_dir(self) -> Path:
        return self.runtime_override or self.root / "run"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "bangerd.sock"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BANGER_")}
        env.update(
            BANGER_STATE_DIR=str(self.state_dir),
            BANGER_RUNTIME_DIR=str(self.runtime_dir),
            BANGER_CACHE_DIR=str(self.cache_dir),
            BANGER_CONFIG=str(self.config_file),
            BANGER_DNS_LISTEN="127.0.0.1:0",  # any free port: never the host's 42069
            # no template boots behind a test's back; a test that wants them sets it
            BANGER_SNAPSHOT_ON_COLD_CREATE="false",
            NO_COLOR="1",
        )
        env.update(self.extra_env)
        env.update(extra)
        return env

    @staticmethod
    def banger_argv() -> list[str]:
        return [sys.executable, "-m", "banger.cli"]

    def banger(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the CLI as a user would; never raises on a non-zero exit."""
        return subprocess.run(
            [*self.banger_argv(), *args],
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def daemon_pid(self) -> int | None:
        try:
            return int((self.runtime_dir / "bangerd.pid").read_text().strip())
        except (OSError, ValueError):
            return None


@pytest.fixture
def banger_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BangerEnv]:
    benv = BangerEnv(tmp_path)
    for key in [k for k in os.environ if k.startswith("BANGER_")]:
        monkeypatch.delenv(key)
    for key, value in benv.env().items():
        if key.startswith("BANGER_"):
            monkeypatch.setenv(key, value)
    yield benv
    benv.banger("daemon", "stop", timeout=30)
