"""Reconcile at daemon start and the exit watcher, on a fake backend.

The fake VMMs are real processes, so adoption checks real pids, start times and
argv, and the watcher waits on a real pidfd.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.core.states import VM_TRANSITIONS, VMState
from banger.host import proc_identity as proc
from banger.store import VMRecord
from tests.support.fake_vms import IMAGE_ID, FakeVMs, fake_vms

GONE_AT_START = "its VMM was gone at daemon start"
EXITED = "its VMM exited on its own (guest poweroff or crash)"


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[FakeVMs]:
    with fake_vms(tmp_path) as made:
        yield made
        assert all(t.to in VM_TRANSITIONS[t.frm] for t in made.transitions)


def add_row(vms: FakeVMs, name: str, state: VMState) -> VMRecord:
    """A row as an earlier daemon left it."""
    return vms.store.vms.add(VMRecord(f"id-{name}", name, "qemu", 1, 128, 1 << 20,
                                      image_id=IMAGE_ID, kernel_name="k", state=state,
                                      net_mode="user", ssh_port=2222))


def spawn(vms: FakeVMs, vm: VMRecord, *, marker: str | None = None) -> int:
    """A VMM of ``vm`` left running by an earlier daemon (``marker``: someone else's)."""
    return vms.backend.spawn(vms.service.rt.spec(vm), marker=marker).pid


def test_reconcile_adopts_a_running_vm_whose_vmm_is_alive_and_ours(vms: FakeVMs) -> None:
    rows = {s: add_row(vms, f"vm-{s}", s) for s in (VMState.RUNNING, VMState.STARTING,
                                                    VMState.STOPPING)}
    pids = {s: spawn(vms, vm) for s, vm in rows.items()}
    daemon = vms.new_service()
    vms.drive(daemon.reconcile)
    for s, before in rows.items():
        after = vms.store.vms.get_key(before.id)
        assert (after.state, after.pid) == (VMState.RUNNING, pids[s])
    assert vms.path("vm-running") == []  # it was running: only its pid is refreshed
    for s in (VMState.STARTING, VMState.STOPPING):
        assert vms.path(f"vm-{s}") == [(s, VMState.RUNNING,
                                         "its VMM runs: adopted at daemon start")]
    assert len(vms.backend.live()) == 3  # adoption kills nothing


def test_an_adopted_vm_is_watched_its_exit_stops_it(vms: FakeVMs) -> None:
    vm = add_row(vms, "box", VMState.RUNNING)
    spawn(vms, vm)
    daemon = vms.new_service()

    async def adopt_then_exit() -> VMRecord:
        await daemon.reconcile()
        vms.backend.exit(vm.id)
        return await vms.until("box", VMState.STOPPED)

    after = vms.drive(adopt_then_exit)
    assert (after.pid, after.state_reason) == (None, EXITED)


def test_reconcile_tears_down_a_vm_whose_pidfile_names_a_process_not_ours(
    vms: FakeVMs,
) -> None:
    vm = add_row(vms, "box", VMState.RUNNING)
    stranger = spawn(vms, vm, marker="someone-elses-sleep")  # the pid was reused
    vms.drive(vms.new_service().reconcile)
    after = vms.vm("box")
    assert (after.state, after.state_reason, after.pid) == (VMState.STOPPED, GONE_AT_START, None)
    assert vms.path("box") == [(VMState.RUNNING, VMState.STOPPED, GONE_AT_START)]
    assert proc.start_time(stranger) is not None  # never signalled: it is not ours
    assert vms.backend.named("kill", "shutdown") == []


@pytest.mark.parametrize("state", [VMState.RUNNING, VMState.STARTING, VMState.STOPPING])
def test_reconcile_tears_down_an_active_vm_whose_vmm_is_dead(
    vms: FakeVMs, state: VMState
) -> None:
    vm = add_row(vms, "box", state)
    spawn(vms, vm)
    vms.backend.exit(vm.id)  # died while no daemon watched; the pidfile stays
    spec = vms.service.rt.spec(vm)
    assert spec.pidfile.exists()
    vms.drive(vms.new_service().reconcile)
    assert vms.path("box") == [(state, VMState.STOPPED, GONE_AT_START)]
    assert not spec.pidfile.exists()  # the backend's cleanup ran


def test_reconcile_tears_down_what_the_backend_does_not_adopt(vms: FakeVMs) -> None:
    vm = add_row(vms, "box", VMState.RUNNING)
    spawn(vms, vm)
    vms.backend.faults.adopt_none = True
    vms.drive(vms.new_service().reconcile)
    assert vms.path("box") == [(VMState.RUNNING, VMState.STOPPED, GONE_AT_START)]


def test_reconcile_removes_interrupted_creates_and_their_vmms(vms: FakeVMs) -> None:
    half = add_row(vms, "half", VMState.CREATING)
    vms.service.rt.files(half).dir.mkdir(parents=True)
    booting = add_row(vms, "booting", VMState.CREATING)  # died between launch and ssh
    spawn(vms, booting)
    idle = [add_row(vms, f"idle-{s}", s) for s in (VMState.CREATED, VMState.STOPPED,
                                                   VMState.ERROR)]
    vms.drive(vms.new_service().reconcile)
    assert vms.store.vms.find("half") is None and vms.store.vms.find("booting") is None
    assert vms.leftovers() == [] and vms.backend.live() == []
    assert [vms.store.vms.get_key(v.id) for v in idle] == idle
    assert vms.transitions == []


def test_the_watcher_stops_a_vm_whose_vmm_exits_and_releases_what_it_held(
    vms: FakeVMs,
) -> None:
    async def boot_then_crash() -> VMRecord:
        await vms.create("box")
        vms.backend.calls.clear()
        vms.backend.exit(vms.vm("box").id)
        return await vms.until("box", VMState.STOPPED)

    after = vms.drive(boot_then_crash)
    assert (after.pid, after.tap_name, after.state_reason) == (None, None, EXITED)
    assert vms.path("box")[-1] == (VMState.RUNNING, VMState.STOPPED, EXITED)
    released = [c.name for c in vms.backend.named("detach", "cleanup")]
    assert released == ["detach", "cleanup"]
    assert not vms.service.rt.spec(after).pidfile.exists()
    assert vms.backend.live() == []


def test_the_watcher_sees_a_vmm_killed_from_outside(vms: FakeVMs) -> None:
    async def boot_then_kill() -> VMRecord:
        await vms.create("box")
        vms.backend.exit(vms.vm("box").id, signal.SIGTERM)
        return await vms.until("box", VMState.STOPPED)

    assert vms.drive(boot_then_kill).state_reason == EXITED


def test_the_watcher_of_a_stopped_boot_leaves_the_next_boot_alone(vms: FakeVMs) -> None:
    async def restart() -> tuple[int | None, VMRecord]:
        await vms.create("box")
        old = vms.vm("box").pid
        await vms.run(vms.service.restart("box"))
        await asyncio.sleep(0.1)  # the old boot's watcher saw its exit: let it act
        return old, vms.vm("box")

    old, after = vms.drive(restart)
    assert after.state is VMState.RUNNING and after.pid not in (None, old)
    assert [h.pid for h in vms.backend.live()] == [after.pid]
