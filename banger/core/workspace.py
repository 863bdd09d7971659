"""Workspace checks shared by the config, the CLI and the daemon (no pydantic: the CLI reads it)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from enum import StrEnum

from banger.core.errors import InvalidInput
from banger.core.guest_sh import sh_argv

DEFAULT_GUEST_PATH = "/root/repo"
_GUEST_ROOT = "/root/"
_COMPONENT = re.compile(r"[A-Za-z0-9._+-]{1,128}", re.ASCII)
_OBJECT_ID = re.compile(r"[0-9a-f]{4,64}", re.ASCII)


class WorkspaceMode(StrEnum):
    GIT = "git"  # tracked files as on disk (+ untracked on request) and a .git at HEAD
    FULL_COPY = "full_copy"  # the whole directory


def validate_guest_path(path: str) -> str:
    """An absolute guest path under /root (the work disk, so it survives stop/start)."""
    hint = f"use a path under /root made of letters, digits and . _ + -, e.g. {DEFAULT_GUEST_PATH}"
    if not path.startswith(_GUEST_ROOT) or posixpath.normpath(path) != path:
        raise InvalidInput(f"workspace guest path {path!r} is not a plain path under /root",
                           hint=hint)
    for part in path[len(_GUEST_ROOT):].split("/"):
        if part in (".", "..") or not _COMPONENT.fullmatch(part) or part.startswith("."):
            raise InvalidInput(f"workspace guest path {path!r}: {part!r} is not allowed",
                               hint=hint)
    return path


def validate_commit_id(sha: str) -> str:
    """A (possibly abbreviated) lowercase hex object id, as ``--base-commit`` takes."""
    if not _OBJECT_ID.fullmatch(sha):
        raise InvalidInput(f"--base-commit {sha!r} is not a commit id",
                           hint="give a hex commit id, e.g. from git log in the guest")
    return sha


# Runs the user's command in the workspace, through mise when the guest has it.
# A workspace written before boot was never trusted by mise: trust it here (best effort).
_EXEC = r"""cd "$1" || exit 1
shift
if command -v mise >/dev/null 2>&1; then
    mise trust --quiet --all . >/dev/null 2>&1 || true
    exec mise exec -- "$@"
fi
exec "$@"
"""


def exec_argv(guest_path: str, command: Sequence[str]) -> list[str]:
    """The guest argv of ``vm exec``/``vm run PATH -- CMD``: CMD in the workspace."""
    return sh_argv(_EXEC, "banger-exec", guest_path, *command)
