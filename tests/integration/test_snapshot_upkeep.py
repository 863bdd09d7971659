"""Keeping ``snapshots/`` (docs/snapshots.md, "Lifecycle"), on the daemon's own code with a fake
VMM (tests/support/fake_snapshot.py): what a sweep may remove and when, what stays through a
transient error or a configuration change, and what background builds leave alone."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from banger.api.models import Operation, OperationState
from banger.core.errors import HostToolError
from banger.daemon import snapshot_keeper
from banger.daemon.snapshots import Snapshots
from banger.daemon.vm_layout import boot_kernel
from banger.store import ImageRecord
from tests.support.fake_snapshot import (
    SnapshotFakeBackend,
    create_lean,
    lean_vms,
    settle,
    warm_small,
)
from tests.support.fake_vms import FakeVMs

Lean = tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]


@pytest.fixture
def lean(tmp_path: Path) -> Iterator[Lean]:
    with lean_vms(tmp_path, kernel_name=None) as made:  # background builds on
        yield made


async def _create(vms: FakeVMs, name: str, memory_mib: int = 128) -> Operation:
    op = await create_lean(vms, name, memory_mib=memory_mib)
    assert op.state is OperationState.SUCCEEDED, op.error
    return op


def _slow_judge(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """A sweep's worker thread that takes ``seconds`` per snapshot without meta (a loaded
    host): the window in which a build may rename a new one into place."""
    judge = Snapshots.judge

    def slow(self: Snapshots, meta: dict[str, object]) -> tuple[str | None, bool]:
        if not meta:
            time.sleep(seconds)
        return judge(self, meta)

    monkeypatch.setattr(Snapshots, "judge", slow)


def test_a_sweep_spares_a_snapshot_renamed_into_place_after_its_decision(
        lean: Lean, monkeypatch: pytest.MonkeyPatch) -> None:
    vms, _, image = lean
    snaps = vms.creator.snapshots
    snap_id = warm_small(vms, image)
    d = snaps.dir(snap_id)
    meta = (d / "meta.json").read_text()
    (d / "meta.json").unlink()  # as a dropped one: stale
    _slow_judge(monkeypatch, 0.5)

    async def scenario() -> list[str]:
        pruning = asyncio.create_task(snaps.prune())
        await asyncio.sleep(0.2)  # it judged the old one stale, in its thread
        made = snaps.root / f".tmp-{snap_id}-00000000"  # a build, renamed in meanwhile
        shutil.copytree(d, made)
        (made / "meta.json").write_text(meta)
        shutil.rmtree(d)
        made.rename(d)
        return await pruning

    assert vms.drive(scenario) == []
    assert snaps.find(snaps.key(image, vms.service.rt.kernel(image), 1, 128)) == d


def test_a_sweep_spares_the_snapshot_of_a_build_in_progress(
        lean: Lean, monkeypatch: pytest.MonkeyPatch) -> None:
    vms, _, image = lean
    snaps = vms.creator.snapshots
    snap_id = warm_small(vms, image)
    (snaps.dir(snap_id) / "meta.json").unlink()

    async def scenario() -> tuple[list[str], list[str]]:
        async with snaps._locks[snap_id]:  # a build of its key runs
            during = await snaps.prune()
        return during, await snaps.prune()

    assert vms.drive(scenario) == ([], [snap_id])
    assert sorted(p.name for p in snaps.root.iterdir()) == []


def test_the_reviewers_race_a_replacement_built_while_the_last_clone_goes_survives(
        lean: Lean, monkeypatch: pytest.MonkeyPatch) -> None:
    vms, backend, image = lean
    snaps = vms.creator.snapshots
    old = warm_small(vms, image)
    vms.drive(lambda: _create(vms, "c0"))
    vms.drive(lambda: snaps.invalidate(old, "a test drops it"))  # c0 is backed by it
    _slow_judge(monkeypatch, 1.0)
    backend.save_delay = 0.3

    async def scenario() -> str:
        warm = asyncio.create_task(snaps.warm(image, 1, 128))
        await asyncio.sleep(0.1)
        await vms.run(vms.service.delete("c0"))  # its last clone goes: a sweep starts
        new = await warm
        await settle(vms)
        return new

    new = vms.drive(scenario)
    assert snaps.dir(new).is_dir() and (snaps.dir(new) / "meta.json").is_file()
    assert sorted(p.name for p in snaps.root.iterdir()) == [new]


def test_a_vmm_that_cannot_say_its_version_now_makes_no_snapshot_go(
        lean: Lean, monkeypatch: pytest.MonkeyPatch) -> None:
    """``qemu --version`` timing out under load is no reason to delete every snapshot."""
    vms, backend, image = lean
    snaps = vms.creator.snapshots
    snap_id = warm_small(vms, image)

    def no_version() -> str:
        raise HostToolError("qemu-system-x86_64 --version timed out after 10 s")

    monkeypatch.setattr(backend, "vmm_version", no_version)
    [meta] = vms.drive(lambda: asyncio.to_thread(snaps.all))
    assert meta["stale"] == ("the VMM's version is unknown now: qemu-system-x86_64 "
                             "--version timed out after 10 s")
    assert vms.drive(snaps.prune) == []
    assert (snaps.dir(snap_id) / "meta.json").is_file()


@pytest.mark.parametrize(("field", "value", "why"), [
    ("accel", "kvm", "accel changed (tcg -> kvm)"),
    ("name", "other", "backend changed (qemu -> other)"),
])
def test_a_snapshot_of_another_configuration_is_kept(
        lean: Lean, monkeypatch: pytest.MonkeyPatch, field: str, value: str, why: str) -> None:
    """Switching the accelerator or the backend and back must not cost every snapshot."""
    vms, backend, image = lean
    snaps = vms.creator.snapshots
    snap_id = warm_small(vms, image)
    monkeypatch.setattr(backend, field, value)
    [meta] = vms.drive(lambda: asyncio.to_thread(snaps.all))
    assert meta["stale"] == f"made under another configuration ({why})"
    assert vms.drive(snaps.prune) == [] and vms.drive(lambda: snaps.prune(dry_run=True)) == []
    monkeypatch.undo()
    vms.drive(lambda: _create(vms, "c0"))
    assert vms.vm("c0").started_from == f"snapshot {snap_id}"


def test_a_snapshot_whose_kernel_is_gone_is_pruned(lean: Lean) -> None:
    vms, _, image = lean
    snap_id = warm_small(vms, image)
    vms.store.images.delete("img")  # the other image names k; lean boots the default
    vms.store.kernels.delete("k")
    assert vms.drive(lambda: vms.creator.snapshots.prune(dry_run=True)) == [snap_id]
    assert vms.creator.snapshots.dir(snap_id).is_dir()  # a dry run removes nothing
    assert vms.drive(vms.creator.snapshots.prune) == [snap_id]
    assert not vms.creator.snapshots.dir(snap_id).exists()


def _count_sweeps(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every ``Snapshots.prune`` from now on, as its ``dry_run`` (the sweep itself runs)."""
    sweeps: list[bool] = []
    prune = Snapshots.prune

    async def counted(self: Snapshots, *, dry_run: bool = False) -> list[str]:
        sweeps.append(dry_run)
        return await prune(self, dry_run=dry_run)

    monkeypatch.setattr(Snapshots, "prune", counted)
    return sweeps


def test_a_vm_start_or_stop_sweeps_nothing_and_its_delete_takes_its_dropped_snapshot(
        lean: Lean, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an image or kernel change, a VMM upgrade or a backed VM's delete can make a
    snapshot go: a stop or start (which changes none of them) looks at none."""
    vms, _, image = lean
    snaps = vms.creator.snapshots
    snap_id = warm_small(vms, image)
    vms.drive(lambda: _create(vms, "c0"))
    assert vms.vm("c0").snapshot_id == snap_id
    vms.drive(lambda: snaps.invalidate(snap_id, "a test drops it"))  # kept: c0 is backed by it
    vms.drive(lambda: settle(vms))
    sweeps = _count_sweeps(monkeypatch)
    for verb in (vms.service.stop, vms.service.start) * 2:
        op = vms.drive(lambda verb=verb: vms.run(verb("c0")))  # type: ignore[misc]
        assert op.state is OperationState.SUCCEEDED, op.error
        assert not vms.creator.keeper.busy  # nothing was queued
    assert sweeps == [] and snaps.dir(snap_id).is_dir()
    vms.drive(lambda: vms.run(vms.service.delete("c0")))  # its last clone goes
    vms.drive(lambda: settle(vms))
    assert sweeps == [False] and not snaps.dir(snap_id).exists()


@pytest.mark.parametrize("change", ["vmm upgraded", "kernel file replaced"])
def test_a_change_that_makes_a_snapshot_stale_is_swept_once_a_lookup_sees_it(
        lean: Lean, change: str) -> None:
    vms, backend, image = lean
    snaps = vms.creator.snapshots
    old = warm_small(vms, image)
    if change == "vmm upgraded":
        backend.version = "fake-vmm 2.0"  # its binary replaced under the running daemon
    else:
        boot = boot_kernel(vms.service.rt.kernel(image), backend.traits)
        boot.parent.mkdir(parents=True, exist_ok=True)
        boot.write_bytes(b"another build, same name")
    vms.drive(lambda: _create(vms, "c0"))  # its lookup finds the key changed
    assert vms.vm("c0").started_from == \
        "cold (no snapshot of this shape: banger image warm makes one)"
    vms.drive(lambda: settle(vms))
    [new] = sorted(p.name for p in snaps.root.iterdir())  # c0's background build made it
    assert new != old


def test_a_kernel_delete_sweeps_the_snapshots_it_made_stale(lean: Lean) -> None:
    vms, _, image = lean
    snaps = vms.creator.snapshots
    snap_id = warm_small(vms, image)
    vms.store.images.delete("img")  # the other image names k; lean boots the default
    vms.drive(lambda: vms.creator.images.kernels.delete("k"))
    vms.drive(lambda: settle(vms))
    assert not snaps.dir(snap_id).exists()


def test_a_symlink_in_snapshots_is_removed_once_and_a_file_left_alone(
        lean: Lean, tmp_path: Path) -> None:
    vms, _, image = lean
    snaps = vms.creator.snapshots
    warm_small(vms, image)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").write_text("x")
    (snaps.root / "0123456789abcdef").symlink_to(target)
    (snaps.root / "notes.txt").write_text("someone's")
    assert vms.drive(snaps.prune) == []
    assert not (snaps.root / "0123456789abcdef").is_symlink()
    assert (target / "precious").read_text() == "x"
    assert (snaps.root / "notes.txt").read_text() == "someone's"
    assert len(vms.drive(lambda: asyncio.to_thread(snaps.all))) == 1


def test_no_background_build_without_room_for_the_guests_memory(
        lean: Lean, monkeypatch: pytest.MonkeyPatch) -> None:
    vms, backend, _ = lean
    monkeypatch.setattr(snapshot_keeper, "DISK_RESERVE", 1 << 60)  # more than any disk has
    with structlog.testing.capture_logs() as logs:
        vms.drive(lambda: _create(vms, "c0"))
        vms.drive(lambda: settle(vms))
    assert backend.named("save_state") == []
    [skipped] = [e for e in logs if e["event"] == "no background snapshot"]
    assert "MiB free under" in skipped["why"] and "reserve" in skipped["why"]


def test_background_builds_of_two_shapes_run_one_at_a_time(lean: Lean) -> None:
    vms, backend, _ = lean
    backend.save_delay = 0.3

    async def scenario() -> None:
        await asyncio.gather(_create(vms, "c0", 128), _create(vms, "c1", 256))
        await settle(vms)

    vms.drive(scenario)
    templates = [(c.name, c.vm_id) for c in backend.calls
                 if (c.vm_id or "").startswith("snap-") and c.name in ("launch", "shutdown")]
    assert len(templates) == 4
    assert [t[0] for t in templates] == ["launch", "shutdown", "launch", "shutdown"]
    assert templates[0][1] == templates[1][1] != templates[2][1] == templates[3][1]


def test_a_background_build_failing_with_any_exception_is_logged(lean: Lean) -> None:
    vms, backend, _ = lean
    backend.save_error = OSError(28, "No space left on device")  # type: ignore[assignment]
    with structlog.testing.capture_logs() as logs:
        vms.drive(lambda: _create(vms, "c0"))
        vms.drive(lambda: settle(vms))
    [failed] = [e for e in logs if e["event"] == "background snapshot failed"]
    assert "No space left on device" in failed["error"]
    assert sorted(p.name for p in vms.creator.snapshots.root.iterdir()) == []


def test_a_template_spec_that_cannot_be_made_gives_its_network_back(
        lean: Lean, monkeypatch: pytest.MonkeyPatch) -> None:
    vms, backend, image = lean

    def broken(*args: object) -> None:
        raise HostToolError("no kernel file to boot")

    monkeypatch.setattr(Snapshots, "_template_spec", broken)
    with pytest.raises(HostToolError):
        warm_small(vms, image)
    assert [c.name for c in backend.calls if c.name == "detach"] == ["detach"]
    assert sorted(p.name for p in vms.creator.snapshots.root.iterdir()) == []


def test_a_slow_vmm_version_does_not_stall_the_event_loop(
        lean: Lean, monkeypatch: pytest.MonkeyPatch) -> None:
    """``qemu --version`` (asked again whenever the binary changed) runs in a worker thread:
    other requests go on meanwhile."""
    vms, backend, image = lean
    warm_small(vms, image)
    version = backend.vmm_version()

    def slow_version() -> str:
        time.sleep(0.6)
        return version

    monkeypatch.setattr(backend, "vmm_version", slow_version)

    async def scenario() -> float:
        gaps = [0.0]

        async def tick() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        try:
            await _create(vms, "c0")
        finally:
            ticker.cancel()
        return max(gaps)

    assert vms.drive(scenario) < 0.4
    assert (vms.vm("c0").started_from or "").startswith("snapshot ")


def test_a_build_in_progress_and_trash_are_not_listed(lean: Lean) -> None:
    vms, _, image = lean
    snaps = vms.creator.snapshots
    snap_id = warm_small(vms, image)
    for name in (f".tmp-{snap_id}-00000000", f".trash-{snap_id}-00000000"):
        shutil.copytree(snaps.dir(snap_id), snaps.root / name)  # meta.json and all
    assert [m["id"] for m in vms.drive(lambda: asyncio.to_thread(snaps.all))] == [snap_id]


def _snapshot_dirs(vms: FakeVMs) -> list[str]:
    return sorted(p.name for p in vms.creator.snapshots.root.iterdir())


def test_a_dropped_generation_goes_once_its_last_clone_lets_go_of_it(lean: Lean) -> None:
    """A restore from a damaged snapshot drops it, but a clone's root overlay is backed by
    it: it stays until the last one lets go, here a create whose restore failed and whose
    disks were made again on the image (a row update, no delete), which must sweep too."""
    vms, _, image = lean
    snaps = vms.creator.snapshots
    first = vms.drive(lambda: snaps.warm(image, 1, 128))
    vms.drive(lambda: _create(vms, "c0"))  # restored from ``first``: backed by it
    (snaps.dir(first) / "state").write_bytes(b"scribbled")
    vms.drive(lambda: _create(vms, "c1"))  # fails on it, boots cold; a new build follows
    vms.drive(lambda: settle(vms))
    [second] = [d for d in _snapshot_dirs(vms) if d != first]
    vms.drive(lambda: vms.run(vms.service.delete("c0")))
    vms.drive(lambda: settle(vms))
    assert _snapshot_dirs(vms) == [second]  # the delete of its last clone took ``first``
    (snaps.dir(second) / "state").write_bytes(b"scribbled")
    vms.drive(lambda: _create(vms, "c2"))  # held ``second`` for a moment, then let it go
    vms.drive(lambda: settle(vms))
    assert vms.vm("c2").snapshot_id is None
    assert second not in _snapshot_dirs(vms)
