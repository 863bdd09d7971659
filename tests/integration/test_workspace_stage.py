"""A workspace from host repository to guest tree and back, with no VM: the guest is a directory.

The host side (``make_plan``, ``stage``, ``write_payload``) runs as the daemon runs it;
the guest side runs the very scripts the daemon sends (``scripts.PREPARE`` and
``scripts.EXPORT``) with ``sh`` here, their ``/root/...`` path moved into a test
directory, as ``tests/support/fake_backend.FakeGuest`` does. The real-VM proof is
``tests/vm/test_workspace.py``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput, NotFound
from banger.core.workspace import WorkspaceMode
from banger.workspace import scripts
from banger.workspace.disk import base_dir_of
from banger.workspace.export import parse_export
from banger.workspace.payload import write_payload
from banger.workspace.stage import Staged, make_plan, stage
from tests.support.workspace_repo import (
    NOT_SHIPPED,
    Repo,
    Snapshot,
    apply_on,
    commit_repo,
    edit_like_an_agent,
    git,
    make_repo,
    snapshot,
)

GIT = WorkspaceMode.GIT
FULL = WorkspaceMode.FULL_COPY


class Guest:
    """A guest filesystem in a directory; the workspace scripts run on it with sh."""

    def __init__(self, root: Path, guest_path: str = "/root/repo") -> None:
        self.root = root
        self.dest = root / guest_path.lstrip("/")
        home = root / "root"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {"PATH": os.environ["PATH"], "HOME": str(home), "LC_ALL": "C.UTF-8",
                    "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "guest",
                    "GIT_AUTHOR_EMAIL": "guest@example.invalid", "GIT_COMMITTER_NAME": "guest",
                    "GIT_COMMITTER_EMAIL": "guest@example.invalid"}

    def sh(self, script: str, *args: str, stdin: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        argv = scripts.script_argv(script, str(self.dest), *args)
        with open(stdin or os.devnull, "rb") as f:
            return subprocess.run(argv, stdin=f, capture_output=True, env=env or self.env,
                                  timeout=120)

    @property
    def base_dir(self) -> str:
        return base_dir_of(str(self.dest))

    def prepare(self, payload: Path, need: int | None = None, entries: int | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        size = payload.stat().st_size if need is None else need
        if entries is None:
            with tarfile.open(payload) as tar:
                entries = len(tar.getmembers())
        return self.sh(scripts.PREPARE, str(size), self.base_dir, str(entries), stdin=payload,
                       env=env)

    def export(self, staged: Staged, commit: str = "") -> bytes:
        done = self.sh(scripts.EXPORT, staged.plan.mode.value, staged.tree, commit,
                       self.base_dir)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def git(self, *args: str) -> bytes:
        return subprocess.run(["git", "-C", self.dest, *args], check=True, capture_output=True,
                              env=self.env).stdout

    def workspaces(self) -> Snapshot:
        """What ``/root`` holds, once the previous tree's background removal is done."""
        for _ in range(200):
            if not list(self.dest.parent.glob(f".{self.dest.name}.banger-old.*")):
                break
            time.sleep(0.05)
        return snapshot(self.dest.parent, dirs=True)

    def everything(self) -> bytes:
        """Every byte under the guest root, git objects decompressed."""
        blobs = [self.git("cat-file", "--batch-all-objects", "--batch")]
        for path in self.root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                blobs.append(path.read_bytes())
        return b"".join(blobs)


def work_tree_changes(guest: Guest) -> list[bytes]:
    """``git status`` entries where the work tree differs from the index (or is untracked)."""
    entries = guest.git("status", "--porcelain", "-z", "--no-renames").split(b"\0")
    return [e for e in entries if e and e[1:2] != b" "]


def ship(tmp: Path, plan_path: Path, guest: Guest, mode: WorkspaceMode = GIT,
         **options: object) -> tuple[Staged, Path]:
    """Plan, stage and pack on the host, then unpack with the guest's PREPARE."""
    plan = make_plan(plan_path, mode, **options)  # type: ignore[arg-type]
    scratch = tmp / f"scratch-{secrets.token_hex(3)}"
    staged = stage(plan, scratch)
    payload = scratch / "payload.tar"
    write_payload(staged, payload)
    done = guest.prepare(payload)
    assert done.returncode == 0, done.stderr
    return staged, payload


# -- git mode -----------------------------------------------------------------------------


def test_git_mode_ships_the_tracked_working_tree_and_nothing_else(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    guest = Guest(tmp_path / "guest")
    _, payload = ship(tmp_path, repo.top, guest)
    assert snapshot(guest.dest) == snapshot(repo.top, skip=frozenset(NOT_SHIPPED))
    shipped = snapshot(guest.dest)
    assert shipped[b"staged_new.txt"] == ("file", b"added to the index only\n", False)
    assert shipped[b"run.sh"][2] is True and shipped[b"bin.dat"][2] is False
    assert shipped[b"link_out"] == ("link", os.fsencode(tmp_path / "home/.ssh/id_ed25519"))
    assert shipped[b"link_dir"] == ("link", b"dir")
    assert b"gone.txt" not in shipped
    tar = payload.read_bytes()
    everything = guest.everything()
    for marker in (repo.secret, repo.untracked):
        assert marker not in tar and marker not in everything


def test_the_guest_repository_is_clean_at_the_hosts_head_without_rehashing(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    guest = Guest(tmp_path / "guest")
    ship(tmp_path, repo.top, guest)
    assert guest.git("log", "-1", "--format=%H").decode().strip() == repo.head()
    assert guest.git("symbolic-ref", "--short", "HEAD").strip() == b"main"
    # diff-files does not refresh the index: stat data that did not match would show here.
    assert guest.git("diff-files", "--name-only", "-z") == b""
    assert work_tree_changes(guest) == []
    # git diff HEAD in the guest is the host's uncommitted work.
    names = set(guest.git("diff", "--name-only", "-z", "HEAD").split(b"\0")) - {b""}
    assert names == {b"tracked.txt", b"gone.txt", b"staged.txt", b"staged_new.txt"}


def test_include_untracked_ships_untracked_files_but_never_ignored_ones(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    guest = Guest(tmp_path / "guest")
    _, payload = ship(tmp_path, repo.top, guest, include_untracked=True)
    expected = snapshot(repo.top, skip=frozenset(NOT_SHIPPED - {b"untracked.txt"}))
    assert snapshot(guest.dest) == expected
    assert repo.secret not in payload.read_bytes() and repo.secret not in guest.everything()
    assert b"ignored\n" not in payload.read_bytes()


def test_preparing_never_changes_the_repository_it_reads(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git_dir = repo.top / ".git"
    before = snapshot(git_dir, dirs=True)
    status = git(repo.top, "status", "--porcelain", "-z")
    ship(tmp_path, repo.top, Guest(tmp_path / "guest"))
    assert snapshot(git_dir, dirs=True) == before
    assert git(repo.top, "status", "--porcelain", "-z") == status


def test_an_export_applies_on_the_host_tree_as_prepared_and_gives_the_guests_tree(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    guest = Guest(tmp_path / "guest")
    staged, _ = ship(tmp_path, repo.top, guest)
    copy = tmp_path / "copy"
    shutil.copytree(repo.top, copy, symlinks=True)  # the host as it was at prepare
    edit_like_an_agent(guest.dest)
    changes, patch = parse_export(guest.export(staged))
    assert {(c.status[:1], c.path) for c in changes} >= {
        ("M", b"tracked.txt"), ("A", b"added by guest.txt"), ("D", b"run.sh"),
        ("M", b"with space.txt"), ("R", b"dir/renamed.txt"), ("M", b"bin.dat"),
        ("A", b"g\xfe\nname"), ("D", b"link_out"), ("A", b"new_link")}
    apply_on(copy, patch)
    assert snapshot(copy, skip=frozenset(NOT_SHIPPED)) == snapshot(guest.dest)
    leftovers = [p.name for p in (guest.dest / ".git").iterdir() if "banger-export" in p.name]
    assert leftovers == []
    assert guest.git("status", "--porcelain", "-z") != b""  # the guest's own index untouched


def test_an_export_of_an_untouched_workspace_is_empty(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    guest = Guest(tmp_path / "guest")
    staged, _ = ship(tmp_path, repo.top, guest)
    assert parse_export(guest.export(staged)) == ([], b"")


def test_base_commit_diffs_from_a_guest_commit_and_from_the_hosts_head(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    guest = Guest(tmp_path / "guest")
    staged, _ = ship(tmp_path, repo.top, guest)
    (guest.dest / "committed.txt").write_bytes(b"in a guest commit\n")
    guest.git("add", "committed.txt")
    guest.git("commit", "-qm", "guest work")
    guest_commit = guest.git("rev-parse", "HEAD").decode().strip()
    (guest.dest / "after.txt").write_bytes(b"after the commit\n")

    since_commit, _ = parse_export(guest.export(staged, guest_commit))
    assert [c.path for c in since_commit] == [b"after.txt"]
    since_prepare, _ = parse_export(guest.export(staged))
    assert {c.path for c in since_prepare} == {b"after.txt", b"committed.txt"}

    # From the host's HEAD: the patch carries the host's uncommitted work too, and applies
    # to a clean checkout of that commit.
    _, patch = parse_export(guest.export(staged, repo.head()[:12]))
    clean = tmp_path / "clean"
    git(tmp_path, "clone", "-q", str(repo.top), str(clean))
    apply_on(clean, patch)
    assert snapshot(clean) == snapshot(guest.dest)


def test_a_base_commit_the_guest_does_not_have_fails_with_its_code(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    guest = Guest(tmp_path / "guest")
    staged, _ = ship(tmp_path, repo.top, guest)
    done = guest.sh(scripts.EXPORT, "git", staged.tree, "deadbeef" * 5, guest.base_dir)
    assert done.returncode == scripts.NO_COMMIT
    shutil.rmtree(guest.dest)
    assert guest.sh(scripts.EXPORT, "git", staged.tree, "", guest.base_dir).returncode == (
        scripts.NO_WORKSPACE)


def test_branch_from_a_ref_ships_that_commits_files_on_a_new_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    first = repo.head()
    git(repo.top, "commit", "-qam", "second")  # HEAD moves on; --from names the first
    git(repo.top, "tag", "v1", first)
    guest = Guest(tmp_path / "guest")
    staged, _ = ship(tmp_path, repo.top, guest, branch="try-1", from_ref="v1")
    assert guest.git("symbolic-ref", "HEAD").strip() == b"refs/heads/try-1"
    assert guest.git("rev-parse", "HEAD").decode().strip() == first
    listed = set(git(repo.top, "ls-tree", "-r", "-z", "--name-only", first).split(b"\0"))
    assert set(snapshot(guest.dest)) == listed - {b""}
    assert (guest.dest / "tracked.txt").read_bytes() == b"v1\n"
    assert (guest.dest / "gone.txt").read_bytes() == b"to be deleted\n"
    assert guest.git("status", "--porcelain", "-z") == b""  # the index is from's tree too
    assert staged.plan.host_head == repo.head() != staged.plan.head


def test_a_repository_without_commits_ships_its_index(tmp_path: Path) -> None:
    top = tmp_path / "fresh"
    top.mkdir()
    git(top, "init", "-q")
    (top / "a.txt").write_bytes(b"a\n")
    (top / "b.txt").write_bytes(b"b\n")
    git(top, "add", "a.txt")
    guest = Guest(tmp_path / "guest")
    staged, _ = ship(tmp_path, top, guest)
    assert set(snapshot(guest.dest)) == {b"a.txt"}
    (guest.dest / "a.txt").write_bytes(b"changed\n")
    _, patch = parse_export(guest.export(staged))
    apply_on(top, patch)
    assert (top / "a.txt").read_bytes() == b"changed\n"


# -- full_copy ----------------------------------------------------------------------------


def make_plain_dir(tmp: Path) -> tuple[Path, bytes]:
    top = tmp / "plain"
    (top / "sub" / "empty").mkdir(parents=True)
    (top / "private").mkdir(mode=0o700)
    (top / "private" / "key.txt").write_bytes(b"mine\n")
    (top / "private" / "key.txt").chmod(0o600)
    (top / "tool").write_bytes(b"#!/bin/sh\n")
    (top / "tool").chmod(0o755)
    (top / "sub" / "data.bin").write_bytes(bytes(range(256)))
    (top / "a file.log").write_bytes(b"logs ship in full_copy\n")
    (top / os.fsdecode(b"x\xff\ny")).write_bytes(b"odd\n")
    (top / "link").symlink_to("sub/data.bin")
    secret = f"SECRET-{secrets.token_hex(16)}".encode()
    (tmp / "outside").write_bytes(secret)
    (top / "out").symlink_to(tmp / "outside")
    return top, secret


def test_full_copy_of_a_plain_directory_ships_all_of_it_and_round_trips(tmp_path: Path) -> None:
    top, secret = make_plain_dir(tmp_path)
    guest = Guest(tmp_path / "guest")
    staged, payload = ship(tmp_path, top, guest, FULL)
    assert snapshot(guest.dest, dirs=True) == snapshot(top, dirs=True)
    assert not (guest.dest / ".git").exists()
    assert (guest.dest.parent / ".repo.banger-base.git").is_dir()
    assert secret not in payload.read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(top, copy, symlinks=True)
    edit = guest.dest
    (edit / "tool").chmod(0o644)
    (edit / "sub" / "data.bin").write_bytes(b"\0binary\0")
    (edit / "a file.log").unlink()
    (edit / "new.txt").write_bytes(b"new\n")
    (edit / "out").unlink()
    changes, patch = parse_export(guest.export(staged))
    assert {c.path for c in changes} == {b"tool", b"sub/data.bin", b"a file.log", b"new.txt",
                                         b"out"}
    apply_on(copy, patch)
    assert snapshot(copy) == snapshot(guest.dest)


def with_submodule(tmp: Path) -> Repo:
    lib = tmp / "lib"
    lib.mkdir()
    git(lib, "init", "-q")
    (lib / "lib.c").write_bytes(b"int lib;\n")
    git(lib, "add", "-A")
    git(lib, "commit", "-qm", "lib")
    repo = make_repo(tmp)
    git(repo.top, "submodule", "add", "-q", str(lib), "vendor/lib")
    return repo


def test_full_copy_of_a_repository_with_a_submodule_ships_all_of_it(tmp_path: Path) -> None:
    repo = with_submodule(tmp_path)
    guest = Guest(tmp_path / "guest")
    staged, payload = ship(tmp_path, repo.top, guest, FULL)
    everything = frozenset({b".git"})
    assert snapshot(guest.dest, dirs=True) == snapshot(repo.top, dirs=True, skip=everything)
    assert (guest.dest / "vendor" / "lib" / "lib.c").read_bytes() == b"int lib;\n"
    assert guest.git("status", "--porcelain", "-z") == git(repo.top, "status", "--porcelain",
                                                            "-z")
    assert repo.secret not in payload.read_bytes()
    (guest.dest / "tracked.txt").write_bytes(b"top edit\n")
    changes, _ = parse_export(guest.export(staged))
    assert [c.path for c in changes] == [b"tracked.txt"]


@pytest.mark.xfail(strict=True, reason="full_copy indexes a nested repository as a gitlink, on "
                   "the host and in the guest: edits inside a submodule are left out of export")
def test_full_copy_exports_edits_inside_a_submodule(tmp_path: Path) -> None:
    repo = with_submodule(tmp_path)
    guest = Guest(tmp_path / "guest")
    staged, _ = ship(tmp_path, repo.top, guest, FULL)
    (guest.dest / "vendor" / "lib" / "lib.c").write_bytes(b"int lib = 1;\n")
    changes, patch = parse_export(guest.export(staged))
    assert [c.path for c in changes] == [b"vendor/lib/lib.c"] and b"int lib = 1;" in patch


# -- refusals -----------------------------------------------------------------------------


def test_bad_paths_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "plain").mkdir()
    cases = [
        (tmp_path / "missing", GIT, "does not exist"),
        (tmp_path / "file", GIT, "is not a directory"),
        (tmp_path / "file", FULL, "is not a directory"),
        (Path("relative/repo"), GIT, "not absolute"),
        (tmp_path / "plain", GIT, "not in a git work tree"),
    ]
    for path, mode, said in cases:
        with pytest.raises(InvalidInput, match=said) as err:
            make_plan(path, mode)
        assert err.value.hint
    with pytest.raises(InvalidInput) as err:
        make_plan(tmp_path / "plain", GIT)
    assert err.value.hint and "--mode full_copy" in err.value.hint


def test_a_directory_inside_a_repository_plans_its_top(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    plan = make_plan(repo.top / "dir" / "deep", GIT)
    assert plan.top == repo.top and plan.head == repo.head() and plan.branch == "main"


def test_git_mode_refuses_a_repository_with_a_submodule(tmp_path: Path) -> None:
    repo = with_submodule(tmp_path)
    plan = make_plan(repo.top, GIT)
    with pytest.raises(InvalidInput, match="submodules \\(vendor/lib\\)") as err:
        stage(plan, tmp_path / "scratch")
    assert err.value.hint and "full_copy" in err.value.hint


@pytest.mark.parametrize("ref", ["no-such-branch", "v9", "deadbeef", "HEAD~5"])
def test_from_naming_a_missing_ref_is_not_found(tmp_path: Path, ref: str) -> None:
    repo = make_repo(tmp_path)
    with pytest.raises(NotFound, match="no such commit") as err:
        make_plan(repo.top, GIT, from_ref=ref)
    assert err.value.hint


@pytest.mark.parametrize("ref", ["", "-x", "--output=/tmp/x", "a\0b"])
def test_from_that_is_no_ref_is_refused(tmp_path: Path, ref: str) -> None:
    repo = make_repo(tmp_path)
    with pytest.raises(InvalidInput, match="not a git ref"):
        make_plan(repo.top, GIT, from_ref=ref)


@pytest.mark.parametrize("branch", ["", "-b", "a..b", "has space", "x.lock", "HEAD", "@{-1}",
                                    "a~1", "a:b", "a\nb", "refs/../x"])
def test_a_bad_branch_name_is_refused(tmp_path: Path, branch: str) -> None:
    repo = make_repo(tmp_path)
    with pytest.raises(InvalidInput, match="not a branch name") as err:
        make_plan(repo.top, GIT, branch=branch)
    assert err.value.hint and "try-1" in err.value.hint


def test_full_copy_refuses_the_git_only_options(tmp_path: Path) -> None:
    top, _ = make_plain_dir(tmp_path)
    for options in ({"include_untracked": True}, {"branch": "b"}, {"from_ref": "main"}):
        with pytest.raises(InvalidInput, match="need --mode git"):
            make_plan(top, FULL, **options)  # type: ignore[arg-type]


# -- a prepare that fails leaves the previous tree ----------------------------------------


def prepared_twice(tmp_path: Path) -> tuple[Guest, Snapshot, Path]:
    """A guest with a prepared workspace, and the payload of a second prepare."""
    repo = make_repo(tmp_path)
    guest = Guest(tmp_path / "guest")
    ship(tmp_path, repo.top, guest)
    before = guest.workspaces()
    (repo.top / "tracked.txt").write_bytes(b"a later edit\n")
    staged = stage(make_plan(repo.top, GIT), tmp_path / "second")
    payload = tmp_path / "second" / "payload.tar"
    write_payload(staged, payload)
    return guest, before, payload


def test_a_truncated_payload_leaves_the_previous_workspace_whole(tmp_path: Path) -> None:
    guest, before, payload = prepared_twice(tmp_path)
    data = payload.read_bytes()
    payload.write_bytes(data[: len(data) // 2])
    done = guest.prepare(payload, need=len(data), entries=1)
    assert done.returncode != 0
    assert guest.workspaces() == before  # nothing half-unpacked left


def test_a_payload_larger_than_the_free_space_is_refused_before_unpacking(
        tmp_path: Path) -> None:
    guest, before, payload = prepared_twice(tmp_path)
    done = guest.prepare(payload, need=1 << 60)
    assert done.returncode == scripts.NO_ROOM
    need, avail = done.stderr.decode().split()
    assert int(need) == 1 << 60 and 0 < int(avail) < 1 << 60
    assert guest.workspaces() == before


@pytest.mark.parametrize(("missing", "code"), [("tar", scripts.NO_TAR), ("git", scripts.NO_GIT)])
def test_a_guest_without_tar_or_git_is_told_apart(tmp_path: Path, missing: str,
                                                  code: int) -> None:
    guest, before, payload = prepared_twice(tmp_path)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("sh", "tar", "git", "df", "awk", "mkdir", "mktemp", "rm", "mv", "setsid"):
        if tool != missing and (found := shutil.which(tool)):
            (tools / tool).symlink_to(found)
    done = guest.prepare(payload, env=guest.env | {"PATH": str(tools)})
    assert done.returncode == code
    assert guest.workspaces() == before


def test_what_an_interrupted_prepare_left_is_removed_by_the_next(tmp_path: Path) -> None:
    guest, _, payload = prepared_twice(tmp_path)
    for left in (".repo.banger-new.a1B2c3", ".repo.banger-old.Zz9yX8", ".repo.banger-old.q"):
        (guest.dest.parent / left / "tree").mkdir(parents=True)
        (guest.dest.parent / left / "tree" / "junk").write_bytes(b"x" * 4096)
        (guest.dest.parent / left / "tree").chmod(0o500)  # rm -rf as root gets through this
    (guest.dest.parent / ".repo.banger-old.dangling").symlink_to("nowhere")
    assert guest.prepare(payload).returncode == 0
    assert sorted(guest.workspaces()) == sorted(snapshot(guest.dest.parent, dirs=True))
    assert {p.name for p in guest.dest.parent.iterdir()} == {"repo"}


def test_a_git_file_leading_to_another_repository_is_refused(tmp_path: Path) -> None:
    """A directory from an archive whose .git names the owner's other repository ships nothing."""
    commit_repo(tmp_path / "secret", {"credentials.txt": "TOPSECRET\n"})
    hostile = tmp_path / "download"
    hostile.mkdir()
    (hostile / ".git").write_text(f"gitdir: {tmp_path / 'secret' / '.git'}\n")
    with pytest.raises(InvalidInput, match="not that directory's own repository"):
        make_plan(hostile, WorkspaceMode.GIT)
    linked = tmp_path / "linked"
    commit_repo(linked, {"a.txt": "a\n"})
    shutil.rmtree(linked / ".git" / "refs")
    (linked / ".git" / "refs").symlink_to(tmp_path / "secret" / ".git" / "refs")
    with pytest.raises(InvalidInput, match="symbolic link"):
        make_plan(linked, WorkspaceMode.GIT)


def test_a_linked_worktree_is_its_own_repository(tmp_path: Path) -> None:
    main = tmp_path / "main"
    head = commit_repo(main, {"a.txt": "a\n"})
    subprocess.run(["git", "-C", str(main), "worktree", "add", "-q", "-b", "wt",
                    str(tmp_path / "wt")], check=True)
    plan = make_plan(tmp_path / "wt", WorkspaceMode.GIT)
    assert (plan.top, plan.head, plan.branch) == (tmp_path / "wt", head, "wt")


def test_the_repositorys_own_config_runs_nothing_on_the_host(tmp_path: Path) -> None:
    """A clean filter in .git/config (an archive can carry one) is never run by staging."""
    top = tmp_path / "repo"
    commit_repo(top, {"a.txt": "a\n", ".gitattributes": "* filter=evil\n"})
    marker = tmp_path / "ran"
    subprocess.run(["git", "-C", str(top), "config", "filter.evil.clean",
                    f"touch {marker}; cat"], check=True)
    subprocess.run(["git", "-C", str(top), "config", "filter.evil.smudge",
                    f"touch {marker}; cat"], check=True)
    (top / "a.txt").write_text("edited\n")
    for options in ({}, {"from_ref": "main"}):
        scratch = tmp_path / f"scratch{len(options)}"
        scratch.mkdir()
        stage(make_plan(top, WorkspaceMode.GIT, **options), scratch)  # type: ignore[arg-type]
    assert not marker.exists()


def test_a_branch_named_like_a_tag_keeps_its_name(tmp_path: Path) -> None:
    top = tmp_path / "repo"
    commit_repo(top, {"a.txt": "a\n"})
    subprocess.run(["git", "-C", str(top), "tag", "main"], check=True)
    assert make_plan(top, WorkspaceMode.GIT).branch == "main"


def test_a_fifo_for_info_exclude_does_not_hang_staging(tmp_path: Path) -> None:
    top = tmp_path / "repo"
    commit_repo(top, {"a.txt": "a\n"})
    (top / ".git" / "info" / "exclude").unlink()
    os.mkfifo(top / ".git" / "info" / "exclude")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    staged = stage(make_plan(top, WorkspaceMode.GIT), scratch)
    assert [e.path for e in staged.entries] == [b"a.txt"]


def test_more_entries_than_free_inodes_are_refused_before_unpacking(tmp_path: Path) -> None:
    guest, before, payload = prepared_twice(tmp_path)
    done = guest.prepare(payload, entries=1 << 60)
    assert done.returncode == scripts.NO_INODES
    entries, free = done.stderr.decode().split()
    assert int(entries) == 1 << 60 and 0 < int(free) < 1 << 60
    assert guest.workspaces() == before


@pytest.mark.parametrize("df", ["exit 0", "echo 'Filesystem 1024-blocks Used Available'",
                                "printf 'a b c -\\na b c -\\n'"])
def test_free_space_df_cannot_tell_is_an_error_not_zero(tmp_path: Path, df: str) -> None:
    guest, before, payload = prepared_twice(tmp_path)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "df").write_text(f"#!/bin/sh\n{df}\n")
    (tools / "df").chmod(0o755)
    done = guest.prepare(payload, env=guest.env | {"PATH": f"{tools}:{guest.env['PATH']}"})
    assert done.returncode == 1
    assert b"cannot read the free space" in done.stderr
    assert guest.workspaces() == before


def test_a_prepare_right_after_another_races_nothing_of_its_old_trees_removal(
        tmp_path: Path) -> None:
    guest, _, payload = prepared_twice(tmp_path)
    tools = tmp_path / "bin"
    tools.mkdir()
    slow = f"#!/bin/sh\nsleep 0.3\nexec {shutil.which('setsid')} \"$@\"\n"
    (tools / "setsid").write_text(slow)  # the old tree's removal starts late, and runs on
    (tools / "setsid").chmod(0o755)
    env = guest.env | {"PATH": f"{tools}:{guest.env['PATH']}"}
    for _ in range(4):
        done = guest.prepare(payload, env=env)
        assert done.returncode == 0, done.stderr
    assert (guest.dest / "tracked.txt").read_bytes() == b"a later edit\n"
    assert work_tree_changes(guest) == []
    guest.workspaces()  # waits for the removals
    assert {p.name for p in guest.dest.parent.iterdir()} == {"repo"}
