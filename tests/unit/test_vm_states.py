"""The VM state machine: the one table, the store's compare-and-set, and the daemon's moves."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from banger.config import Settings
from banger.core.errors import Conflict
from banger.core.states import VM_TRANSITIONS, NetMode, VMState
from banger.core.wait import poll_until
from banger.daemon.vm_network import VMNetwork
from banger.daemon.vm_runtime import VMRuntime
from banger.daemon.vm_service import VMService
from banger.host.privileged import CheckedHostOps
from banger.store import ImageRecord, KernelRecord, Store, VMRecord
from banger.vmm.qemu import QemuBackend, ownership_markers
from tests.support.fake_host_ops import RecordingHostOps

PAIRS = list(itertools.product(VMState, VMState))


@pytest.fixture
def store(tmp_path: Path):
    opened = Store.open(tmp_path / "state" / "state.db")
    opened.kernels.add(KernelRecord("k", "6.1", "test", tmp_path / "kernels" / "k"))
    opened.images.add(ImageRecord("img000000001", "img", "test", tmp_path / "images" / "i",
                                  kernel_name="k"))
    yield opened
    opened.close()


def add_vm(store: Store, name: str, state: VMState) -> VMRecord:
    return store.vms.add(VMRecord(f"id-{name}", name, "qemu", 1, 256, 1 << 20,
                                  image_id="img000000001", kernel_name="k", state=state))


def test_the_table_names_every_state_and_only_states() -> None:
    assert set(VM_TRANSITIONS) == set(VMState)
    assert all(targets <= set(VMState) for targets in VM_TRANSITIONS.values())
    assert not any(state in VM_TRANSITIONS[state] for state in VMState)  # no self-loops


def test_every_state_but_creating_is_reachable_and_creating_is_left() -> None:
    reached = set().union(*VM_TRANSITIONS.values())
    assert reached == set(VMState) - {VMState.CREATING}
    assert VM_TRANSITIONS[VMState.CREATING]


@pytest.mark.parametrize(("frm", "to"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_a_transition_happens_exactly_when_the_table_allows_it(
    store: Store, frm: VMState, to: VMState
) -> None:
    seen = add_vm(store, "box", frm)
    if to in VM_TRANSITIONS[frm]:
        moved = store.vms.transition(seen, to, reason=f"test {frm} -> {to}", pid=7)
        assert (moved.state, moved.state_reason, moved.pid) == (to, f"test {frm} -> {to}", 7)
        assert moved.state_changed_at is not None and seen.state_changed_at is not None
        assert moved.state_changed_at > seen.state_changed_at
    else:
        with pytest.raises(Conflict, match=f"VM 'box' cannot go from {frm} to {to}") as err:
            store.vms.transition(seen, to, reason="illegal", pid=7)
        assert "banger vm show box" in (err.value.hint or "")
        assert store.vms.get_key(seen.id) == seen  # nothing written, pid included


def test_a_transition_from_a_stale_row_loses_and_writes_nothing(store: Store) -> None:
    seen = add_vm(store, "box", VMState.RUNNING)
    now = store.vms.transition(seen, VMState.STOPPING, reason="stop requested")
    with pytest.raises(Conflict, match="VM 'box' is stopping, not running"):
        store.vms.transition(seen, VMState.STOPPED, reason="the watcher saw an exit", pid=9)
    assert store.vms.get_key(seen.id) == now


def test_of_many_racing_starts_exactly_one_wins(store: Store) -> None:
    seen = add_vm(store, "box", VMState.STOPPED)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def start(n: int) -> None:
        barrier.wait()
        try:
            store.vms.transition(seen, VMState.STARTING, reason=f"start {n}")
            outcomes.append(f"start {n}")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=start, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o != "conflict"]
    assert len(winners) == 1 and len(outcomes) == 8
    assert store.vms.get_key(seen.id).state_reason == winners[0]


# -- the daemon's moves go through the table ---------------------------------------


@pytest.fixture
def service(store: Store, tmp_path: Path):
    settings = Settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
                        runtime_dir=tmp_path / "run")
    network = VMNetwork(store, settings.bridge_name, settings.bridge_cidr, "test-owner",
                        frozenset({NetMode.USER}),  # no bridge: these tests touch no host network
                        CheckedHostOps(RecordingHostOps()))
    return VMService(VMRuntime(settings, store, network, QemuBackend()))


def stand_in_vmm(service: VMService, vm: VMRecord) -> subprocess.Popen[bytes]:
    """A process whose argv carries the VM's QMP socket and pidfile, as its QEMU's would."""
    spec = service.rt.spec(vm)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", "import time; time.sleep(60)", *ownership_markers(spec)]
    vmm = subprocess.Popen(argv)
    spec.pidfile.write_text(f"{vmm.pid}\n")
    assert poll_until(lambda: service.rt.handle(vm) is not None, timeout=10)
    return vmm


def test_reconcile_removes_creates_adopts_live_vmms_and_stops_the_rest(
    service: VMService, store: Store
) -> None:
    half = add_vm(store, "half", VMState.CREATING)
    service.rt.files(half).dir.mkdir(parents=True)
    live = add_vm(store, "live", VMState.STARTING)
    vmm = stand_in_vmm(service, live)
    gone = {s: add_vm(store, f"gone-{s}", s) for s in (VMState.RUNNING, VMState.STOPPING)}
    idle = {s: add_vm(store, f"idle-{s}", s) for s in (VMState.CREATED, VMState.STOPPED,
                                                       VMState.ERROR)}

    async def reconcile() -> None:
        await service.reconcile()
        await service.close()

    try:
        asyncio.run(reconcile())
        assert store.vms.find_key(half.id) is None and not service.rt.files(half).dir.exists()
        adopted = store.vms.get_key(live.id)
        assert (adopted.state, adopted.pid) == (VMState.RUNNING, vmm.pid)
        assert adopted.state_reason == "its VMM runs: adopted at daemon start"
        for before in gone.values():
            after = store.vms.get_key(before.id)
            assert (after.state, after.state_reason) == (
                VMState.STOPPED, "its VMM was gone at daemon start")
        assert [store.vms.get_key(v.id) for v in idle.values()] == list(idle.values())
    finally:
        vmm.kill()
        vmm.wait()


def test_the_watcher_marks_a_vm_whose_vmm_exits_stopped_saying_why(
    service: VMService, store: Store
) -> None:
    vm = add_vm(store, "box", VMState.RUNNING)
    vmm = stand_in_vmm(service, vm)
    handle = service.rt.handle(vm)
    assert handle is not None
    vm = store.vms.update(vm.id, pid=vmm.pid)

    async def watch_then_exit() -> None:
        service.watcher.watch(vm, handle)
        vmm.kill()
        async with asyncio.timeout(10):
            while store.vms.get_key(vm.id).state is not VMState.STOPPED:
                await asyncio.sleep(0.01)
        await service.close()

    try:
        asyncio.run(watch_then_exit())
    finally:
        vmm.kill()
        vmm.wait()
    after = store.vms.get_key(vm.id)
    assert (after.pid, after.state_reason) == (
        None, "its VMM exited on its own (guest poweroff or crash)")
