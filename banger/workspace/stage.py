"""What a workspace ships, worked out on the host: the plan, then the staged files and git data.

``git`` mode ships the files of the staging index (the host's working tree,
or ``--from``'s commit checked out into scratch) and a fresh ``.git`` built
here: HEAD at the host's commit (shallow: one pack with that commit's tree,
plus every object of the prepared tree), the branch, an index whose stat
data matches the shipped files (``core.checkStat=minimal``: whole-second
mtime and size), so the guest's git never re-reads the tree, and
``refs/banger/prepared``, the tree export compares against.

``full_copy`` ships the directory as it is, and a separate baseline
repository (``base.git``) indexing all of it, for export.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import AnyStr

from banger.core.errors import Conflict, InvalidInput
from banger.core.workspace import WorkspaceMode
from banger.host import git, git_stage

_HINT_FULL = "ship the whole directory instead: --mode full_copy"
_CONFIG = """[core]
\trepositoryformatversion = {version}
\tfilemode = true
\tbare = false
\tlogallrefupdates = true
\tcheckStat = minimal
\ttrustctime = false
{extensions}"""


@dataclass(frozen=True)
class Plan:
    """A checked request: what will be shipped from where (nothing written yet)."""

    top: Path
    mode: WorkspaceMode
    include_untracked: bool = False
    head: str | None = None  # the commit the guest's HEAD names
    host_head: str | None = None  # the host repository's HEAD (vm exec warns when it moves)
    branch: str | None = None  # the guest's branch; None: detached (or no commits)
    from_commit: str | None = None  # ship this commit's files, not the working tree
    requested_branch: str | None = None  # --branch and --from as given: a re-sync replays them
    from_ref: str | None = None


@dataclass(frozen=True)
class Entry:
    """One path of the workspace, relative to its top: ``kind`` is file, exec, link or dir."""

    path: bytes
    kind: str


_GUEST_MODES = {"file": 0o644, "exec": 0o755, "dir": 0o755}


def guest_mode(kind: str, st_mode: int, *, keep_mode: bool) -> int:
    """The permission bits an entry of ``kind`` gets in the guest.

    ``keep_mode`` (full_copy): the tree's own bits, set-id bits dropped;
    otherwise what git records: 0755 for exec files and directories, 0644 for files.
    """
    return stat.S_IMODE(st_mode) & 0o1777 if keep_mode else _GUEST_MODES[kind]


def changed(path: bytes, exc: OSError | None = None) -> Conflict:
    """The error for an entry that changed (went away, or changed kind) while it was shipped."""
    why = "it became a symlink" if exc is not None and exc.errno == errno.ELOOP else (
        exc.strerror if exc is not None else "it is no longer a regular file")
    return Conflict(f"{os.fsdecode(path)!r} changed while the workspace was prepared ({why})",
                    hint="run the prepare again once the tree is quiet")


def parents_of(path: AnyStr) -> list[AnyStr]:
    """The directories above ``path`` ('/'-separated), outermost first: ``a/b/c`` -> a, a/b."""
    sep = b"/" if isinstance(path, bytes) else "/"
    out = []
    i = path.find(sep, 1)
    while i != -1:
        out.append(path[:i])
        i = path.find(sep, i + 1)
    return out


@dataclass(frozen=True)
class Staged:
    plan: Plan
    tree: str  # the prepared tree: export's base
    source: Path  # where the entries' files are read from
    entries: list[Entry]
    git_dir: Path | None = None  # shipped as the workspace's .git (git mode)
    base_dir: Path | None = None  # shipped as the baseline repository (full_copy)
    env: dict[str, str] = field(default_factory=dict)  # git on the staging repository


def make_plan(path: Path, mode: WorkspaceMode, *, include_untracked: bool = False,
              branch: str | None = None, from_ref: str | None = None) -> Plan:
    """Check ``path`` and the options; InvalidInput/NotFound with the fix on bad input."""
    if not path.is_absolute():
        raise InvalidInput(f"workspace path {path} is not absolute", hint="pass an absolute path")
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise InvalidInput(f"workspace path {path} {what}", hint="give a repository's directory")
    if mode is WorkspaceMode.FULL_COPY:
        if include_untracked or branch or from_ref:
            raise InvalidInput("--include-untracked, --branch and --from need --mode git",
                               hint="full_copy ships the directory as it is")
        return Plan(top=path, mode=mode)
    top = git.work_tree_top(path)
    if top is None:
        raise InvalidInput(f"{path} is not in a git work tree", hint=_HINT_FULL)
    git.check_own_git_dir(top)
    head = git.head_commit(top)
    from_commit = git.resolve_commit(top, from_ref) if from_ref is not None else None
    requested = branch
    if branch is not None:
        git.check_branch_name(top, branch)
    elif from_commit is None:
        branch = git.head_branch(top)
    return Plan(top=top, mode=mode, include_untracked=include_untracked,
                head=from_commit or head, host_head=head, branch=branch, from_commit=from_commit,
                requested_branch=requested, from_ref=from_ref)


def stage(plan: Plan, scratch: Path, *, pack: bool = True) -> Staged:
    """Build in ``scratch`` what ``plan`` ships; ``pack=False`` (a dry run) skips the objects."""
    if plan.mode is WorkspaceMode.FULL_COPY:
        return _stage_full_copy(plan, scratch, pack=pack)
    return _stage_git(plan, scratch, pack=pack)


def _stage_git(plan: Plan, scratch: Path, *, pack: bool) -> Staged:
    git_dir = scratch / "git"
    _init_git_dir(plan, git_dir)
    alternate = git.objects_dir(plan.top)
    if plan.from_commit is not None:
        source = scratch / "checkout"
        env = git_stage.staging_env(git_dir, source, alternate)
        tree = git_stage.stage_commit(plan.top, env, plan.from_commit)
    else:
        source = plan.top
        env = git_stage.staging_env(git_dir, source, alternate)
        tree = git_stage.stage_work_tree(plan.top, env, git.own_index(plan.top),
                                         include_untracked=plan.include_untracked)
    index = git_stage.index_entries(plan.top, env)
    links = [e.path for e in index if e.mode == git_stage.GITLINK_MODE]
    if links:
        shown = ", ".join(os.fsdecode(p) for p in links[:3])
        raise InvalidInput(f"{plan.top} has submodules ({shown}): git mode ships one repository",
                           hint="ship them too with --mode full_copy")
    entries = [Entry(e.path, _GIT_KINDS[e.mode]) for e in index]
    if pack:
        git_stage.pack_objects(plan.top, env, plan.head, tree,
                               git_dir / "objects" / "pack" / "pack")
        (git_dir / "refs" / "banger" / "prepared").write_text(tree + "\n")
    return Staged(plan=plan, tree=tree, source=source, entries=entries, git_dir=git_dir, env=env)


_GIT_KINDS = {"100644": "file", "100755": "exec", git_stage.SYMLINK_MODE: "link"}


def _init_git_dir(plan: Plan, git_dir: Path) -> None:
    """The guest's repository, before any git command uses it: config, HEAD, branch, shallow."""
    for sub in ("objects/pack", "refs/heads", "refs/tags", "refs/banger", "info"):
        (git_dir / sub).mkdir(parents=True, exist_ok=True)
    sha256 = git.object_format(plan.top) == "sha256"
    extensions = "[extensions]\n\tobjectformat = sha256\n" if sha256 else ""
    (git_dir / "config").write_text(_CONFIG.format(version=1 if sha256 else 0,
                                                   extensions=extensions))
    branch = plan.branch or ("main" if plan.head is None else None)
    if branch is None:
        (git_dir / "HEAD").write_text(f"{plan.head}\n")
    else:
        (git_dir / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
        if plan.head is not None:
            ref = git_dir / "refs" / "heads" / branch
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(plan.head + "\n")
    if plan.head is not None:
        (git_dir / "shallow").write_text(plan.head + "\n")
    exclude = git.info_exclude(plan.top)
    if exclude is not None:
        (git_dir / "info" / "exclude").write_bytes(exclude)


def _stage_full_copy(plan: Plan, scratch: Path, *, pack: bool) -> Staged:
    base = scratch / "base.git"
    for sub in ("objects/pack", "refs/heads", "info"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "config").write_text(_CONFIG.format(version=0, extensions=""))
    (base / "HEAD").write_text("ref: refs/heads/main\n")
    env = git_stage.staging_env(base, plan.top, None)
    tree = git_stage.stage_directory(env, plan.top)
    if pack:
        git_stage.pack_objects(plan.top, env, None, tree, base / "objects" / "pack" / "pack")
    return Staged(plan=plan, tree=tree, source=plan.top, entries=walk_tree(plan.top),
                  base_dir=base, env=env)


def check_unchanged(staged: Staged) -> None:
    """Conflict when a staged file changed while it was being copied (run after the copy)."""
    source = staged.env.get("GIT_WORK_TREE")
    if source and not git_stage.unchanged_since_staged(Path(source), staged.env):
        raise Conflict(f"files in {staged.plan.top} changed while the workspace was prepared",
                       hint="run the prepare again once the tree is quiet")


def walk_tree(top: Path) -> list[Entry]:
    """Every directory, file and symlink under ``top`` (symlinks never followed), sorted."""
    entries: list[Entry] = []
    root = os.fsencode(top)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames) + sorted(filenames):
            rel = name if rel_dir == b"." else os.path.join(rel_dir, name)
            st = os.lstat(os.path.join(dirpath, name))
            kind = _kind_of(st.st_mode)
            if kind is not None:
                entries.append(Entry(rel, kind))
        dirnames.sort()
    return entries


def _kind_of(mode: int) -> str | None:
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "exec" if mode & 0o111 else "file"
    return None  # sockets, FIFOs and devices do not travel
