"""The owner's git repositories on the host, read through ``git`` itself (never by parsing .git).

Every call runs ``git -C REPO`` with the settings that could start another
program, or write into the owner's repository, switched off: no fsmonitor
daemon, no untracked cache, no split index, no optional locks. A workspace is
staged into a separate object directory (``GIT_OBJECT_DIRECTORY``, with the
repository's own objects as an alternate) and a separate index, so preparing
one never changes the repository it reads.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
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
GITLINK_MODE = "160000"
SYMLINK_MODE = "120000"
_EXCLUDE_MAX = 1 << 20


@dataclass(frozen=True)
class IndexEntry:
    """One entry of a staged index: ``mode`` as git writes it (100644, 100755, 120000, 160000)."""

    mode: str
    path: bytes


def git(repo: Path, *args: str, env: Mapping[str, str] | None = None,
        input: bytes | None = None, check: bool = True) -> bytes:
    """``git -C repo args`` with the quiet settings; its stdout."""
    binary = require_tool("git", _PACKAGE)
    extra = {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    proc = run([binary, "-C", os.fspath(repo), *_QUIET, *args], timeout=_TIMEOUT,
               env=extra, input=input, check=check)
    return proc.stdout


def _line(out: bytes) -> str:
    return out.decode("utf-8", "replace").strip()


def work_tree_top(path: Path) -> Path | None:
    """The top of the git work tree holding ``path``, or None when ``path`` is in none."""
    try:
        out = git(path, "rev-parse", "--show-toplevel")
    except CommandError as exc:
        if "not a git repository" in exc.stderr_tail:
            return None
        if "dubious ownership" in exc.stderr_tail:
            raise InvalidInput(
                f"{path} belongs to another user, and git refuses to read it for this one",
                hint="prepare a repository the daemon's user owns (see: git help config, "
                "safe.directory)",
            ) from None
        raise
    return Path(os.fsdecode(out.rstrip(b"\n")))


def head_commit(repo: Path) -> str | None:
    """The commit HEAD names, or None in a repository without commits."""
    out = git(repo, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
    return _line(out) or None


def head_branch(repo: Path) -> str | None:
    """The branch HEAD is on (``main``), or None when HEAD is detached."""
    out = git(repo, "symbolic-ref", "-q", "--short", "HEAD", check=False)
    return _line(out) or None


def resolve_commit(repo: Path, ref: str) -> str:
    """The commit ``ref`` names in ``repo``; NotFound when there is none."""
    if not ref or ref.startswith("-") or "\0" in ref:
        raise InvalidInput(f"--from {ref!r} is not a git ref", hint="name a branch, tag or commit")
    sha = _line(git(repo, "rev-parse", "--verify", "-q", "--end-of-options", f"{ref}^{{commit}}",
                    check=False))
    if not sha:
        raise NotFound(f"--from {ref!r}: no such commit in {repo}",
                       hint=f"see the refs: git -C {repo} branch -a")
    return sha


def check_branch_name(repo: Path, branch: str) -> str:
    """``branch`` if git accepts it as a new branch name, else InvalidInput."""
    if branch.startswith("-") or not branch:
        raise InvalidInput(f"--branch {branch!r} is not a branch name",
                           hint="use a name such as try-1 (see: git help check-ref-format)")
    ok = git(repo, "check-ref-format", "--branch", branch, check=False)
    if _line(ok) != branch:
        raise InvalidInput(f"--branch {branch!r} is not a branch name",
                           hint="use a name such as try-1 (see: git help check-ref-format)")
    return branch


def object_format(repo: Path) -> str:
    """``sha1`` or ``sha256``."""
    out = _line(git(repo, "rev-parse", "--show-object-format", check=False))
    return out or "sha1"


def objects_dir(repo: Path) -> Path:
    """The repository's object directory (shared by its worktrees)."""
    out = git(repo, "rev-parse", "--path-format=absolute", "--git-path", "objects")
    return Path(os.fsdecode(out.rstrip(b"\n")))


def staging_env(index: Path, objects: Path, alternate: Path | None) -> dict[str, str]:
    """Environment that keeps index and new objects in banger's staging area."""
    env = {"GIT_INDEX_FILE": os.fspath(index), "GIT_OBJECT_DIRECTORY": os.fspath(objects)}
    if alternate is not None:
        env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = os.fspath(alternate)
    return env


def stage_work_tree(repo: Path, env: Mapping[str, str], *, include_untracked: bool) -> str:
    """Index ``repo``'s working tree into the staging index; the tree id of what it holds.

    Tracked files (those in the repository's own index, added but uncommitted
    ones included) as they are on disk, edits and deletions included, and the
    untracked ones git does not ignore when ``include_untracked``.
    """
    tracked = git(repo, "ls-files", "--stage", "-z")
    git(repo, "update-index", "-z", "--index-info", input=tracked, env=env)
    git(repo, "add", "--all" if include_untracked else "--update", "--", ".", env=env)
    return _line(git(repo, "write-tree", env=env))


def stage_commit(repo: Path, env: Mapping[str, str], commit: str, checkout: Path) -> str:
    """Check ``commit`` out into ``checkout`` through the staging index; its tree id."""
    checkout.mkdir(parents=True, exist_ok=True)
    git(repo, f"--work-tree={os.fspath(checkout)}", "read-tree", "-u", "--reset", commit, env=env)
    return _line(git(repo, "write-tree", env=env))


def stage_directory(git_dir: Path, work_tree: Path) -> str:
    """Index every file under ``work_tree`` (ignored ones too) into the repository ``git_dir``."""
    env = {"GIT_DIR": os.fspath(git_dir), "GIT_WORK_TREE": os.fspath(work_tree)}
    git(work_tree, "add", "--all", "--force", "--", ".", env=env)
    return _line(git(work_tree, "write-tree", env=env))


def init_repository(git_dir: Path) -> None:
    """An empty repository at ``git_dir`` (its work tree is given per call)."""
    git_dir.parent.mkdir(parents=True, exist_ok=True)
    git(git_dir.parent, "init", "-q", "--bare", os.fspath(git_dir))
    git(git_dir, "config", "core.bare", "false", env={"GIT_DIR": os.fspath(git_dir)})


def index_entries(repo: Path, env: Mapping[str, str]) -> list[IndexEntry]:
    """The entries of the staging index, in index order."""
    out = git(repo, "ls-files", "--stage", "-z", env=env)
    entries = []
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        entries.append(IndexEntry(mode=meta.split(b" ", 1)[0].decode(), path=path))
    return entries


def pack_objects(repo: Path, env: Mapping[str, str], head: str | None, tree: str,
                 pack_base: Path) -> None:
    """Write one pack at ``pack_base`` holding ``head`` (without its history) and ``tree``.

    The guest gets the commit as a shallow repository, so ``git log``,
    ``git diff HEAD`` and ``git checkout -- FILE`` work there, plus every
    object of the prepared tree, wherever on the host it was found.
    """
    listing = b""
    if head is not None:
        listing += git(repo, "rev-list", "--objects", "--max-count=1", head, env=env)
        listing += git(repo, "rev-list", "--objects", tree, "--not", head, env=env)
    else:
        listing += git(repo, "rev-list", "--objects", tree, env=env)
    pack_base.parent.mkdir(parents=True, exist_ok=True)
    git(repo, "-c", "pack.compression=1", "pack-objects", "-q", os.fspath(pack_base),
        input=listing, env=env)


def prune_loose(objects: Path) -> None:
    """Remove the loose objects of a staging object directory (its pack holds them)."""
    for sub in objects.iterdir():
        if len(sub.name) == 2 and sub.is_dir() and not sub.is_symlink():
            shutil.rmtree(sub)


def info_exclude(repo: Path) -> bytes | None:
    """The repository's own ignore rules (``.git/info/exclude``), if it has a regular file."""
    out = git(repo, "rev-parse", "--path-format=absolute", "--git-path", "info/exclude")
    path = Path(os.fsdecode(out.rstrip(b"\n")))
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except (FileNotFoundError, Forbidden):
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(_EXCLUDE_MAX)
