"""Warm snapshots' lifecycle (docs/snapshots.md, "Lifecycle") on the daemon's own code, with
a fake VMM (tests/support/fake_snapshot.py): background builds after a cold create, and
snapshots made stale, said why, and removed when their image, kernel or VMM changes.
Real guests: tests/vm/test_snapshots.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from banger.api.models import OperationState
from banger.core.errors import HostToolError
from banger.daemon import snapshot_keeper
from banger.daemon.artifact_routes import snapshot_info
from banger.store import ImageRecord, KernelRecord
from banger.vmm.qemu import QemuBackend
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
    with lean_vms(tmp_path, kernel_name=None) as made:  # the default kernel, k
        yield made






def _templates(backend: SnapshotFakeBackend) -> list[str]:
    return [c.name for c in backend.calls if (c.vm_id or "").startswith("snap-")]


def _snapshot_dirs(vms: FakeVMs) -> list[str]:
    root = vms.creator.snapshots.root
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_a_cold_create_makes_the_snapshot_in_the_background_for_the_next(lean: Lean) -> None:
    vms, backend, _ = lean
    op = vms.drive(lambda: create_lean(vms, "c0"))
    assert op.state is OperationState.SUCCEEDED, op.error
    assert vms.vm("c0").started_from == "cold (no snapshot of this shape: banger image warm " \
                                         "makes one)"
    assert _templates(backend) == []  # nothing of the build ran while the create did
    vms.drive(lambda: settle(vms))
    assert _templates(backend)[:1] == ["launch"] and len(backend.named("save_state")) == 1
    [snap_id] = _snapshot_dirs(vms)
    op = vms.drive(lambda: create_lean(vms, "c1"))
    assert vms.vm("c1").started_from == f"snapshot {snap_id}"
    # --cold and a VM started from the snapshot make nothing more
    vms.drive(lambda: create_lean(vms, "c2", cold=True))
    vms.drive(lambda: settle(vms))
    assert len(backend.named("save_state")) == 1
    assert [h.vm_id for h in backend.live()] == [vms.vm(n).id for n in ("c0", "c1", "c2")]


def test_two_cold_creates_of_one_shape_make_one_snapshot(lean: Lean) -> None:
    vms, backend, _ = lean

    async def both() -> None:
        ops = await asyncio.gather(create_lean(vms, "c0"), create_lean(vms, "c1"))
        assert all(op.state is OperationState.SUCCEEDED for op in ops), ops
        await settle(vms)

    vms.drive(both)
    assert len(backend.named("save_state")) == 1
    assert len(_snapshot_dirs(vms)) == 1


def test_the_build_waits_until_no_create_is_in_flight(lean: Lean) -> None:
    vms, backend, image = lean
    keeper = vms.creator.keeper

    async def scenario() -> None:
        release = asyncio.Event()

        async def slow_create(_ctx: object) -> None:
            await release.wait()

        op = vms.registry.begin("vm.create", vms.creator.creates.counting(slow_create))
        keeper.after_cold_create(image, 1, 128)
        await asyncio.sleep(1.0)
        assert _templates(backend) == []  # a create is in flight: the template waits
        release.set()
        await vms.registry.join(op.id)
        await settle(vms)

    vms.drive(scenario)
    assert len(backend.named("save_state")) == 1


def test_a_stream_of_creates_does_not_hold_the_build_off_forever(
        lean: Lean, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_keeper, "QUIET_MAX_WAIT", 0.5)
    vms, backend, image = lean
    keeper = vms.creator.keeper

    async def scenario() -> None:
        release = asyncio.Event()

        async def endless_create(_ctx: object) -> None:
            await release.wait()

        op = vms.registry.begin("vm.create", vms.creator.creates.counting(endless_create))
        keeper.after_cold_create(image, 1, 128)
        async with asyncio.timeout(10):  # made while the create is still in flight
            while not backend.named("save_state"):
                await asyncio.sleep(0.01)
        release.set()
        await vms.registry.join(op.id)
        await settle(vms)

    vms.drive(scenario)
    assert len(_snapshot_dirs(vms)) == 1


def test_the_switch_off_makes_no_snapshot(tmp_path: Path) -> None:
    with lean_vms(tmp_path, kernel_name=None, snapshot_on_cold_create=False) as (vms, b, _):
        assert vms.drive(lambda: create_lean(vms, "c0")).state is OperationState.SUCCEEDED
        vms.drive(lambda: settle(vms))
        assert _templates(b) == [] and _snapshot_dirs(vms) == []


def test_a_failed_background_build_is_logged_and_leaves_nothing(lean: Lean) -> None:
    vms, backend, _ = lean
    backend.save_error = HostToolError("No space left on device")
    with structlog.testing.capture_logs() as logs:
        op = vms.drive(lambda: create_lean(vms, "c0"))
        vms.drive(lambda: settle(vms))
    assert op.state is OperationState.SUCCEEDED
    failed = [e for e in logs if e["event"] == "background snapshot failed"]
    assert [e["error"] for e in failed] == ["No space left on device"], logs
    assert _snapshot_dirs(vms) == []  # no .tmp-* either
    assert [h.vm_id for h in backend.live()] == [vms.vm("c0").id]  # the template is gone
    # that shape is not built in the background again (a guest that cannot serve a template
    # would boot one after every cold create); image warm still tries
    assert vms.drive(lambda: create_lean(vms, "c1")).state is OperationState.SUCCEEDED
    vms.drive(lambda: settle(vms))
    assert _templates(backend).count("launch") == 1, _templates(backend)
    backend.save_error = None
    vms.drive(lambda: vms.creator.snapshots.warm(vms.store.images.get("lean"), 1, 128))
    assert _templates(backend).count("launch") == 2 and len(_snapshot_dirs(vms)) == 1


def test_closing_the_daemon_cancels_a_build_and_leaves_nothing(lean: Lean) -> None:
    vms, backend, _ = lean
    backend.save_delay = 60

    async def scenario() -> float:
        await create_lean(vms, "c0")
        async with asyncio.timeout(10):
            while not backend.named("save_state"):
                await asyncio.sleep(0.01)
        assert any(n.startswith(".tmp-") for n in _snapshot_dirs(vms))
        started = time.monotonic()
        await vms.creator.keeper.aclose()
        took = time.monotonic() - started
        await create_lean(vms, "c1")  # finishing cold after the close: it starts no build
        return took

    assert vms.drive(scenario) < 5
    assert not vms.creator.keeper.busy and len(backend.named("save_state")) == 1
    assert _snapshot_dirs(vms) == []
    assert [h.vm_id for h in backend.live()] == [vms.vm(n).id for n in ("c0", "c1")]
    assert not list((vms.settings.paths.runtime_dir / "snap").glob("*"))




def _states(vms: FakeVMs) -> dict[str, str | None]:
    return {m["id"]: m["stale"] for m in vms.creator.snapshots.all()}


def test_image_delete_removes_its_snapshots_at_once(lean: Lean) -> None:
    vms, _, image = lean
    snap_id = warm_small(vms, image)
    other = vms.store.images.get("img")  # another image's snapshot is not touched
    planted = vms.creator.snapshots.dir("0123456789abcdef")
    planted.mkdir()
    (planted / "meta.json").write_text(json.dumps({"key": {"image_id": other.id}}))
    vms.drive(lambda: vms.creator.images.delete("lean"))
    assert _snapshot_dirs(vms) == [planted.name]
    assert not vms.creator.snapshots.dir(snap_id).exists()


def test_a_snapshot_made_while_its_image_is_deleted_is_dropped(lean: Lean) -> None:
    vms, backend, image = lean
    backend.save_delay = 0.5

    async def scenario() -> None:
        warm = asyncio.create_task(vms.creator.snapshots.warm(image, 1, 128))
        await asyncio.sleep(0.2)
        await vms.creator.images.delete("lean")
        with pytest.raises(Exception, match="was deleted while its snapshot was made"):
            await warm

    vms.drive(scenario)
    assert _snapshot_dirs(vms) == []


def test_a_vmm_upgrade_makes_snapshots_stale_and_the_last_clone_takes_them(lean: Lean) -> None:
    vms, backend, image = lean
    snap_id = warm_small(vms, image)
    assert _states(vms) == {snap_id: None}
    vms.drive(lambda: create_lean(vms, "c0"))
    assert vms.vm("c0").snapshot_id == snap_id
    backend.version = "fake-vmm 2.0"
    why = "the VMM changed (fake-vmm 1.0 -> fake-vmm 2.0)"
    assert _states(vms) == {snap_id: why}
    [info] = [snapshot_info(m) for m in vms.creator.snapshots.all()]  # what image list shows
    assert (info.current, info.stale) == (False, why)
    assert vms.drive(vms.creator.snapshots.prune) == []  # c0's root is backed by it
    vms.drive(lambda: vms.run(vms.service.delete("c0")))
    vms.drive(lambda: settle(vms))
    assert _snapshot_dirs(vms) == []


def test_a_kernel_imported_again_under_its_name_makes_snapshots_stale(lean: Lean) -> None:
    """Same name, same files (same sizes and times): still another kernel."""
    vms, _, image = lean
    snap_id = warm_small(vms, image)
    k = vms.store.kernels.get("k")
    vms.store.images.delete("img")  # the other image names k; lean boots the default
    vms.store.kernels.delete("k")
    assert _states(vms) == {snap_id: "its kernel is gone: no kernel"}
    vms.store.kernels.add(KernelRecord("k", k.version, k.source, k.path))
    vms.store.kernels.set_default("k")
    assert _states(vms) == {
        snap_id: "its kernel changed (re-imported, replaced or another default)"}
    vms.store.kernels.add(KernelRecord("k2", "6.2", "test", k.path))
    vms.store.kernels.set_default("k2")  # the image boots the default kernel
    assert _states(vms)[snap_id] == "its kernel changed (re-imported, replaced or another " \
                                    "default)"
    assert vms.drive(vms.creator.snapshots.prune) == [snap_id]
    assert _snapshot_dirs(vms) == []


def test_cache_prune_spares_a_build_in_progress_but_not_a_leftover(lean: Lean) -> None:
    vms, backend, image = lean
    backend.save_delay = 0.6
    snaps = vms.creator.snapshots
    leftover = snaps.root / ".tmp-feedfacefeedface-00000000"

    async def scenario() -> list[str]:
        warm = asyncio.create_task(snaps.warm(image, 1, 128))
        async with asyncio.timeout(10):
            while not backend.named("save_state"):
                await asyncio.sleep(0.01)
        leftover.mkdir()
        removed = await snaps.prune()
        await warm
        return removed

    assert vms.drive(scenario) == [leftover.name]
    assert len(_snapshot_dirs(vms)) == 1 and _states(vms) != {}


def test_the_qemu_version_is_asked_again_when_its_binary_changes(tmp_path: Path) -> None:
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\necho 'QEMU emulator version 7.2.0'\n")
    qemu.chmod(0o755)
    backend = QemuBackend(str(qemu))
    assert backend.vmm_version() == "QEMU emulator version 7.2.0"
    qemu.write_text("#!/bin/sh\necho 'QEMU emulator version 8.2.2 (upgraded)'\n")
    os.utime(qemu, ns=(0, time.time_ns() + 10**9))
    assert backend.vmm_version() == "QEMU emulator version 8.2.2 (upgraded)"
