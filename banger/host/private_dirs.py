"""Directories that are provably ours, and the daemon socket the CLI may talk to.

With ``XDG_RUNTIME_DIR`` unset (sudo, cron, CI) the runtime dir falls back to
``/tmp/banger-<uid>/``, a name any local user can create first and fill with
a symlinked pidfile or a fake daemon socket. So every state, cache and
runtime dir is made component by component with mode 0700, and then proved:
the directory itself is no symlink, is owned by us and is closed to others,
and no directory above it lets another user (other than root) swap it out.
The CLI proves the same of the socket's directory, and that the socket is a
socket owned by us or root, before it connects.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from banger.core.errors import Forbidden

_TRUSTED_OWNERS = frozenset({0})


def _refuse(path: Path, why: str, hint: str) -> Forbidden:
    return Forbidden(f"refusing to use {path}: {why}", hint=hint)


def _squat_hint(path: Path, setting: str) -> str:
    return f"if you did not create {path}, remove it; or set {setting} to a directory of your own"


def _check_ancestors(path: Path, hint: str) -> None:
    """No directory above ``path`` lets someone other than us or root replace what it holds."""
    us = os.getuid()
    for parent in path.parents:
        st = os.lstat(parent)
        if st.st_uid not in _TRUSTED_OWNERS | {us}:
            raise _refuse(path, f"{parent} belongs to uid {st.st_uid}", hint)
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(parent)  # a root's or our own link (e.g. /var/run): check where it leads
        sticky = bool(st.st_mode & stat.S_ISVTX)
        foreign_group = st.st_mode & stat.S_IWGRP and st.st_gid != os.getgid()
        if not sticky and (st.st_mode & stat.S_IWOTH or foreign_group):
            raise _refuse(path, f"{parent} is writable by other users", hint)


def _open_dir(path: Path, hint: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse(path, "it is a symlink or not a directory", hint) from None
        raise


def ensure_private_dir(path: Path, *, setting: str) -> Path:
    """Create ``path`` (each missing component 0700) and prove it ours, else raise Forbidden.

    ``setting`` names what the user can change instead (e.g. ``BANGER_STATE_DIR``).
    A directory of ours that others may only read (an older banger made it
    0755) is closed to 0700; one that others could write into is refused.
    """
    path = Path(os.path.abspath(path))
    hint = _squat_hint(path, setting)
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # someone was faster: the checks below decide whether it is ours
    _check_ancestors(path, hint)
    fd = _open_dir(path, hint)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise _refuse(path, f"it belongs to uid {st.st_uid}, not to you", hint)
        if st.st_mode & 0o022:
            raise _refuse(path, f"others may write into it (mode {st.st_mode & 0o777:o})", hint)
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def check_daemon_socket(socket_path: Path) -> None:
    """Before connecting: the socket and its directory belong to us or root, and are no links.

    A missing socket or directory raises FileNotFoundError (no daemon yet);
    one we may not even look at raises Forbidden naming it.
    """
    directory = socket_path.parent
    hint = _squat_hint(directory, "XDG_RUNTIME_DIR or BANGER_RUNTIME_DIR")
    owners = _TRUSTED_OWNERS | {os.getuid()}
    try:
        _check_ancestors(directory, hint)
        fd = _open_dir(directory, hint)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if st.st_uid not in owners or st.st_mode & 0o022:
            why = f"owned by uid {st.st_uid} (mode {st.st_mode & 0o777:o})"
            raise _refuse(directory, why, hint)
        sock = os.lstat(socket_path)
    except PermissionError:
        raise permission_denied(socket_path) from None
    if not stat.S_ISSOCK(sock.st_mode) or sock.st_uid not in owners:
        raise _refuse(
            socket_path, f"not a socket of yours (uid {sock.st_uid}); not talking to it", hint
        )


def permission_denied(socket_path: Path) -> Forbidden:
    return Forbidden(
        f"permission denied on {socket_path}",
        hint="that daemon belongs to another user: run banger as its owner, "
        "or use your own (unset BANGER_RUNTIME_DIR)",
    )
