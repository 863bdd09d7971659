"""The owner's git repositories on the host, read through ``git`` itself.

Every call runs ``git -C REPO`` with the settings that could start another
program switched off (no fsmonitor daemon, no untracked cache, no split
index, no optional locks) and in the C locale, so its messages can be
matched. Only plumbing reads the repository (``rev-parse``, ``symbolic-ref``,
``ls-files``): staging a workspace happens in banger's own repository
(``host/git_stage.py``), where the repository's ``.git/config`` (filters,
hooks, ``core.*``) never applies.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from banger.core.errors import Forbidden, InvalidInput, NotFound
from banger.host.files import open_nofollow
from banger.host.run import CommandError, require_tool, run

_PACKAGE = "git"
_TIMEOUT = 600.0
_QUIET = (
    "-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false",
    "-c", "core.splitIndex=false", "-c", "index.version=2", "-c", "core.quotePath=false",
    "-c", "gc.auto=0", "-c", "maintenance.auto=false",
)  # fmt: skip
_EXCLUDE_MAX = 1 << 20
_BRANCH_PREFIX = "refs/heads/"
_NOT_OWN = "ship the directory as it is instead: --mode full_copy"


def _argv(repo: Path, args: tuple[str, ...]) -> list[str]:
    return [require_tool("git", _PACKAGE), "-C", os.fspath(repo), *_QUIET, *args]


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    return {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})}


def git(repo: Path, *args: str, env: Mapping[str, str] | None = None,
        input: bytes | None = None, check: bool = True) -> bytes:
    """``git -C repo args`` with the quiet settings; its stdout."""
    return run(_argv(repo, args), timeout=_TIMEOUT, env=_env(env), input=input,
               check=check).stdout


def git_status(repo: Path, *args: str, env: Mapping[str, str] | None = None) -> int:
    """The exit status of ``git -C repo args`` (for the commands that answer with it)."""
    return run(_argv(repo, args), timeout=_TIMEOUT, env=_env(env), check=False).returncode


def line(out: bytes) -> str:
    return out.decode("utf-8", "replace").strip()


def _path(out: bytes) -> Path:
    return Path(os.fsdecode(out.rstrip(b"\n")))


def work_tree_top(path: Path) -> Path | None:
    """The top of the git work tree holding ``path``, or None when ``path`` is in none."""
    try:
        out = git(path, "rev-parse", "--show-toplevel")
    except CommandError as exc:
        said = exc.stderr_tail
        if "not a git repository" in said or "must be run in a work tree" in said:
            return None
        if "dubious ownership" in said:
            raise InvalidInput(
                f"{path} belongs to another user, and git refuses to read it for this one",
                hint="prepare a repository the daemon's user owns (see: git help config, "
                "safe.directory)",
            ) from None
        raise
    return _path(out)


def check_own_git_dir(top: Path) -> None:
    """Refuse a work tree whose ``.git`` leads to another repository, or through links.

    A directory unpacked from an archive can carry a ``.git`` file (or links in
    ``.git``) naming another of the owner's repositories: its commits would
    ship. Accepted: ``top/.git`` a real directory that is the git dir, or a
    ``.git`` file of a linked worktree whose git dir points back at it, or of
    a submodule whose git dir's ``core.worktree`` is ``top``.
    """
    dot = top / ".git"
    git_dir = _path(git(top, "rev-parse", "--absolute-git-dir"))
    common = _path(git(top, "rev-parse", "--path-format=absolute", "--git-common-dir"))
    try:
        st = os.lstat(dot)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        ok = os.path.realpath(dot) == os.path.realpath(git_dir)
    elif st is not None and stat.S_ISREG(st.st_mode):
        ok = _points_back(git_dir, dot, top)
    else:
        ok = False
    for name in ("HEAD", "refs", "objects", "packed-refs"):
        for where in {git_dir, common}:
            if (where / name).is_symlink():
                ok = False
    if not ok:
        raise InvalidInput(f"{top}/.git is not that directory's own repository (it leads to "
                           f"{git_dir}, or through a symbolic link)", hint=_NOT_OWN)


def _points_back(git_dir: Path, dot: Path, top: Path) -> bool:
    back = git_dir / "gitdir"  # a linked worktree's git dir names its .git file
    if back.is_file() and not back.is_symlink():
        named = back.read_text(errors="replace").strip()
        return os.path.realpath(named) == os.path.realpath(dot)
    worktree = line(git(top, "config", "--file", os.fspath(git_dir / "config"),
                        "core.worktree", check=False))
    return bool(worktree) and (
        os.path.realpath(os.path.join(git_dir, worktree)) == os.path.realpath(top))


def head_commit(repo: Path) -> str | None:
    """The commit HEAD names, or None in a repository without commits."""
    out = git(repo, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
    return line(out) or None


def head_branch(repo: Path) -> str | None:
    """The branch HEAD is on (``main``), or None when HEAD is detached."""
    ref = line(git(repo, "symbolic-ref", "-q", "HEAD", check=False))
    return ref[len(_BRANCH_PREFIX):] if ref.startswith(_BRANCH_PREFIX) else None


def resolve_commit(repo: Path, ref: str) -> str:
    """The commit ``ref`` names in ``repo``; NotFound when there is none."""
    if not ref or ref.startswith("-") or "\0" in ref:
        raise InvalidInput(f"--from {ref!r} is not a git ref", hint="name a branch, tag or commit")
    sha = line(git(repo, "rev-parse", "--verify", "-q", "--end-of-options", f"{ref}^{{commit}}",
                   check=False))
    if not sha:
        raise NotFound(f"--from {ref!r}: no such commit in {repo}",
                       hint=f"see the refs: git -C {repo} branch -a")
    return sha


def check_branch_name(repo: Path, branch: str) -> str:
    """``branch`` if git accepts it as a new branch name, else InvalidInput."""
    hint = "use a name such as try-1 (see: git help check-ref-format)"
    if branch.startswith("-") or not branch:
        raise InvalidInput(f"--branch {branch!r} is not a branch name", hint=hint)
    if line(git(repo, "check-ref-format", "--branch", branch, check=False)) != branch:
        raise InvalidInput(f"--branch {branch!r} is not a branch name", hint=hint)
    return branch


def object_format(repo: Path) -> str:
    """``sha1`` or ``sha256``."""
    return line(git(repo, "rev-parse", "--show-object-format", check=False)) or "sha1"


def objects_dir(repo: Path) -> Path:
    """The repository's object directory (shared by its worktrees)."""
    return _path(git(repo, "rev-parse", "--path-format=absolute", "--git-path", "objects"))


def own_index(repo: Path) -> bytes:
    """The repository's index as ``ls-files --stage -z`` lists it (input for ``--index-info``)."""
    return git(repo, "ls-files", "--stage", "-z")


def info_exclude(repo: Path) -> bytes | None:
    """The repository's own ignore rules (``.git/info/exclude``), if it is a regular file."""
    path = _path(git(repo, "rev-parse", "--path-format=absolute", "--git-path", "info/exclude"))
    try:
        fd = open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, Forbidden):
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None  # a FIFO there would hang the read
        return f.read(_EXCLUDE_MAX)
