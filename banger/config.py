"""User configuration: ``~/.config/banger/config.toml`` plus ``BANGER_*`` overrides.

Every key is optional. The reference, with defaults, is ``docs/config.md``.
Precedence: environment > config file > default.

Plain dataclasses and one table of keys, not pydantic: every CLI command reads
the settings, and pydantic's imports alone cost more than the rest of a
``banger vm list -q`` (docs/performance.md).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from banger.core.defaults import IMPLEMENTED_BACKENDS
from banger.core.durations import duration_seconds
from banger.core.errors import InvalidInput
from banger.core.file_sync import FileSyncEntry, parse_file_sync
from banger.core.validate import parse_bridge_cidr, parse_size
from banger.core.workspace import DEFAULT_GUEST_PATH, validate_guest_path

ENV_PREFIX = "BANGER_"
CONFIG_ENV = "BANGER_CONFIG"
SOCKET_NAME = "bangerd.sock"
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, one of them the NUL
_BRIDGE_NAME = re.compile(r"[a-zA-Z0-9_-]{1,15}", re.ASCII)


def default_runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/banger-{os.getuid()}"
    return Path(base, "banger")


def _xdg_dir(env: str, fallback: str) -> Path:
    """``$ENV/banger``, or ``~/<fallback>/banger`` when ENV is unset or empty (as platformdirs)."""
    base = os.environ.get(env, "").strip() or os.path.join(os.path.expanduser("~"), fallback)
    return Path(base, "banger")


# -- value checks: each takes what the file or the environment gave and returns the value --


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip(), re.ASCII):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("must be a whole number")
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be from {low} to {high}" if high else f"must be >= {low}")
        return value

    return check


def _seconds(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("must be a number of seconds") from None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError("must be a number of seconds above 0")
    return float(value)


def _duration_or_off(value: Any) -> float | None:
    """Seconds, a duration (``30m``), or off: absent, ``0`` or ``"off"``."""
    if value is None or value == "off" or (value == 0 and not isinstance(value, bool)):
        return None
    if isinstance(value, str) and value.strip() == "0":
        return None
    try:
        return duration_seconds(value)
    except ValueError as exc:
        raise ValueError(f"{exc}; or off") from None


def _boolean(value: Any) -> bool:
    """``true``/``false`` in the file; the environment's ``true``/``1``/``yes``/``on`` or
    ``false``/``0``/``no``/``off``."""
    if isinstance(value, bool):
        return value
    words = {"true": True, "1": True, "yes": True, "on": True,
             "false": False, "0": False, "no": False, "off": False}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise ValueError("must be true or false")


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError("must be one of " + ", ".join(repr(a) for a in allowed))
        return str(value)

    return check


def _directory(value: Any) -> Path:
    # The daemon runs at "/", the CLI wherever it is typed: a relative path means two places.
    if not isinstance(value, str | Path) or not os.path.isabs(value):
        raise ValueError("must be an absolute path")
    return Path(value)


def _runtime_dir(value: Any) -> Path:
    path = _directory(value)
    socket = os.fsencode(path / SOCKET_NAME)
    if len(socket) > SUN_PATH_MAX:
        raise ValueError(
            f"the daemon socket {path / SOCKET_NAME} would be {len(socket)} bytes, over the "
            f"{SUN_PATH_MAX} a Unix socket path allows; use a shorter runtime_dir "
            "(or XDG_RUNTIME_DIR)"
        )
    return path


def _helper_socket(value: Any) -> Path | None:
    """Off (absent or empty): found through /etc/banger/install.toml; else an absolute path."""
    return None if value is None or value == "" else _directory(value)


def _bridge_name(value: Any) -> str:
    if not _BRIDGE_NAME.fullmatch(_string(value)):
        raise ValueError("must be 1-15 of A-Z a-z 0-9 _ -")
    return str(value)


def _bridge_cidr(value: Any) -> str:
    """An address with its prefix, e.g. 172.16.0.1/24: the bridge's, inside the subnet."""
    try:
        parse_bridge_cidr(value)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None
    return str(value)


def _dns_listen(value: Any) -> str:
    """``IPV4:PORT`` (port 0: any free port, for tests)."""
    host, sep, port = _string(value).rpartition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError("must be IPV4:PORT, e.g. 127.0.0.1:42069") from None
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be IPV4:PORT with a port from 0 to 65535")
    return f"{host}:{int(port)}"


def _size(value: Any) -> str:
    try:
        parse_size(_string(value), "size")
    except InvalidInput as exc:
        raise ValueError(exc.message) from None
    return str(value)


def _guest_path(value: Any) -> str:
    try:
        return validate_guest_path(_string(value))
    except InvalidInput as exc:
        raise ValueError(exc.message) from None


def _file_sync(value: Any) -> tuple[FileSyncEntry, ...]:
    try:
        return parse_file_sync(value, Path.home())
    except InvalidInput as exc:
        raise _BadKey("file_sync", exc.message, hint=exc.hint or "fix that entry") from None


def _key(
    check: Callable[[Any], Any], default: Callable[[], Any], doc: str, *, env: bool = True
) -> Any:
    """A settings field: its check and description (``docs/config.md``) ride in the metadata;
    ``env=False`` for a key only the file can set (a list of tables)."""
    return field(default_factory=default, metadata={"check": check, "doc": doc, "env": env})


@dataclass(frozen=True)
class Settings:
    """Every configurable knob; built from keyword values, each checked (``InvalidInput``)."""

    state_dir: Path = _key(_directory, lambda: _xdg_dir("XDG_STATE_HOME", ".local/state"),
                           "Where the store, images, kernels and VMs live.")
    cache_dir: Path = _key(_directory, lambda: _xdg_dir("XDG_CACHE_HOME", ".cache"),
                           "Prunable downloads (OCI blobs, kernel packages).")
    runtime_dir: Path = _key(_runtime_dir, default_runtime_dir, "Sockets and pidfiles.")
    log_level: str = _key(_choice("debug", "info", "warning", "error"), lambda: "info",
                          "Daemon log level.")
    backend: str = _key(_choice("auto", *IMPLEMENTED_BACKENDS), lambda: "auto",
                        "Which VMM to use (this release: QEMU).")
    helper_socket: Path | None = _key(
        _helper_socket, lambda: None,
        "The socket of `bangerd-root` (the root helper); unset: the one install.toml names.",
    )
    bridge_name: str = _key(_bridge_name, lambda: "banger0", "Host bridge for VM networking.")
    bridge_cidr: str = _key(_bridge_cidr, lambda: "172.16.0.1/24", "Bridge address and subnet.")
    dns_listen: str = _key(_dns_listen, lambda: "127.0.0.1:42069",
                           "Where bangerd answers `<name>.vm` for the host (UDP and TCP).")
    dns_upstream_resolv_conf: Path = _key(
        _directory, lambda: Path("/etc/resolv.conf"),
        "The resolv.conf whose servers get the guests' non-.vm names.",
    )
    default_vcpu: int = _key(_integer(1, 64), lambda: 2, "vCPUs of a new VM.")
    default_memory_mib: int = _key(_integer(128), lambda: 1024, "Memory of a new VM in MiB.")
    default_disk: str = _key(_size, lambda: "8G", "Work disk size of a new VM.")
    operation_ttl_seconds: int = _key(_integer(1), lambda: 900,
                                      "How long finished operations stay queryable.")
    daemon_start_timeout: float = _key(_seconds, lambda: 15.0,
                                       "Seconds the CLI waits for an auto-started daemon.")
    workspace_guest_path: str = _key(
        _guest_path, lambda: DEFAULT_GUEST_PATH,
        "Where `vm run PATH` and `vm workspace prepare` put the workspace (under /root).",
    )
    ssh_ready_timeout: float = _key(
        _seconds, lambda: 120.0, "Seconds a booting VM has until its sshd accepts our key."
    )
    auto_stop_stale_after: float | None = _key(
        _duration_or_off, lambda: None,
        "Stop a running VM unused this long (no SSH or banger session, no CLI use); off.",
    )
    snapshot_on_cold_create: bool = _key(
        _boolean, lambda: True,
        "After a cold `vm create` of a shape with no warm snapshot, make one in the background.",
    )
    warm_pool: int = _key(
        _integer(0, 16), lambda: 0,
        "Restored, paused VMs of the default shape kept ready for `vm create` to claim.",
    )
    file_sync: tuple[FileSyncEntry, ...] = _key(
        _file_sync, tuple, "Files copied from your home into the guest's /root at every start.",
        env=False,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            try:
                checked = f.metadata["check"](getattr(self, f.name))
            except ValueError as exc:
                value = getattr(self, f.name)
                raise _BadKey(f.name, f"key '{f.name}': {exc} (got {value!r})") from None
            object.__setattr__(self, f.name, checked)

    @cached_property
    def paths(self) -> Paths:
        return Paths(self.state_dir, self.cache_dir, self.runtime_dir)


def setting_names() -> list[str]:
    """Every key a config file (or ``BANGER_<KEY>``) may set."""
    return [f.name for f in fields(Settings)]


class _BadKey(InvalidInput):
    """A value a key does not accept; ``load_settings`` says where it came from."""

    def __init__(self, key: str, message: str, *, hint: str = "fix or remove that key") -> None:
        super().__init__(message, hint=hint)
        self.key = key


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
    def vm_ssh_config(self) -> Path:
        """The ``Host *.vm`` file ``~/.ssh/config`` includes (``banger ssh-config``)."""
        return self.state_dir / "ssh" / "config"

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
    return _xdg_dir("XDG_CONFIG_HOME", ".config") / "config.toml"


def _env_overrides() -> dict[str, str]:
    known = {f.name for f in fields(Settings) if f.metadata["env"]}
    out: dict[str, str] = {}
    for key, value in os.environ.items():
        if key.startswith(ENV_PREFIX) and key != CONFIG_ENV:
            name = key[len(ENV_PREFIX) :].lower()
            if name in known:
                out[name] = value
    return out


def _settings(data: dict[str, Any]) -> Settings:
    unknown = sorted(set(data) - set(setting_names()))
    if unknown:
        key = unknown[0]
        raise _BadKey(key, f"unknown key '{key}' (see docs/config.md for the keys)")
    return Settings(**data)


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
        _settings(data)
    except _BadKey as exc:
        raise InvalidInput(f"config {path}: {exc.message}", hint=exc.hint) from None
    env = _env_overrides()
    try:
        return _settings(data | env)
    except _BadKey as exc:
        where = f"environment {ENV_PREFIX}{exc.key.upper()}" if exc.key in env else f"config {path}"
        raise InvalidInput(f"{where}: {exc.message}", hint="fix or unset that variable") from None
