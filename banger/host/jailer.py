"""Firecracker under its jailer: the argv (pure) and the one launch.

The jailer (Firecracker's ``docs/jailer.md``) runs as root, builds
``<chroot_base>/firecracker/<id>/root``, chowns it to ``--uid``/``--gid`` and execs
Firecracker there as that user; with ``--daemonize --new-pid-ns`` it returns once
Firecracker runs and leaves its pid in ``<chroot>/firecracker.pid``. Firecracker,
running as the owner, makes its API socket in the chroot, so the socket is the
owner's from birth: "handing it over" is returning its path.

Both binaries and the chroot base come from fixed install-time paths
(``JAILER_BIN``, ``FIRECRACKER_BIN``, ``CHROOT_BASE``, or the root helper's
``--jailer``/``--firecracker``/``--run-dir``), never from a request. The binaries
must be root's and writable by root only; the chroot base and every dir above it
must be root's dirs no one else may write (checked through fds from ``/`` down,
made when missing), because the jailer takes a path and chowns the chroot it
builds there to ``--uid``: a dir on the way that the owner could rename or write
would let it point that chown at ``/etc``. A jail id whose dir already exists is
refused; ``remove`` deletes a jail tree whose chroot is the given uid's.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from banger.host.files import open_root_only_dir
from banger.host.proc_identity import read_pidfile
from banger.host.run import run

JAILER_BIN = Path("/usr/local/bin/jailer")
FIRECRACKER_BIN = Path("/usr/local/bin/firecracker")
JAIL_ID_RE = re.compile(r"bgj-[0-9a-f]{8,32}")  # the jailer allows [A-Za-z0-9-]{1,64}
API_SOCKET = "/run/firecracker.socket"  # inside the chroot
HELPER_RUN_DIR = Path("/run/banger-root")  # the helper's own (RuntimeDirectory=banger-root)
CHROOT_BASE = HELPER_RUN_DIR / "jail"
TIMEOUT = 30.0


@dataclass(frozen=True)
class JailConfig:
    """What a jailed launch uses, fixed when the transport is made."""

    jailer: Path = JAILER_BIN
    firecracker: Path = FIRECRACKER_BIN
    chroot_base: Path = CHROOT_BASE


@dataclass(frozen=True)
class JailedVmm:
    pid: int
    api_socket: str  # host path of Firecracker's API socket (in the chroot)
    chroot: str


def validate_jail_id(jail_id: object) -> str:
    if not isinstance(jail_id, str) or not JAIL_ID_RE.fullmatch(jail_id):
        raise InvalidInput(f"invalid jail id {str(jail_id)[:80]!r}",
                           hint="a jail id is bgj- then 8-32 lower-case hex digits")
    return jail_id


def chroot_dir(config: JailConfig, jail_id: str) -> str:
    return os.path.join(config.chroot_base, config.firecracker.name, jail_id, "root")


def jailer_argv(config: JailConfig, jail_id: str, uid: int, gid: int) -> list[str]:
    """The jailer's command line: Firecracker as ``uid:gid`` in a chroot under
    ``config.chroot_base``, daemonized in its own pid namespace, its API socket at
    ``API_SOCKET`` in the chroot."""
    return [str(config.jailer), "--id", jail_id, "--exec-file", str(config.firecracker),
            "--uid", str(uid), "--gid", str(gid), "--chroot-base-dir", str(config.chroot_base),
            "--daemonize", "--new-pid-ns", "--", "--api-sock", API_SOCKET]


def check_binary(path: Path) -> None:
    """``path`` is a regular file (not a symlink) of root's that only root may write."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"{path} is not installed",
                       hint="install Firecracker's jailer and firecracker there") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise Forbidden(f"{path} is not a root-owned file only root can write",
                        hint=f"chown root:root {path} && chmod go-w {path}")


def _exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def launch(config: JailConfig, jail_id: str, uid: int, gid: int) -> JailedVmm:
    """Run the jailer; Firecracker's pid and API socket once it returns."""
    for binary in (config.jailer, config.firecracker):
        check_binary(binary)
    if "firecracker" not in config.firecracker.name:
        raise InvalidInput(f"{config.firecracker} is not named *firecracker*",
                           hint="the jailer refuses other exec files")
    fd = open_root_only_dir(config.chroot_base / config.firecracker.name, create=True)
    try:
        if _exists_at(fd, jail_id):
            raise Conflict(f"jail {jail_id} already exists under {config.chroot_base}",
                           hint="remove it first (remove_jail) or use a new jail id")
    finally:
        os.close(fd)
    run(jailer_argv(config, jail_id, uid, gid), timeout=TIMEOUT)
    root = chroot_dir(config, jail_id)
    pid = read_pidfile(Path(root, f"{config.firecracker.name}.pid"))
    if pid is None:
        raise Forbidden(f"the jailer left no pid in {root}", hint="see the jailer's output")
    return JailedVmm(pid, root + API_SOCKET, root)


def remove(config: JailConfig, jail_id: str, uid: int) -> bool:
    """Delete jail ``jail_id``'s tree when its chroot is ``uid``'s; False when there is none."""
    try:
        fd = open_root_only_dir(config.chroot_base / config.firecracker.name, create=False)
    except FileNotFoundError:
        return False
    try:
        if not _exists_at(fd, jail_id):
            return False
        try:
            st = os.stat(f"{jail_id}/root", dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            raise Forbidden(f"jail {jail_id} is not a jail of uid {uid}",
                            hint="a jail is removed only for the uid it runs as")
        shutil.rmtree(jail_id, dir_fd=fd)  # fd-based: never follows a symlink inside
        return True
    finally:
        os.close(fd)
