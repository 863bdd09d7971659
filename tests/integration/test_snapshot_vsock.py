"""Warm snapshots over a vsock control channel (Firecracker's), on the daemon's own code.

The fake VMM (tests/support/fake_snapshot.py, ``transport = "vsock"``) behaves
as Firecracker's hybrid vsock does: ``CONNECT 52`` is answered only while the
guest runs, a paused guest answers nothing, and a state load resets every
connection. The daemon's template build, restore and warm pool must therefore
connect after a clone resumed (not before its load, as on QEMU), keep a warm
pool member's connection across its pause, and say nothing VMM-specific.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.api.models import Operation, OperationState, VMCreateRequest
from banger.daemon import vm_restore
from banger.daemon.vm_pool import WarmPool
from banger.store import ImageRecord
from tests.support.fake_snapshot import SnapshotFakeBackend, pooled_lean_vms, until
from tests.support.fake_vms import FakeVMs

Lean = tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]


@pytest.fixture
def lean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lean]:
    monkeypatch.setattr(vm_restore, "IDENTITY_TIMEOUT", 2.0)
    with pooled_lean_vms(tmp_path, "vsock") as made:
        yield made


async def _create(vms: FakeVMs, name: str) -> Operation:
    _, work = await vms.creator.create(VMCreateRequest(name=name))
    return await vms.run(work, "vm.create")


def _steps(backend: SnapshotFakeBackend, vm_id: str) -> list[str]:
    return [c.name for c in backend.calls if c.vm_id == vm_id and c.name in (
        "launch", "save_state", "restore_state", "resume", "pause", "agent connect")]


def test_a_template_is_reached_after_boot_and_a_clone_only_after_its_resume(lean: Lean) -> None:
    vms, backend, image = lean
    snap = vms.drive(lambda: vms.creator.snapshots.warm(image, 1, 128))
    [template] = {c.vm_id for c in backend.named("save_state")}
    assert _steps(backend, template) == ["launch", "agent connect", "save_state"]
    assert [c.args[0] for c in backend.named("agent ping", "agent quiesce")] == [
        "ping", "quiesce"]
    op = vms.drive(lambda: _create(vms, "c0"))
    assert op.state is OperationState.SUCCEEDED, op.error
    vm = vms.vm("c0")
    assert vm.started_from == f"snapshot {snap}", vm.started_from
    # a connection made before the load would have been reset by it
    assert _steps(backend, vm.id) == ["launch", "restore_state", "resume", "agent connect"]
    [identity] = [c.args[0] for c in backend.named("agent identity")]
    assert identity.startswith("identity ") and "banger.hostname=c0" in identity


def test_a_pool_member_keeps_its_connection_across_its_pause_for_the_claim(
        lean: Lean) -> None:
    vms, backend, image = lean

    async def scenario() -> tuple[WarmPool, Operation]:
        await vms.creator.snapshots.warm(image, 1, 128)
        pool = vms.creator.pool
        pool.start()
        await until(lambda: pool.members == 1)
        return pool, await _create(vms, "c1")

    _, op = vms.drive(scenario)
    assert op.state is OperationState.SUCCEEDED, op.error
    vm = vms.vm("c1")
    assert vm.started_from.endswith("(warm pool)"), vm.started_from
    assert _steps(backend, vm.id) == ["launch", "restore_state", "resume", "agent connect",
                                      "pause", "resume"]
    [name] = [c.args[0] for c in backend.named("agent name")]
    assert name.startswith("name banger.hostname=c1 "), name
