"""The workspace service in-process, on the fake backend: the guest is a test directory.

``FakeGuest.root`` set, the workspace scripts run here with their ``/root/...`` path
moved below it; everything else (plan, staging, the VM row, the operation, the lock,
the error mapping) is the daemon's own code.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.api.models import Operation, VMCreateRequest, WorkspaceRequest
from banger.core.errors import Conflict, GuestError, InvalidInput, NotFound
from banger.core.states import VMState
from banger.core.workspace import WorkspaceMode
from banger.daemon.workspace_service import _guest_failure
from banger.host.ext4 import check_ext4, debugfs_request, read_ext4_file
from banger.host.ssh import GuestCommandError
from banger.store import Store
from banger.workspace import scripts
from tests.support.fake_vms import FakeVMs, fake_vms
from tests.support.workspace_repo import (
    NOT_SHIPPED,
    Repo,
    apply_on,
    commit_repo,
    edit_like_an_agent,
    git,
    make_repo,
    snapshot,
)


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[FakeVMs]:
    with fake_vms(tmp_path) as made:
        made.guest.root = tmp_path / "guest"
        yield made


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return make_repo(tmp_path)


def guest_tree(vms: FakeVMs) -> Path:
    assert vms.guest.root is not None
    return vms.guest.root / "root" / "repo"


def request(path: Path, **options: object) -> WorkspaceRequest:
    return WorkspaceRequest(path=str(path), **options)  # type: ignore[arg-type]


async def prepared(vms: FakeVMs, path: Path, name: str = "box", **options: object) -> Operation:
    """Create VM ``name`` (unless it exists) and prepare ``path`` in it."""
    if vms.store.vms.find(name) is None:
        created = await vms.create(name)
        assert created.state == "succeeded", created.error
    plan = await vms.workspaces.plan(request(path, **options))
    return await vms.run(vms.workspaces.prepare(name, plan), "vm.workspace.prepare")


def test_prepare_ships_the_repo_and_records_it_in_the_vms_row(vms: FakeVMs, repo: Repo) -> None:
    op = vms.drive(lambda: prepared(vms, repo.top))
    assert op.state == "succeeded", op.error
    assert [s.name for s in op.stages] == ["stage", "pack", "copy"]
    assert snapshot(guest_tree(vms)) == snapshot(repo.top, skip=frozenset(NOT_SHIPPED))
    ws = vms.vm("box").workspace
    assert ws is not None
    assert (ws.host_path, ws.guest_path, ws.mode) == (repo.top, "/root/repo", WorkspaceMode.GIT)
    assert ws.head_commit == ws.host_head == repo.head() and ws.branch == "main"
    assert ws.files == len(snapshot(guest_tree(vms))) and ws.include_untracked is False
    assert op.result is not None
    # A daemon that starts again reads the same row.
    again = Store.open(vms.settings.paths.state_dir / "state.db")
    try:
        assert again.vms.get("box").workspace == ws
    finally:
        again.close()


def test_export_through_the_service_applies_on_the_host_as_prepared(vms: FakeVMs,
                                                                    repo: Repo,
                                                                    tmp_path: Path) -> None:
    assert vms.drive(lambda: prepared(vms, repo.top)).state == "succeeded"
    copy = tmp_path / "copy"
    shutil.copytree(repo.top, copy, symlinks=True)
    edit_like_an_agent(guest_tree(vms))
    result = vms.drive(lambda: vms.workspaces.export("box", None))
    ws = vms.vm("box").workspace
    assert ws is not None and result.base == ws.prepared_tree
    apply_on(copy, base64.b64decode(result.patch_b64))
    assert snapshot(copy, skip=frozenset(NOT_SHIPPED)) == snapshot(guest_tree(vms))
    shown = {f.path: f for f in result.files}
    assert shown["g\\xfe\\x0aname"].status == "A"  # a guest's name, escaped for a terminal
    assert shown["dir/renamed.txt"].old_path == "dir/nested.txt"


def test_a_second_prepare_replaces_the_tree_and_the_row(vms: FakeVMs, repo: Repo) -> None:
    assert vms.drive(lambda: prepared(vms, repo.top)).state == "succeeded"
    (guest_tree(vms) / "guest-only.txt").write_bytes(b"replaced by the next prepare\n")
    git(repo.top, "commit", "-qam", "host moves on")
    info = vms.drive(lambda: vms.workspaces.info("box"))
    assert info.head_moved and info.host_head == repo.head()
    op = vms.drive(lambda: prepared(vms, repo.top, include_untracked=True))
    assert op.state == "succeeded", op.error
    assert not (guest_tree(vms) / "guest-only.txt").exists()
    assert (guest_tree(vms) / "untracked.txt").read_bytes() == repo.untracked
    ws = vms.vm("box").workspace
    assert ws is not None and ws.include_untracked and ws.host_head == repo.head()
    assert not vms.drive(lambda: vms.workspaces.info("box")).head_moved


def test_a_dry_run_lists_what_would_ship_without_a_vm(vms: FakeVMs, repo: Repo) -> None:
    plan = vms.drive(lambda: vms.workspaces.dry_run(request(repo.top)))
    files = {e.path: e for e in plan.entries if e.kind != "dir"}
    assert "untracked.txt" not in files and "ignored.log" not in files
    assert files["caf\\xff.txt"].kind == "file" and files["new\\x0aline.txt"].size == 8
    assert files["run.sh"].kind == "exec" and files["link_out"].kind == "link"
    assert plan.files == len(files) and plan.head_commit == repo.head()
    state_dir = vms.settings.paths.state_dir
    assert not guest_tree(vms).exists() and list(state_dir.glob("tmp/*")) == []
    assert (state_dir / "tmp").is_dir()  # its scratch was banger's own, in the state dir
    assert not (state_dir.parent / "tmp").exists()  # never beside it


def test_export_of_a_vm_without_a_workspace_is_not_found_with_the_fix(vms: FakeVMs) -> None:
    async def scenario() -> None:
        assert (await vms.create("box")).state == "succeeded"
        await vms.workspaces.export("box", None)

    with pytest.raises(NotFound, match="has no workspace") as err:
        vms.drive(scenario)
    assert err.value.hint == "prepare one: banger vm workspace prepare box PATH"


def test_prepare_and_export_of_a_stopped_vm_are_conflicts(vms: FakeVMs, repo: Repo) -> None:
    async def scenario() -> Operation:
        assert (await prepared(vms, repo.top)).state == "succeeded"
        assert (await vms.run(vms.service.stop("box"))).state == "succeeded"
        plan = await vms.workspaces.plan(request(repo.top))
        return await vms.run(vms.workspaces.prepare("box", plan))

    op = vms.drive(scenario)
    assert op.state == "failed" and op.error is not None
    assert op.error.code == "conflict" and op.error.hint == "start it first: banger vm start box"
    with pytest.raises(Conflict, match="it is stopped"):
        vms.drive(lambda: vms.workspaces.export("box", None))
    assert vms.vm("box").workspace is not None  # kept for the next start


def test_export_refuses_a_bad_base_commit_and_one_the_guest_lacks(vms: FakeVMs,
                                                                  repo: Repo) -> None:
    assert vms.drive(lambda: prepared(vms, repo.top)).state == "succeeded"
    with pytest.raises(InvalidInput, match="not a commit id"):
        vms.drive(lambda: vms.workspaces.export("box", "HEAD; reboot"))
    with pytest.raises(NotFound, match="is not a commit in the guest"):
        vms.drive(lambda: vms.workspaces.export("box", "0123456789abcdef"))
    shutil.rmtree(guest_tree(vms))
    with pytest.raises(NotFound, match="the workspace is gone from the guest") as err:
        vms.drive(lambda: vms.workspaces.export("box", None))
    assert err.value.hint == "prepare it again: banger vm workspace prepare box PATH"


def test_a_guest_sending_a_malformed_export_is_refused(vms: FakeVMs, repo: Repo,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert vms.drive(lambda: prepared(vms, repo.top)).state == "succeeded"
    lying = tmp_path / "lying-bin"
    lying.mkdir()
    (lying / "git").write_text("#!/bin/sh\nprintf '99\\nM\\0a\\0'\n")  # a guest's own git
    (lying / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{lying}:{os.environ['PATH']}")
    with pytest.raises(GuestError, match="malformed"):
        vms.drive(lambda: vms.workspaces.export("box", None))


def test_a_guest_sending_millions_of_changed_names_is_refused_off_the_event_loop(
        vms: FakeVMs, repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert vms.drive(lambda: prepared(vms, repo.top)).state == "succeeded"
    lying = tmp_path / "lying-bin"
    lying.mkdir()
    (lying / "git").write_text(  # a guest's own git: its name-status list is 16 MiB long
        f"#!{sys.executable}\nimport sys\n"
        "if '--name-status' in sys.argv: sys.stdout.buffer.write(b'M\\0a\\0' * (4 << 20))\n")
    (lying / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{lying}:{os.environ['PATH']}")
    ticks: list[float] = []

    async def export_while_ticking() -> None:
        async def tick() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        try:
            await vms.workspaces.export("box", None)
        finally:
            ticker.cancel()

    with pytest.raises(GuestError, match="more than 100000 changed files"):
        vms.drive(export_while_ticking)
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert max(gaps) < 0.5  # the loop kept answering while the list was judged


def create_request(path: str, **options: object) -> VMCreateRequest:
    return VMCreateRequest(name="box", image="img", vcpu=1, memory_mib=128, disk="8M",
                           workspace=request(Path(path), **options))


@pytest.mark.parametrize(("path", "options", "error"), [
    ("/nonexistent/repo", {}, InvalidInput),
    ("{tmp}/plain", {}, InvalidInput),
    ("{repo}", {"from_ref": "no-such-ref"}, NotFound),
    ("{repo}", {"branch": "a..b"}, InvalidInput),
    ("{repo}", {"mode": "full_copy", "branch": "b"}, InvalidInput),
])
def test_a_create_with_an_invalid_workspace_fails_before_any_vm_exists(
        vms: FakeVMs, repo: Repo, tmp_path: Path, path: str, options: dict[str, object],
        error: type[Exception]) -> None:
    (tmp_path / "plain").mkdir()
    req = create_request(path.format(tmp=tmp_path, repo=repo.top), **options)
    with pytest.raises(error):
        vms.drive(lambda: vms.creator.create(req))
    assert vms.store.vms.find("box") is None and vms.leftovers() == []
    assert vms.backend.live() == []


def test_a_create_whose_prepare_fails_leaves_no_vm(vms: FakeVMs, repo: Repo) -> None:
    assert vms.guest.root is not None
    vms.guest.root.mkdir()
    (vms.guest.root / "root").write_bytes(b"a file where the guest's /root should be")

    async def scenario() -> Operation:
        _, work = await vms.creator.create(create_request(str(repo.top)))
        return await vms.run(work, "vm.create")

    op = vms.drive(scenario)
    assert op.state == "failed" and op.error is not None
    assert [s.name for s in op.stages if s.state == "failed"] == ["copy"]
    assert op.error.code == "guest_error" and "box" in op.error.message
    assert vms.store.vms.find("box") is None and vms.leftovers() == []
    assert vms.backend.live() == []


def test_a_create_with_a_workspace_boots_and_prepares(vms: FakeVMs, repo: Repo) -> None:
    async def scenario() -> Operation:
        _, work = await vms.creator.create(create_request(str(repo.top)))
        return await vms.run(work, "vm.create")

    op = vms.drive(scenario)
    assert op.state == "succeeded", op.error
    names = [s.name for s in op.stages]
    # A newline in a name is more than debugfs can carry: the tar goes over SSH after boot.
    assert names.index("stage") < names.index("workspace") < names.index("boot")
    assert names[-2:] == ["pack", "copy"]
    vm = vms.vm("box")
    assert vm.state is VMState.RUNNING and vm.workspace is not None
    assert (guest_tree(vms) / "tracked.txt").read_bytes() == b"v1 edited on the host\n"


def test_a_create_writes_a_plain_workspace_into_the_work_disk_before_boot(
    vms: FakeVMs, tmp_path: Path
) -> None:
    top = tmp_path / "plain-repo"
    commit_repo(top, {"run.sh": "#!/bin/sh\n", "app.py": "print('hi')\n"})
    (top / "src").mkdir()
    (top / "app.py").rename(top / "src" / "app.py")
    (top / "run.sh").chmod(0o755)
    (top / "link").symlink_to("src/app.py")
    git(top, "add", "-A")
    git(top, "commit", "-qm", "two")

    async def scenario() -> Operation:
        _, work = await vms.creator.create(create_request(str(top)))
        return await vms.run(work, "vm.create")

    op = vms.drive(scenario)
    assert op.state == "succeeded", op.error
    names = [s.name for s in op.stages]
    assert "pack" not in names and "copy" not in names
    assert names.index("workspace") < names.index("boot")
    disk = vms.service.rt.files(vms.vm("box")).work
    assert read_ext4_file(disk, "/repo/src/app.py") == b"print('hi')\n"
    assert b"Mode:  0755" in debugfs_request(disk, "stat /repo/run.sh")
    assert b"Fast link dest: \"src/app.py\"" in debugfs_request(disk, "stat /repo/link")
    assert read_ext4_file(disk, "/repo/.git/refs/banger/prepared").strip() == (
        vms.vm("box").workspace.prepared_tree.encode())  # type: ignore[union-attr]
    check_ext4(disk, what="work disk")


def test_a_workspace_needs_a_vm_that_starts(vms: FakeVMs, repo: Repo) -> None:
    req = create_request(str(repo.top)).model_copy(update={"start": False})
    with pytest.raises(InvalidInput, match="needs a running VM"):
        vms.drive(lambda: vms.creator.create(req))
    assert vms.store.vms.find("box") is None


@pytest.mark.parametrize(("code", "said", "error", "words"), [
    (scripts.NO_TAR, "tar", GuestError, "the guest has no tar"),
    (scripts.NO_GIT, "git", GuestError, "the guest has no git"),
    (scripts.NO_ROOM, "3221225472 1048576", InvalidInput,
     "needs 3.0G but the work disk of VM 'box' has 1.0M free"),
    (scripts.NO_ROOM, "$(x) y", InvalidInput, "needs ? but the work disk of VM 'box' has ?"),
    (scripts.NO_ROOM, "\u00b2 \u0663", InvalidInput, "needs ? but the work disk of VM 'box' has ?"),
    (scripts.NO_INODES, "6018 4083", InvalidInput,
     "needs 6018 inodes (files, links and directories) but the work disk of VM 'box' has 4083"),
    (scripts.NO_INODES, "\u00b2 x", InvalidInput, "needs ? inodes"),
    (scripts.NO_WORKSPACE, "/root/repo", NotFound, "the workspace is gone"),
    (scripts.NO_REPOSITORY, "/root/repo/.git", NotFound, "the workspace is gone"),
    (scripts.NO_COMMIT, "abcd", NotFound, "--base-commit 'abcd' is not a commit"),
    (scripts.NO_BASE, "", NotFound, "the prepared tree is missing"),
    (1, "tar: short read", GuestError, "failed (1): tar: short read"),
    (255, "ssh: connect refused", GuestError, "failed (255)"),
])
def test_the_guest_scripts_exit_codes_become_one_clear_error(
        vms: FakeVMs, code: int, said: str, error: type[Exception], words: str) -> None:
    assert vms.drive(lambda: vms.create("box")).state == "succeeded"
    failure = _guest_failure(vms.vm("box"), GuestCommandError(code, said))
    assert type(failure) is error
    assert words in str(failure) and failure.hint  # type: ignore[attr-defined]
    if code in (scripts.NO_TAR, scripts.NO_GIT):
        assert "--packages tar,git" in failure.hint  # type: ignore[attr-defined]
    if code == scripts.NO_ROOM:
        assert "banger vm set box --disk" in failure.hint  # type: ignore[attr-defined]
