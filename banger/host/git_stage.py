"""Staging a workspace in banger's own git repository, with the owner's as an alternate.

Every command here runs with ``GIT_DIR`` set to a repository banger made in
its scratch dir (``GIT_WORK_TREE`` the owner's tree, or a checkout), so only
that repository's config and the owner's global config apply: filters,
hooks and ``core.*`` settings in the owner's repository (which may have come
from an archive) never run. New objects land in banger's repository; git may
refresh the modification time of existing loose objects in the owner's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from banger.host.git import git, git_status, line

GITLINK_MODE = "160000"
SYMLINK_MODE = "120000"


@dataclass(frozen=True)
class IndexEntry:
    """One entry of a staged index: ``mode`` as git writes it (100644, 100755, 120000, 160000)."""

    mode: str
    path: bytes


def staging_env(git_dir: Path, work_tree: Path, alternate: Path | None) -> dict[str, str]:
    """Git commands on banger's repository ``git_dir`` reading ``work_tree``."""
    env = {"GIT_DIR": os.fspath(git_dir), "GIT_WORK_TREE": os.fspath(work_tree)}
    if alternate is not None:
        env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = os.fspath(alternate)
    return env


def stage_work_tree(top: Path, env: Mapping[str, str], own_index: bytes, *,
                    include_untracked: bool) -> str:
    """Index ``top`` into the staging index, starting from the repository's ``own_index``.

    Tracked files (added but uncommitted ones included) as they are on disk,
    edits and deletions included, and with ``include_untracked`` the files git
    neither tracks nor ignores. Returns the tree id of what it holds.
    """
    git(top, "update-index", "-z", "--index-info", input=own_index, env=env)
    git(top, "add", "--all" if include_untracked else "--update", "--", ".", env=env)
    return write_tree(top, env)


def stage_commit(top: Path, env: Mapping[str, str], commit: str) -> str:
    """Check ``commit`` out into the env's work tree through the staging index; its tree id."""
    Path(env["GIT_WORK_TREE"]).mkdir(parents=True, exist_ok=True)
    git(top, "read-tree", "-u", "--reset", commit, env=env)
    return write_tree(top, env)


def stage_directory(env: Mapping[str, str], work_tree: Path) -> str:
    """Index every file under ``work_tree`` (ignored ones too); the tree id."""
    git(work_tree, "add", "--all", "--force", "--", ".", env=env)
    return write_tree(work_tree, env)


def write_tree(top: Path, env: Mapping[str, str]) -> str:
    return line(git(top, "write-tree", env=env))


def index_entries(top: Path, env: Mapping[str, str]) -> list[IndexEntry]:
    """The entries of the staging index, in index order."""
    entries = []
    for record in git(top, "ls-files", "--stage", "-z", env=env).split(b"\0"):
        if record:
            meta, _, path = record.partition(b"\t")
            entries.append(IndexEntry(mode=meta.split(b" ", 1)[0].decode(), path=path))
    return entries


def unchanged_since_staged(top: Path, env: Mapping[str, str]) -> bool:
    """Whether every staged file still matches the index (size and mtime): run after copying."""
    return git_status(top, "diff-files", "--quiet", env=env) == 0


def pack_objects(top: Path, env: Mapping[str, str], head: str | None, tree: str,
                 pack_base: Path) -> None:
    """Write one pack at ``pack_base`` holding ``head`` (without its history) and ``tree``.

    The guest gets the commit as a shallow repository, so ``git log``,
    ``git diff HEAD`` and ``git checkout -- FILE`` work there, plus every
    object of the prepared tree, wherever on the host it was found.
    """
    listing = b""
    if head is not None:
        listing += git(top, "rev-list", "--objects", "--max-count=1", head, env=env)
        listing += git(top, "rev-list", "--objects", tree, "--not", head, env=env)
    else:
        listing += git(top, "rev-list", "--objects", tree, env=env)
    pack_base.parent.mkdir(parents=True, exist_ok=True)
    git(top, "-c", "pack.compression=1", "pack-objects", "-q", os.fspath(pack_base),
        input=listing, env=env)
    _prune_loose(pack_base.parent.parent)


def _prune_loose(objects: Path) -> None:
    """Remove the loose objects of a staging object directory (its pack holds them)."""
    for sub in objects.iterdir():
        if len(sub.name) == 2 and sub.is_dir() and not sub.is_symlink():
            shutil.rmtree(sub)
