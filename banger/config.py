"""User configuration: ``~/.config/banger/config.toml`` plus ``BANGER_*`` overrides.

Every key is optional. The reference, with defaults, is ``docs/config.md``.
Precedence: environment > config file > default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from banger.core.errors import InvalidInput
from banger.core.validate import parse_bridge_cidr, parse_size

ENV_PREFIX = "BANGER_"
CONFIG_ENV = "BANGER_CONFIG"
SOCKET_NAME = "bangerd.sock"
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, one of them the NUL


def _default_runtime_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/banger-{os.getuid()}"
    return os.path.join(base, "banger")


class Settings(BaseModel):
    """Every configurable knob; field descriptions feed ``docs/config.md``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_state_dir("banger")),
        description="Where the store, images, kernels and VMs live.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_cache_dir("banger")),
        description="Prunable downloads (OCI blobs, kernel packages).",
    )
    runtime_dir: Path = Field(
        default_factory=lambda: Path(_default_runtime_dir()),
        description="Sockets and pidfiles.",
        validate_default=True,  # XDG_RUNTIME_DIR may make the socket path too long
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Daemon log level."
    )
    backend: Literal["auto", "qemu"] = Field(
        default="auto", description="Which VMM to use (this release: QEMU)."
    )
    bridge_name: str = Field(default="banger0", pattern=r"^[a-zA-Z0-9_-]{1,15}$")
    bridge_cidr: str = Field(default="172.16.0.1/24", description="Bridge address and subnet.")
    default_vcpu: int = Field(default=2, ge=1, le=64)
    default_memory_mib: int = Field(default=1024, ge=128)
    default_disk: str = Field(default="8G", description="Work disk size of a new VM.")
    operation_ttl_seconds: int = Field(
        default=900, ge=1, description="How long finished operations stay queryable."
    )
    daemon_start_timeout: float = Field(default=15.0, gt=0)
    ssh_ready_timeout: float = Field(
        default=120.0, gt=0, description="Seconds a booting VM has until its sshd accepts our key."
    )

    @field_validator("bridge_cidr")
    @classmethod
    def _check_bridge_cidr(cls, value: str) -> str:
        """An address with its prefix, e.g. 172.16.0.1/24: the bridge's, inside the subnet."""
        try:
            parse_bridge_cidr(value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("default_disk")
    @classmethod
    def _check_default_disk(cls, value: str) -> str:
        try:
            parse_size(value, "size")
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("runtime_dir")
    @classmethod
    def _check_runtime_dir(cls, value: Path) -> Path:
        socket = os.fsencode(value / SOCKET_NAME)
        if len(socket) > SUN_PATH_MAX:
            raise ValueError(
                f"the daemon socket {value / SOCKET_NAME} would be {len(socket)} bytes, over the "
                f"{SUN_PATH_MAX} a Unix socket path allows; use a shorter runtime_dir "
                "(or XDG_RUNTIME_DIR)"
            )
        return value

    @field_validator("state_dir", "cache_dir", "runtime_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # The daemon runs at "/", the CLI wherever it is typed: a relative path means two places.
        if not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value

    @cached_property
    def paths(self) -> Paths:
        return Paths(self.state_dir, self.cache_dir, self.runtime_dir)


@dataclass(frozen=True)
class Paths:
    """Every file location derived from the three base directories."""

    state_dir: Path
    cache_dir: Path
    runtime_dir: Path

    @property
    def db(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "bangerd.log"

    @property
    def images(self) -> Path:
        return self.state_dir / "images"

    @property
    def kernels(self) -> Path:
        return self.state_dir / "kernels"

    @property
    def vms(self) -> Path:
        return self.state_dir / "vms"

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / SOCKET_NAME

    @property
    def pidfile(self) -> Path:
        return self.runtime_dir / "bangerd.pid"


def config_file() -> Path:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    return Path(platformdirs.user_config_dir("banger")) / "config.toml"


def _env_overrides() -> dict[str, str]:
    known = set(Settings.model_fields)
    out: dict[str, str] = {}
    for key, value in os.environ.items():
        if key.startswith(ENV_PREFIX) and key != CONFIG_ENV:
            name = key[len(ENV_PREFIX) :].lower()
            if name in known:
                out[name] = value
    return out


def _describe(error: ErrorDetails) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}' (see docs/config.md for the keys)"
    message = error["msg"].removeprefix("Value error, ")
    return f"key '{key}': {message} (got {error.get('input')!r})"


def load_settings() -> Settings:
    """Read the config file and environment; raise ``InvalidInput`` naming the bad key."""
    path = config_file()
    data: dict[str, Any] = {}
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = b""
    except OSError as exc:
        raise InvalidInput(
            f"config {path}: cannot read it: {exc.strerror}", hint="check its owner and mode"
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"config {path}: not UTF-8 (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start})",
            hint="TOML files are UTF-8 text; re-save it as UTF-8",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(
            f"config {path}: cannot parse: {exc}", hint="fix the TOML syntax"
        ) from exc
    try:
        Settings.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(
            f"config {path}: {_describe(exc.errors()[0])}", hint="fix or remove that key"
        ) from exc
    data.update(_env_overrides())
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidInput(
            f"environment {ENV_PREFIX}{str(err['loc'][0]).upper()}: {_describe(err)}",
            hint="fix or unset that variable",
        ) from exc
