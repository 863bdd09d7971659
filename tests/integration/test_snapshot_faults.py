"""Warm snapshot faults on the real daemon code paths (docs/snapshots.md), on a fake VMM.

The VMM and the guest agent are fakes (tests/support/fake_snapshot.py: a
``sleep`` process and a real Unix socket speaking the agent's protocol);
everything else is the product's: the create with its undo and cold fallback,
the per-key build lock, the ``.tmp-*`` build, and the daemon-start recovery.
Real guests: tests/vm/test_snapshots.py.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.api.models import OperationState
from banger.core.vmspec import UserNet
from banger.daemon import vm_restore
from banger.daemon.snapshots import Snapshots
from banger.store import ImageRecord
from tests.support.fake_snapshot import (
    SnapshotFakeBackend,
    create_lean,
    lean_vms,
    warm_small,
)
from tests.support.fake_vms import FakeVMs


@pytest.fixture
def snap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
         ) -> Iterator[tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]]:
    monkeypatch.setattr(vm_restore, "IDENTITY_TIMEOUT", 1.0)
    with lean_vms(tmp_path, snapshot_on_cold_create=False) as made:
        yield made






def test_a_clone_from_the_snapshot_restores(
        snap: tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]) -> None:
    vms, backend, image = snap
    snap_id = warm_small(vms, image)
    op = vms.drive(lambda: create_lean(vms, "c0"))
    assert op.state is OperationState.SUCCEEDED, op.error
    assert vms.vm("c0").started_from == f"snapshot {snap_id}"
    assert [c.name for c in backend.named("restore_state", "agent identity")] == [
        "restore_state", "agent identity"]


@pytest.mark.parametrize(("agent", "why"), [
    ("silent", "the guest agent did not answer 'identity' within 1 s"),
    ("error", "the restored guest could not take its identity: error RNG reseed"),
])
def test_a_clone_whose_agent_does_not_confirm_is_killed_and_boots_cold(
        snap: tuple[FakeVMs, SnapshotFakeBackend, ImageRecord], agent: str, why: str) -> None:
    vms, backend, image = snap
    snap_id = warm_small(vms, image)
    backend.agent = agent  # type: ignore[assignment]
    op = vms.drive(lambda: create_lean(vms, "c1"))
    assert op.state is OperationState.SUCCEEDED, op.error
    vm = vms.vm("c1")
    assert vm.started_from == f"cold (snapshot {snap_id} failed: {why})"
    assert any(s.detail and why in s.detail for s in op.stages), op.stages
    # the restored VMM was killed before the cold boot; only the cold one runs
    launches = [c for c in backend.named("launch", "shutdown") if c.vm_id == vm.id]
    assert [c.name for c in launches] == ["launch", "shutdown", "launch"]
    assert [h.pid for h in backend.live()] == [vm.pid]
    # the guest failed, not the file: the snapshot stays for the next create
    assert (vms.creator.snapshots.dir(snap_id) / "state").is_file()
    assert vm.snapshot_id is None


def _truncate_ram(ram: Path) -> None:
    with ram.open("r+b") as f:
        f.truncate(64 << 20)


def _ram_to_symlink(ram: Path) -> None:
    secret = ram.parent.parent / "secret"
    secret.write_bytes(b"\0" * (128 << 20))
    ram.unlink()
    ram.symlink_to(secret)


@pytest.mark.parametrize(("damage", "why"), [
    (_truncate_ram, f"the saved memory is {64 << 20} bytes, not the guest's 128 MiB"),
    (_ram_to_symlink, "cannot open the saved memory ram: refusing to open"),
])
def test_a_snapshot_whose_memory_file_is_damaged_boots_cold_without_launching_a_clone(
        snap: tuple[FakeVMs, SnapshotFakeBackend, ImageRecord], damage: Any, why: str) -> None:
    """QEMU would create a missing memory file (a clone of zeroes) and follow a link: the
    file is checked first; the create boots cold saying why, and the snapshot is dropped."""
    vms, backend, image = snap
    snap_id = warm_small(vms, image)
    damage(vms.creator.snapshots.dir(snap_id) / "ram")
    op = vms.drive(lambda: create_lean(vms, "c3"))
    assert op.state is OperationState.SUCCEEDED, op.error
    vm = vms.vm("c3")
    assert vm.started_from is not None
    assert vm.started_from.startswith(f"cold (snapshot {snap_id} failed: {why}"), vm.started_from
    assert [c.name for c in backend.named("launch") if c.vm_id == vm.id] == ["launch"]
    assert backend.named("restore_state") == []
    left = vms.creator.snapshots.dir(snap_id)  # dropped: only a root no clone needs, for prune
    assert not any((left / f).exists() for f in ("state", "ram", "meta.json"))


def test_a_snapshot_without_its_memory_file_is_not_found(
        snap: tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]) -> None:
    vms, backend, image = snap
    snap_id = warm_small(vms, image)
    (vms.creator.snapshots.dir(snap_id) / "ram").unlink()
    op = vms.drive(lambda: create_lean(vms, "c4"))
    assert op.state is OperationState.SUCCEEDED, op.error
    assert vms.vm("c4").started_from == (
        "cold (no snapshot of this shape: banger image warm makes one)")
    assert backend.named("restore_state") == []


def test_when_the_cold_boot_fails_too_the_create_fails_with_its_error(
        snap: tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]) -> None:
    vms, backend, image = snap
    warm_small(vms, image)
    backend.agent = "silent"
    vms.guest.ready = False  # the cold boot's guest never lets SSH in either
    op = vms.drive(lambda: create_lean(vms, "c2"))
    assert op.state is OperationState.FAILED
    assert op.error is not None and "identity" not in op.error.message, op.error
    assert backend.live() == [] and vms.store.vms.find("c2") is None


def test_two_racing_warms_of_one_shape_build_once(
        snap: tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]) -> None:
    vms, backend, image = snap
    backend.save_delay = 0.3

    async def race() -> list[str]:
        warm = vms.creator.snapshots.warm
        return list(await asyncio.gather(warm(image, 1, 128), warm(image, 1, 128)))

    first, second = vms.drive(race)
    assert first == second
    assert len(backend.named("save_state")) == 1  # the second waited, then found it made
    snapshots = vms.creator.snapshots.root
    assert sorted(p.name for p in snapshots.iterdir()) == [first]
    assert backend.live() == []


def test_a_restarted_daemon_removes_an_interrupted_save(
        snap: tuple[FakeVMs, SnapshotFakeBackend, ImageRecord]) -> None:
    """What a daemon SIGKILLed mid-save leaves: its template's VMM (daemonized, still
    running), the template's run dir, the ``.tmp-*`` build. Another run dir's pidfile names
    a live process that is not a template VMM (a reused pid): it must survive."""
    vms, backend, image = snap
    old = vms.creator.snapshots
    key = old.key(image, vms.service.rt.kernel(image), 1, 128)
    build = old.root / f".tmp-{key.id}-deadbeef"
    build.mkdir(parents=True)
    (build / "state").write_bytes(b"half a state")
    net = UserNet(ssh_host_port=2222, mac="52:54:00:12:34:56")
    template = old._template_spec(key, image, vms.service.rt.kernel(image), build, net)
    vmm = backend.spawn(template)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        other = template.run_dir.parent / "0123abcd"
        other.mkdir()
        (other / "vmm.pid").write_text(f"{stranger.pid}\n")
        restarted = Snapshots(vms.new_service().rt)  # a new daemon on the same dirs
        removed = vms.drive(restarted.recover)
        assert not vmm.running()
        assert stranger.poll() is None  # not ours: not killed
        assert not build.exists() and not template.run_dir.exists() and not other.exists()
        assert sorted(removed) == sorted([build.name, f"snap/{template.run_dir.name}",
                                          "snap/0123abcd"])
        assert vms.drive(restarted.recover) == []  # nothing left the second time
    finally:
        stranger.kill()
        stranger.wait()
