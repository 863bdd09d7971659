"""Firecracker under its jailer: the argv (pure) and the one launch.

The jailer (Firecracker's ``docs/jailer.md``) runs as root, builds
``<chroot_base>/firecracker/<id>/root``, chowns it to ``--uid``/``--gid`` and execs
Firecracker there as that user; with ``--daemonize --new-pid-ns`` it returns once
Firecracker runs and leaves its pid in ``<chroot>/firecracker.pid``. Firecracker,
running as the owner, makes its API socket in the chroot, so the socket is the
owner's from birth: "handing it over" is returning its path.

Both binaries come from fixed install-time paths (``JAILER_BIN``,
``FIRECRACKER_BIN``, or the root helper's ``--jailer``/``--firecracker``), never
from a request, and must be root's and writable by root only.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import Forbidden, InvalidInput, NotFound
from banger.host.files import open_nofollow
from banger.host.run import run

JAILER_BIN = Path("/usr/local/bin/jailer")
FIRECRACKER_BIN = Path("/usr/local/bin/firecracker")
JAIL_ID_RE = re.compile(r"bgj-[0-9a-f]{8,32}")  # the jailer allows [A-Za-z0-9-]{1,64}
API_SOCKET = "/run/firecracker.socket"  # inside the chroot
CHROOT_BASE_NAME = "jail"  # <owner runtime dir>/jail
TIMEOUT = 30.0


@dataclass(frozen=True)
class JailBinaries:
    jailer: Path = JAILER_BIN
    firecracker: Path = FIRECRACKER_BIN


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


def chroot_dir(chroot_base: str, binaries: JailBinaries, jail_id: str) -> str:
    return os.path.join(chroot_base, binaries.firecracker.name, jail_id, "root")


def jailer_argv(binaries: JailBinaries, jail_id: str, uid: int, gid: int,
                chroot_base: str) -> list[str]:
    """The jailer's command line: Firecracker as ``uid:gid`` in a chroot under
    ``chroot_base``, daemonized in its own pid namespace, its API socket at
    ``API_SOCKET`` in the chroot."""
    return [str(binaries.jailer), "--id", jail_id, "--exec-file", str(binaries.firecracker),
            "--uid", str(uid), "--gid", str(gid), "--chroot-base-dir", chroot_base,
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


def launch(binaries: JailBinaries, jail_id: str, uid: int, gid: int,
           chroot_base: str) -> JailedVmm:
    """Run the jailer; Firecracker's pid and API socket once it returns."""
    for binary in (binaries.jailer, binaries.firecracker):
        check_binary(binary)
    if "firecracker" not in binaries.firecracker.name:
        raise InvalidInput(f"{binaries.firecracker} is not named *firecracker*",
                           hint="the jailer refuses other exec files")
    run(jailer_argv(binaries, jail_id, uid, gid, chroot_base), timeout=TIMEOUT)
    root = chroot_dir(chroot_base, binaries, jail_id)
    with os.fdopen(open_nofollow(Path(root, f"{binaries.firecracker.name}.pid"),
                                 os.O_RDONLY), "rb") as f:
        text = f.read(32).decode("ascii", "replace").strip()
    if not text.isdigit():
        raise Forbidden(f"the jailer left no pid in {root}", hint="see the jailer's output")
    return JailedVmm(int(text), root + API_SOCKET, root)
