"""A failed restore and a dropped snapshot's replacement (docs/snapshots.md, "Faults"), on the
daemon's own code with a fake VMM (tests/support/fake_snapshot.py).

Only evidence that a snapshot's files are bad drops it; a restore that failed for another
reason (a timeout, the VMM killed) boots that VM cold and keeps the snapshot. A dropped
snapshot whose root still backs VMs is replaced by a new generation beside it at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.api.models import Operation, OperationState
from banger.core.errors import SnapshotUnusable
from banger.daemon import vm_restore
from banger.store import ImageRecord
from tests.support.fake_snapshot import (
    SnapshotFakeBackend,
    create_lean,
    lean_vms,
    settle,
)
from tests.support.fake_vms import FakeVMs

Lean = tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]


@pytest.fixture
def lean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lean]:
    monkeypatch.setattr(vm_restore, "IDENTITY_TIMEOUT", 1.0)
    with lean_vms(tmp_path, kernel_name=None) as made:  # background builds on
        yield made


async def _create(vms: FakeVMs, name: str) -> Operation:
    op = await create_lean(vms, name)
    assert op.state is OperationState.SUCCEEDED, op.error
    await settle(vms)  # its background build or sweep, if any
    return op


def _saves(backend: SnapshotFakeBackend) -> int:
    return len(backend.named("save_state"))


def _dirs(vms: FakeVMs) -> list[str]:
    return sorted(p.name for p in vms.creator.snapshots.root.iterdir())


@pytest.mark.parametrize("fault", [
    "QEMU did not load the saved state within 60 s",
    "QEMU could not load the saved state: qemu-system-x86_64: terminating on signal 9",
])
def test_a_restore_failing_for_another_reason_than_its_files_keeps_the_snapshot(
        lean: Lean, fault: str) -> None:
    vms, backend, image = lean
    snap_id = vms.drive(lambda: vms.creator.snapshots.warm(image, 1, 128))
    backend.restore_error = SnapshotUnusable(fault)
    vms.drive(lambda: _create(vms, "c0"))
    assert vms.vm("c0").started_from == f"cold (snapshot {snap_id} failed: {fault})"
    assert _saves(backend) == 1  # no template was booted again
    backend.restore_error = None
    vms.drive(lambda: _create(vms, "c1"))
    assert vms.vm("c1").started_from == f"snapshot {snap_id}"  # it is still there


def test_a_damaged_snapshot_backing_a_vm_is_replaced_by_a_new_generation(lean: Lean) -> None:
    """The reviewer's loop: the old root stays for c0, yet the next cold create's background
    build makes a replacement (once), and the creates after it restore from it."""
    vms, backend, image = lean
    snaps = vms.creator.snapshots
    old = vms.drive(lambda: snaps.warm(image, 1, 128))
    vms.drive(lambda: _create(vms, "c0"))
    assert vms.vm("c0").snapshot_id == old
    (snaps.dir(old) / "state").write_bytes(b"scribbled over")  # QEMU would refuse it
    vms.drive(lambda: _create(vms, "c1"))
    assert (vms.vm("c1").started_from or "").startswith(
        f"cold (snapshot {old} failed: the fake VMM refused the saved state")
    assert _saves(backend) == 2  # c1's cold create made the replacement in the background
    [new] = [d for d in _dirs(vms) if d != old]
    assert new.startswith(f"{old}.")
    assert (snaps.dir(old) / "root").is_file()  # c0's root overlay is backed by it
    for name in ("c2", "c3"):
        vms.drive(lambda name=name: _create(vms, name))  # type: ignore[misc]
        assert vms.vm(name).started_from == f"snapshot {new}"
        assert vms.vm(name).snapshot_id == new
    assert _saves(backend) == 2
    vms.drive(lambda: vms.run(vms.service.delete("c0")))  # the old root's last VM
    vms.drive(lambda: _create(vms, "c4"))  # (the delete queued a sweep: settled here)
    assert _dirs(vms) == [new]
    assert vms.drive(lambda: snaps.warm(image, 1, 128)) == new
