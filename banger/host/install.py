"""A system install: ``/etc/banger/install.toml`` and the two systemd units it goes with.

``InstallInfo`` is what ``banger system install`` records (owner, paths, versions)
and what the CLI, the daemon and ``doctor`` read to find the system daemon's and
the helper's sockets. The units are pure text (``render_units``): the owner's
``bangerd.service`` (``User=`` owner) and the root ``bangerd-root.service``, both
hardened and both ``KillMode=process`` so a restart never kills a guest (guest
VMMs are children of the daemon, in its cgroup). Every path is taken under a
``root`` prefix so tests install into a temporary tree.
"""

from __future__ import annotations

import json
import os
import pwd
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from banger.core.errors import InvalidInput

INSTALL_TOML = Path("etc/banger/install.toml")
UNIT_DIR = Path("etc/systemd/system")
DAEMON_UNIT = "bangerd.service"
HELPER_UNIT = "bangerd-root.service"
HELPER_SOCKET = Path("/run/banger/bangerd-root.sock")
DAEMON_RUNTIME = Path("/run/bangerd")  # systemd's RuntimeDirectory=bangerd, the owner's


@dataclass(frozen=True)
class InstallInfo:
    owner: str
    owner_uid: int
    owner_gid: int
    home: str
    state_dir: str
    cache_dir: str
    config_dir: str
    runtime_dir: str
    daemon_socket: str
    helper_socket: str
    bangerd: str
    bangerd_root: str
    version: str
    commit: str

    @classmethod
    def for_owner(cls, owner: str, bin_dir: Path, version: str, commit: str) -> InstallInfo:
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            raise InvalidInput(f"no user {owner!r}", hint="pass --owner an existing user") from None
        if pw.pw_uid == 0:
            raise InvalidInput("the owner of a system install cannot be root",
                               hint="pass --owner the user who runs banger")
        home = Path(pw.pw_dir)
        return cls(owner, pw.pw_uid, pw.pw_gid, str(home),
                   str(home / ".local/state/banger"), str(home / ".cache/banger"),
                   str(home / ".config/banger"), str(DAEMON_RUNTIME),
                   str(DAEMON_RUNTIME / "bangerd.sock"), str(HELPER_SOCKET),
                   str(bin_dir / "bangerd"), str(bin_dir / "bangerd-root"), version, commit)

    def to_toml(self) -> str:
        lines = ["# written by banger system install; banger system uninstall removes it"]
        for key, value in asdict(self).items():
            lines.append(f"{key} = {json.dumps(value)}")  # JSON strings and ints are TOML
        return "\n".join(lines) + "\n"


def read_install(root: Path = Path("/")) -> InstallInfo | None:
    """The install recorded under ``root``, None when there is none; a damaged file is
    ``InvalidInput`` naming it."""
    path = root / INSTALL_TOML
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            data = tomllib.load(f)
        return InstallInfo(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"{path} is damaged: {str(exc)[:120]}",
                           hint="run banger system install again (as root)") from None


def write_install(info: InstallInfo, root: Path) -> Path:
    from banger.host.files import atomic_write_text  # not on the CLI's every-command path

    path = root / INSTALL_TOML
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    atomic_write_text(path, info.to_toml())
    path.chmod(0o644)  # the owner's CLI reads it; it holds no secret
    return path


def _unit(description: str, service: list[str], after: str | None = None) -> str:
    unit = ["[Unit]", f"Description={description}"]
    if after:
        unit += [f"After={after}", f"Wants={after}"]
    return "\n".join([*unit, "", "[Service]", *service, "", "[Install]",
                      "WantedBy=multi-user.target", ""])


_COMMON_HARDENING = [
    "KillMode=process",  # restarting a unit never kills a guest's VMM
    "Restart=on-failure",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectKernelModules=yes",
    "ProtectControlGroups=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
]


def render_units(info: InstallInfo) -> dict[str, str]:
    """The two unit files by name (see docs/privileges.md for every directive's reason)."""
    env = (f"Environment=HOME={info.home} BANGER_STATE_DIR={info.state_dir} "
           f"BANGER_CACHE_DIR={info.cache_dir} BANGER_RUNTIME_DIR={info.runtime_dir} "
           f"BANGER_CONFIG={info.config_dir}/config.toml "
           f"BANGER_HELPER_SOCKET={info.helper_socket}")
    daemon = [
        "Type=simple", f"User={info.owner}", f"Group={info.owner_gid}", env,
        f"ExecStart={info.bangerd}",
        "RuntimeDirectory=bangerd", "RuntimeDirectoryMode=0700",
        "RuntimeDirectoryPreserve=yes",  # guests' QMP sockets and pidfiles outlive a restart
        *_COMMON_HARDENING,
        "ProtectHome=read-only",
        f"ReadWritePaths=-{info.state_dir} -{info.cache_dir}",
    ]
    helper = [
        "Type=simple",
        f"ExecStart={info.bangerd_root} --owner {info.owner} --socket {info.helper_socket} "
        f"--state-dir {info.state_dir} --runtime-dir {info.runtime_dir}",
        # /run/banger: the socket's dir; /run/banger-root: the helper's own (jails' chroot
        # base, loop registry), root's only, kept across restarts with the guests it serves
        "RuntimeDirectory=banger banger-root", "RuntimeDirectoryMode=0755",
        "RuntimeDirectoryPreserve=yes",
        *_COMMON_HARDENING,
        "ProtectHome=read-only",  # pidfile proofs read the owner's dirs; nothing is written
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_KILL CAP_DAC_READ_SEARCH CAP_CHOWN",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
    ]
    return {
        HELPER_UNIT: _unit("banger root helper (narrow typed host operations)", helper),
        DAEMON_UNIT: _unit(f"banger daemon of {info.owner}", daemon, after=HELPER_UNIT),
    }


def installed_files(root: Path) -> list[Path]:
    """Every file an install writes under ``root`` (what uninstall removes)."""
    return [root / INSTALL_TOML, root / UNIT_DIR / DAEMON_UNIT, root / UNIT_DIR / HELPER_UNIT]


def write_units(info: InstallInfo, root: Path) -> list[Path]:
    from banger.host.files import atomic_write_text

    unit_dir = root / UNIT_DIR
    unit_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    written = []
    for name, text in render_units(info).items():
        path = atomic_write_text(unit_dir / name, text)
        path.chmod(0o644)
        written.append(path)
    return written


def helper_socket_for(configured: Path | None, root: Path = Path("/")) -> Path | None:
    """The helper socket to try: the ``helper_socket`` setting, else the install's."""
    if configured is not None:
        return configured
    try:
        info = read_install(root)
    except InvalidInput:
        return None
    return Path(info.helper_socket) if info is not None else None


def system_daemon_socket(default_runtime: bool, root: Path = Path("/")) -> Path | None:
    """The system daemon's socket when this user is the install's owner and has not
    pointed ``runtime_dir`` elsewhere (then its own per-user daemon is meant)."""
    info = read_install(root)
    if info is None or not default_runtime or info.owner_uid != os.getuid():
        return None
    return Path(info.daemon_socket)


def ensure_owner_dirs(info: InstallInfo) -> None:
    """The owner's state and cache dirs, made (0700, the owner's) where missing, so the
    daemon's ``ReadWritePaths`` exist; a symlink on the way is refused, never followed."""
    home = Path(info.home)
    for target in (Path(info.state_dir), Path(info.cache_dir)):
        path = home
        for part in target.relative_to(home).parts:
            path = path / part
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o700)
                os.chown(path, info.owner_uid, info.owner_gid, follow_symlinks=False)
                continue
            if not os.path.isdir(path) or os.path.islink(path) or st.st_uid not in (
                    0, info.owner_uid):
                raise InvalidInput(f"{path} is not a directory of {info.owner}'s",
                                   hint=f"look at it (ls -ld {path}) and fix or remove it")


def remove_install(root: Path) -> list[Path]:
    """Remove the install's files under ``root``, and ``etc/banger`` when that leaves it
    empty (the unit dir is systemd's, never removed)."""
    removed = []
    for path in installed_files(root):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    ours = (root / INSTALL_TOML).parent
    if ours.is_dir() and not ours.is_symlink() and not any(ours.iterdir()):
        ours.rmdir()
    return removed
