"""The warm pool (docs/snapshots.md, "Warm pool") on the daemon's own code, on a fake VMM.

The VMM and the guest agent are fakes (tests/support/fake_snapshot.py); the pool's
fill, claim, refill, fallbacks, shutdown and the restarted daemon's reap are the
product's. Real guests: tests/vm/test_warm_pool.py.
"""

from __future__ import annotations

import asyncio
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from banger.api.models import Operation, OperationState, VMCreateRequest, WorkspaceRequest
from banger.core.errors import GuestError, SnapshotUnusable
from banger.core.file_sync import parse_file_sync
from banger.core.guest_sh import PRELUDE, sh_argv
from banger.daemon import vm_create, vm_pool, vm_restore
from banger.daemon.vm_layout import VMFiles
from banger.daemon.vm_pool import WarmPool
from banger.host.git_identity import guest_gitconfig
from banger.store import ImageRecord
from tests.support.fake_host_ops import RecordingHostOps
from tests.support.fake_snapshot import SnapshotFakeBackend, pooled_lean_vms, until
from tests.support.fake_vms import FakeVMs
from tests.support.workspace_repo import make_repo

Pool = tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]


@pytest.fixture
def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pool]:
    monkeypatch.setattr(vm_restore, "IDENTITY_TIMEOUT", 1.0)
    with pooled_lean_vms(tmp_path) as made:
        yield made


async def _filled(vms: FakeVMs, image: ImageRecord) -> WarmPool:
    """Warm the default shape, start the pool, wait for its member."""
    await vms.creator.snapshots.warm(image, 1, 128)
    pool = vms.creator.pool
    pool.start()
    await until(lambda: pool.members == 1)
    return pool


async def _create(vms: FakeVMs, name: str, **extra: object) -> Operation:
    req = VMCreateRequest(name=name, **extra)  # type: ignore[arg-type]
    _, work = await vms.creator.create(req)
    return await vms.run(work, "vm.create")


def _members(pool: WarmPool) -> list[str]:
    return sorted(p.name for p in pool.markers.iterdir()) if pool.markers.is_dir() else []


def test_a_create_claims_the_member_takes_its_name_and_the_pool_refills(pool: Pool) -> None:
    vms, backend, image = pool

    async def scenario() -> tuple[list[str], Operation, list[str]]:
        p = await _filled(vms, image)
        before = _members(p)
        op = await _create(vms, "c0")
        await until(lambda: p.members == 1)  # refilled, one member at a time
        return before, op, _members(p)

    before, op, after = vms.drive(scenario)
    assert op.state is OperationState.SUCCEEDED, op.error
    vm = vms.vm("c0")
    assert [vm.id] == before  # the member's id, files and VMM are the VM's now
    assert vm.started_from.endswith("(warm pool)") and vm.snapshot_id, vm.started_from
    assert "warm pool" in str([s.detail for s in op.stages])
    launches = [c.vm_id for c in backend.named("launch")]
    assert launches.count(vm.id) == 1 and len(after) == 1 and after != before
    # the identity at the fill (held), only the name and the clock at the claim
    identity = [c.args[0] for c in backend.named("agent identity")]
    assert len(identity) == 2 and all("banger.hostname=banger-pool " in i
                                      and i.endswith(" banger.hold=1") for i in identity)
    [name] = [c.args[0] for c in backend.named("agent name")]
    assert name.startswith("name banger.hostname=c0 banger.time="), name
    assert [c.name for c in backend.calls if c.vm_id == vm.id and c.name in (
        "restore_state", "resume", "pause")] == ["restore_state", "resume", "pause", "resume"]
    # sshd accepted our key at the fill, over a held connection; the claim only checks it
    assert [(c.name, c.args[-1]) for c in backend.calls if c.vm_id == vm.id and c.name in (
        "wait_ready", "still_connected")] == [("wait_ready", True), ("still_connected", True)]
    assert "connection made when the warm pool filled" in str([s.detail for s in op.stages])
    assert [v.name for v in vms.store.vms.list()] == ["c0"]  # members have no rows
    assert {h.pid for h in backend.live()} >= {vm.pid}


@pytest.mark.parametrize(("extra", "why"), [
    ({"cold": True}, "--cold"),
    ({"memory_mib": 256}, "other vCPUs or memory"),
    ({"disk": "16M"}, "another --disk"),
    ({"start": False}, "created without starting"),
])
def test_a_create_the_pool_cannot_serve_leaves_the_member(
        pool: Pool, extra: dict[str, object], why: str) -> None:
    vms, backend, image = pool

    async def scenario() -> tuple[list[str], Operation]:
        p = await _filled(vms, image)
        with structlog.testing.capture_logs() as logs:
            op = await _create(vms, "c1", **extra)
        whys = [e["why"] for e in logs if e["event"] == "the warm pool cannot serve this create"]
        assert len(whys) == 1 and why in whys[0], logs
        return _members(p), op

    before, op = vms.drive(scenario)
    assert op.state is OperationState.SUCCEEDED, op.error
    vm = vms.vm("c1")
    assert vm.id not in before and _members(vms.creator.pool) == before
    assert "warm pool" not in (vm.started_from or "")


def test_a_member_whose_guest_fails_its_identity_is_dropped_and_the_create_goes_on(
        pool: Pool) -> None:
    vms, backend, image = pool

    async def scenario() -> tuple[str, Operation]:
        p = await _filled(vms, image)
        member = _members(p)[0]
        backend.agent = "error"
        return member, await _create(vms, "c2")

    member, op = vms.drive(scenario)
    assert op.state is OperationState.SUCCEEDED, op.error
    vm = vms.vm("c2")
    assert vm.id == member and vm.started_from.startswith("cold (snapshot "), vm.started_from
    assert any(s.detail and "warm pool's VM failed" in s.detail for s in op.stages), op.stages
    assert [h.pid for h in backend.live() if h.vm_id == vm.id] == [vm.pid]


def test_a_fill_reads_the_git_identity_once_and_its_work_disk_gets_that_one(
        pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity the member's shape records (what a claim compares) is the one its work
    disk holds: read once per fill, not again for the disk."""
    vms, _, image = pool
    identities = iter([{"user.name": 'Ada "; touch /pwned #', "user.email": "a@example.org"},
                       {"user.name": "someone else"}])  # a second read would see this one
    reads: list[dict[str, str]] = []

    def host_identity() -> dict[str, str]:
        reads.append(next(identities))
        return reads[-1]

    written: list[dict[str, str]] = []

    def gitconfig(identity: dict[str, str]) -> bytes | None:
        written.append(identity)
        return guest_gitconfig(identity)

    monkeypatch.setattr(vm_pool, "host_git_identity", host_identity)
    monkeypatch.setattr(vm_create, "host_git_identity", host_identity)
    monkeypatch.setattr(vm_create, "guest_gitconfig", gitconfig)
    vms.drive(lambda: _filled(vms, image))
    assert len(reads) == 1 and written == reads
    assert vms.creator.pool.creates is vms.creator.keeper.creates  # one count of creates


def test_the_members_of_a_killed_daemon_are_reaped_at_its_restart(pool: Pool) -> None:
    """A daemon SIGKILLed with a filled pool leaves the member's VMM (daemonized), files
    and marker. A marker whose pidfile names a live process that is not the member's VMM
    (a reused pid) must not get that process killed."""
    vms, backend, image = pool
    first = vms.drive(lambda: _filled(vms, image))
    [member_id] = _members(first)
    vmm = next(h for h in backend.live() if h.vm_id == member_id)
    vms.drive(first._tasks.aclose)  # as a SIGKILL would: the first daemon stops filling,
    first._members.clear()  # and never discards its member
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        files = VMFiles.of(vms.settings.paths, "0123456789ab", "qcow2")
        files.run_dir.mkdir(parents=True)
        (files.run_dir / "vmm.pid").write_text(f"{stranger.pid}\n")
        (first.markers / "0123456789ab").touch()
        (first.markers / "not-an-id").touch()
        restarted = WarmPool(vms.new_service().rt, first.booter, first.snapshots, first.creates,
                             make_disks=None)  # type: ignore[arg-type]  # recover makes none
        reaped = vms.drive(restarted.recover)
        assert sorted(reaped) == sorted([member_id, "0123456789ab"])
        assert not vmm.running() and stranger.poll() is None
        assert _members(restarted) == ["not-an-id"]  # not a name we make: left alone
        assert not (vms.settings.paths.vms / member_id).exists()
        assert not files.run_dir.exists()
        assert vms.drive(restarted.recover) == []
    finally:
        stranger.kill()
        stranger.wait()


def test_shutdown_discards_every_member(pool: Pool) -> None:
    vms, backend, image = pool
    p = vms.creator.pool

    async def scenario() -> None:
        await _filled(vms, image)
        await p.close()

    vms.drive(scenario)
    assert p.members == 0 and _members(p) == [] and backend.live() == []
    assert vms.leftovers() == []


def test_an_image_whose_agent_cannot_hold_leaves_the_pool_empty_and_nothing_behind(
        pool: Pool) -> None:
    vms, backend, image = pool
    backend.agent = "old"
    p = vms.creator.pool

    async def scenario() -> list[dict[str, object]]:
        await vms.creator.snapshots.warm(image, 1, 128)
        with structlog.testing.capture_logs() as logs:
            p.start()
            await until(lambda: any(e["event"] == "could not fill the warm pool" for e in logs))
            await asyncio.sleep(0.05)
        return logs

    logs = vms.drive(scenario)
    [failed] = [e for e in logs if e["event"] == "could not fill the warm pool"]
    assert "predates" in str(failed["error"]) and "rebuild" in str(failed["hint"]), failed
    assert p.members == 0 and _members(p) == [] and backend.live() == []
    assert vms.leftovers() == [] and vms.network._held == set()


def test_the_refill_waits_for_the_running_create_and_a_failed_claiming_create_leaves_nothing(
        pool: Pool) -> None:
    """The claiming create's guest lost the connection held since the fill and never lets
    SSH in again: while that create runs no refill starts (it would compete for the CPU);
    once it failed, its VM (the member) is gone and the pool refills."""
    vms, backend, image = pool

    async def scenario() -> tuple[str, list[str | None], Operation]:
        p = await _filled(vms, image)
        [first] = _members(p)
        gate = asyncio.Event()
        fill_ready = vms.guest.wait_ready

        async def held_ready(*args: Any, **kwargs: Any) -> None:
            if kwargs.get("held"):  # the refill's
                return await fill_ready(*args, **kwargs)
            await gate.wait()
            raise GuestError("SSH did not accept our key in time")

        vms.guest.held.clear()
        vms.guest.wait_ready = held_ready  # type: ignore[method-assign]
        create = asyncio.ensure_future(_create(vms, "c3"))
        await until(lambda: bool(backend.named("agent name")))
        await asyncio.sleep(0.3)  # time enough for a refill to start, were it allowed
        during = [c.vm_id for c in backend.named("launch")]
        gate.set()
        op = await create
        await until(lambda: p.members == 1)
        return first, during, op

    first, during, op = vms.drive(scenario)
    assert op.state is OperationState.FAILED
    assert during[-1] == first and len(during) == 2, during  # the template, the member
    assert vms.store.vms.find("c3") is None
    assert not (vms.settings.paths.vms / first).exists()
    assert [h.vm_id for h in backend.live()] == [c.vm_id for c in backend.named("launch")][-1:]


def test_a_dropped_snapshot_empties_the_pool(pool: Pool) -> None:
    vms, backend, image = pool
    p = vms.creator.pool

    async def scenario() -> None:
        await _filled(vms, image)
        [snap] = [m["id"] for m in vms.creator.snapshots.all()]
        await vms.creator.snapshots.invalidate(str(snap), "a test drops it")
        await until(lambda: p.members == 0 and not backend.live() and not _members(p))

    vms.drive(scenario)
    assert _members(p) == [] and vms.leftovers() == []


@pytest.mark.parametrize(("fault", "dropped"), [
    ("scribbled", True),  # the VMM refused the stream: its files are bad
    ("timeout", False),  # a loaded host: the snapshot stays (the next kick tries again)
])
def test_a_member_failing_to_restore_drops_the_snapshot_only_when_its_files_are_bad(
        pool: Pool, fault: str, dropped: bool) -> None:
    vms, backend, image = pool
    snaps = vms.creator.snapshots
    snap_id = vms.drive(lambda: snaps.warm(image, 1, 128))
    if fault == "scribbled":
        (snaps.dir(snap_id) / "state").write_bytes(b"scribbled over")
    else:
        backend.restore_error = SnapshotUnusable("QEMU did not load the saved state within 60 s")

    async def scenario() -> None:
        vms.creator.pool.start()
        await until(lambda: len(backend.named("restore_state")) >= 1 and not backend.live()
                     and not _members(vms.creator.pool))

    vms.drive(scenario)
    assert (snaps.dir(snap_id) / "meta.json").exists() is not dropped
    assert vms.creator.pool.members == 0 and _members(vms.creator.pool) == []


def test_a_workspace_create_claims_the_member_and_copies_the_repo_in_over_ssh(
        pool: Pool, tmp_path: Path) -> None:
    """The repository goes in after the claim (the member's work disk is its /root already);
    a copy the guest fails ends the create with the member's VM gone and nothing left."""
    vms, backend, image = pool
    repo = make_repo(tmp_path)
    vms.guest.root = tmp_path / "guest"

    async def scenario() -> tuple[Operation, Operation, str]:
        p = await _filled(vms, image)
        ok = await _create(vms, "w1", workspace=WorkspaceRequest(path=str(repo.top)))
        await until(lambda: p.members == 1)
        [member] = _members(p)
        vms.guest.root = None  # the next copy fails in the guest
        failed = await _create(vms, "w2", workspace=WorkspaceRequest(path=str(repo.top)))
        return ok, failed, member

    ok, failed, claimed = vms.drive(scenario)
    assert ok.state is OperationState.SUCCEEDED, ok.error
    w1 = vms.vm("w1")
    assert str(w1.started_from).endswith("(warm pool)") and w1.workspace is not None
    assert [s.name for s in ok.stages][-3:] == ["stage", "pack", "copy"], ok.stages
    assert (tmp_path / "guest" / "root" / "repo" / "tracked.txt").read_bytes() == (
        b"v1 edited on the host\n")
    assert failed.state is OperationState.FAILED and "filesystem" in str(failed.error)
    assert vms.store.vms.find("w2") is None
    assert [c.args[0].split()[1] for c in backend.named("agent name")][-1] == (
        "banger.hostname=w2")  # it was claimed
    assert not (vms.settings.paths.vms / claimed).exists()
    assert [h.vm_id for h in backend.live()] == [w1.id]


def test_on_taps_a_claim_adds_nat_and_a_failed_claiming_create_leaves_no_tap_or_nat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TAP networking: a ``--nat`` create claims the member and puts its address in the NAT
    set; a ``--nat`` create whose workspace copy then fails leaves neither the member's TAP
    nor its NAT element (its undo reads what the VM holds from the row, not from the copy
    it registered before the claim), so the next VM on that address gets no NAT."""
    monkeypatch.setattr(vm_restore, "IDENTITY_TIMEOUT", 1.0)
    host = RecordingHostOps()
    repo = make_repo(tmp_path)
    with pooled_lean_vms(tmp_path, host_ops=host) as (vms, _backend, image):
        vms.guest.root = tmp_path / "guest"
        bridge = vms.settings.bridge_name

        async def scenario() -> tuple[Operation, Operation, str, str]:
            p = await _filled(vms, image)
            ok = await _create(vms, "n1", nat=True)
            await until(lambda: p.members == 1)
            tap = p._members[0].vm.tap_name
            assert tap is not None and tap in host.taps
            vms.guest.root = None  # the copy fails in the guest
            failed = await _create(vms, "n2", nat=True,
                                   workspace=WorkspaceRequest(path=str(repo.top)))
            return ok, failed, tap, str(p._members[0].vm.guest_ip) if p._members else ""

        ok, failed, tap, _ = vms.drive(scenario)
        n1 = vms.vm("n1")
        assert ok.state is OperationState.SUCCEEDED, ok.error
        assert str(n1.started_from).endswith("(warm pool)") and n1.tap_name in host.taps
        assert failed.state is OperationState.FAILED and vms.store.vms.find("n2") is None
        assert tap not in host.taps  # the claimed member's TAP went with its VM
        assert host.nat.get(bridge, set()) == {n1.guest_ip}  # n2's address left the set
        vms.drive(lambda: vms.run(vms.service.delete("n1")))
        assert host.nat.get(bridge, set()) == set() and n1.tap_name not in host.taps


def test_with_file_sync_a_claim_copies_the_files_read_at_the_claim_and_a_failed_copy_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool fills though ``[[file_sync]]`` is set; the claiming create's ``file_sync``
    stage copies what the home holds then (over SSH, by the same plan as a start's: a link
    in the home and a name with a newline are left out); a copy the guest fails ends the
    create with the member's VM gone."""
    monkeypatch.setattr(vm_restore, "IDENTITY_TIMEOUT", 1.0)
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    token = home / "token"
    token.write_text("at the fill\n")
    (home / ".aws" / "leak").symlink_to(tmp_path / "secret")
    (home / ".aws" / "new\nline").write_text("unencodable\n")
    (home / ".aws" / "$(touch PWNED)").write_text("plain data\n")
    (tmp_path / "secret").write_text("SECRET\n")
    monkeypatch.setenv("HOME", str(home))
    synced = parse_file_sync([{"host": "~/token", "guest": "/root/.config/token", "mode": "0600"},
                              {"host": "~/.aws", "guest": "/root/.aws"}], home)
    guest = tmp_path / "guest" / "root"
    guest.mkdir(parents=True)
    with pooled_lean_vms(tmp_path, file_sync=synced) as (vms, backend, image):
        vms.guest.root = guest.parent

        async def scenario() -> tuple[Operation, Operation, str]:
            p = await _filled(vms, image)
            token.write_text("at the claim\n")
            ok = await _create(vms, "s1")
            await until(lambda: p.members == 1)
            [member] = _members(p)
            vms.guest.root = None  # the next copy fails in the guest
            failed = await _create(vms, "s2")
            return ok, failed, member

        ok, failed, claimed = vms.drive(scenario)
        assert ok.state is OperationState.SUCCEEDED, ok.error
        assert str(vms.vm("s1").started_from).endswith("(warm pool)")
        assert [s.name for s in ok.stages][-3:] == ["restore", "ssh", "file_sync"], ok.stages
        assert ok.stages[-1].detail == "2 files copied, 2 skipped (see the daemon log)"
        assert (guest / ".config" / "token").read_text() == "at the claim\n"
        assert stat.S_IMODE((guest / ".config" / "token").stat().st_mode) == 0o600
        assert (guest / ".aws" / "$(touch PWNED)").read_text() == "plain data\n"
        assert sorted(p.name for p in (guest / ".aws").iterdir()) == ["$(touch PWNED)"]
        assert not any(p.name == "PWNED" for p in tmp_path.rglob("*"))
        assert failed.state is OperationState.FAILED and "filesystem" in str(failed.error)
        assert failed.stages[-1].name == "file_sync"
        assert vms.store.vms.find("s2") is None
        assert not (vms.settings.paths.vms / claimed).exists()
        assert [h.vm_id for h in backend.live()] == [vms.vm("s1").id]
        assert not list((vms.settings.paths.state_dir / "tmp").iterdir())  # no scratch left


def test_with_file_sync_a_guest_without_tar_fills_no_member_and_creates_go_on_without(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim puts the synced files in with tar: a snapshot whose guest has none (checked
    at the fill, over the member's own connection) fills nothing, says why, and leaves
    nothing of the member; creates then start from the snapshot as without a pool."""
    monkeypatch.setattr(vm_restore, "IDENTITY_TIMEOUT", 1.0)
    monkeypatch.setattr(vm_pool, "TAR_CHECK", sh_argv(PRELUDE + "die 90 tar\n", "banger-pool"))
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text("t\n")
    monkeypatch.setenv("HOME", str(home))
    synced = parse_file_sync([{"host": "~/token", "guest": "/root/token"}], home)
    guest = tmp_path / "guest" / "root"
    guest.mkdir(parents=True)
    with pooled_lean_vms(tmp_path, file_sync=synced) as (vms, backend, image):
        vms.guest.root = guest.parent

        async def scenario() -> Operation:
            await vms.creator.snapshots.warm(image, 1, 128)
            pool = vms.creator.pool
            pool.start()
            await until(lambda: bool(pool._without_tar))  # the fill found no tar
            op = await _create(vms, "s1")
            await until(lambda: "has no tar" in (pool._idle_why or ""))  # looked again: idle
            return op

        op = vms.drive(scenario)
        pool = vms.creator.pool
        assert pool.members == 0 and _members(pool) == []
        assert op.state is OperationState.SUCCEEDED, op.error
        assert "warm pool" not in str(vms.vm("s1").started_from)
        assert [h.vm_id for h in backend.live()] == [vms.vm("s1").id]
