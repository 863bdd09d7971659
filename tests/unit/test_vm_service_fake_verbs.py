"""Every VM verb's state changes, on a fake backend: the path through the table, and Conflicts.

Each test asserts the states a verb moved the VM through (with the reasons the
store recorded) and that a move the table forbids, from where the verb left the
VM, is a Conflict that writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from banger.api.models import Operation
from banger.core.errors import Conflict, InvalidInput
from banger.core.states import VM_TRANSITIONS, VMState
from banger.daemon.operations import Work
from banger.store import VMRecord
from tests.support.fake_vms import IMAGE_ID, FakeVMs, fake_vms

R, S = VMState.RUNNING, VMState.STOPPED
BOOTED = "booted, sshd accepts our key"
STOP_PATH = [(R, VMState.STOPPING, "stop requested"),
             (VMState.STOPPING, S, "stopped on request")]
START_PATH = [(S, VMState.STARTING, "start requested"), (VMState.STARTING, R, BOOTED)]


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[FakeVMs]:
    with fake_vms(tmp_path) as made:
        yield made
        assert all(t.to in VM_TRANSITIONS[t.frm] for t in made.transitions)


def on_box(vms: FakeVMs, verb: Callable[[FakeVMs], Work] | None = None, *, start: bool = True,
           ) -> tuple[Operation | None, VMRecord]:
    """Create VM ``box`` (started or not), forget what that recorded, then run ``verb(vms)``."""

    async def scenario() -> Operation | None:
        created = await vms.create("box", start=start)
        assert created.state == "succeeded", created.error
        vms.transitions.clear()
        vms.backend.calls.clear()
        return await vms.run(verb(vms)) if verb is not None else None

    return vms.drive(scenario), vms.vm("box")


def run(vms: FakeVMs, verb: Callable[[FakeVMs], Work]) -> tuple[Operation, VMRecord]:
    """Create and start ``box``, then run ``verb(vms)`` to its end."""
    op, vm = on_box(vms, verb)
    assert op is not None
    return op, vm


def assert_illegal(vms: FakeVMs, to: VMState) -> None:
    """The table forbids moving ``box`` to ``to`` from where it is: Conflict, nothing written."""
    seen = vms.vm("box")
    with pytest.raises(Conflict, match=f"cannot go from {seen.state} to {to}"):
        vms.store.vms.transition(seen, to, reason="illegal")
    assert vms.vm("box") == seen


def names(vms: FakeVMs, *wanted: str) -> list[str]:
    return [c.name for c in vms.backend.named(*wanted)]


# -- start --------------------------------------------------------------------------


def test_start_boots_a_created_vm(vms: FakeVMs) -> None:
    vms.drive(lambda: vms.create("box", start=False))
    op = vms.drive(lambda: vms.run(vms.service.start("box")))
    assert op.state == "succeeded", op.error
    assert vms.path("box")[1:] == [(VMState.CREATED, VMState.STARTING, "start requested"),
                                   (VMState.STARTING, R, BOOTED)]
    vm = vms.vm("box")
    assert vm.pid == vms.backend.live()[0].pid and vm.started_at is not None
    assert_illegal(vms, VMState.STARTING)


def test_start_of_a_running_vm_changes_nothing(vms: FakeVMs) -> None:
    op, vm = run(vms, lambda v: v.service.start("box"))
    assert op.state == "succeeded" and vm.state is R
    assert vms.transitions == [] and names(vms, "launch") == []


def test_start_of_a_running_row_whose_vmm_is_gone_tears_down_then_boots(vms: FakeVMs) -> None:
    async def scenario() -> Operation:
        await vms.create("box")
        await vms.service.watcher.close()  # no daemon watched when it died
        vms.backend.exit(vms.vm("box").id)
        vms.transitions.clear()
        return await vms.run(vms.service.start("box"))

    op = vms.drive(scenario)
    assert op.state == "succeeded", op.error
    assert vms.path("box") == [(R, S, "its VMM was gone when start was asked"), *START_PATH]
    assert len(vms.backend.live()) == 1


def test_a_failed_start_leaves_error_saying_why_and_a_later_start_boots(vms: FakeVMs) -> None:
    async def scenario() -> tuple[Operation, VMRecord, Operation]:
        await vms.create("box", start=False)
        vms.backend.faults.launch = InvalidInput("the kernel is not bootable")
        failed = await vms.run(vms.service.start("box"))
        in_error = vms.vm("box")
        vms.backend.faults.launch = None
        return failed, in_error, await vms.run(vms.service.start("box"))

    failed, in_error, again = vms.drive(scenario)
    assert failed.state == "failed" and again.state == "succeeded"
    why = "start failed: the kernel is not bootable"
    assert (in_error.state, in_error.state_reason) == (VMState.ERROR, why)
    assert (in_error.last_error, in_error.pid) == ("the kernel is not bootable", None)
    assert vms.path("box")[1:] == [
        (VMState.CREATED, VMState.STARTING, "start requested"),
        (VMState.STARTING, VMState.ERROR, why),
        (VMState.ERROR, VMState.STARTING, "start requested"),
        (VMState.STARTING, R, BOOTED),
    ]
    assert vms.vm("box").last_error is None and len(vms.backend.live()) == 1


def test_a_start_whose_guest_never_answers_kills_the_vmm_and_leaves_error(vms: FakeVMs) -> None:
    async def scenario() -> Operation:
        await vms.create("box", start=False)
        vms.guest.ready = False
        return await vms.run(vms.service.start("box"))

    op = vms.drive(scenario)
    assert op.state == "failed"
    vm = vms.vm("box")
    assert vm.state is VMState.ERROR and vm.state_reason.startswith("start failed: SSH on")
    assert vms.backend.live() == [] and vm.pid is None
    assert_illegal(vms, R)


# -- stop ---------------------------------------------------------------------------


def test_stop_powers_the_guest_off_over_ssh(vms: FakeVMs) -> None:
    op, vm = run(vms, lambda v: v.service.stop("box"))
    assert op.state == "succeeded", op.error
    assert vms.path("box") == STOP_PATH
    assert (vm.pid, vm.tap_name) == (None, None)
    assert names(vms, "poweroff", "shutdown", "kill") == ["poweroff"]
    assert vms.backend.live() == []
    assert_illegal(vms, R)


def test_stop_falls_back_to_the_backends_graceful_stop(vms: FakeVMs) -> None:
    vms.guest.honours_poweroff = False
    op, _ = run(vms, lambda v: v.service.stop("box"))
    assert op.state == "succeeded", op.error
    assert vms.path("box") == STOP_PATH
    assert names(vms, "poweroff", "shutdown", "kill") == ["poweroff", "shutdown"]
    assert vms.backend.named("shutdown")[0].args[0] is True  # graceful
    assert vms.backend.live() == []


def test_stop_of_a_guest_that_ignores_everything_ends_in_sigkill(vms: FakeVMs) -> None:
    vms.guest.honours_poweroff = False
    vms.backend.faults.ignores_powerdown = True
    op, vm = run(vms, lambda v: v.service.stop("box"))
    assert op.state == "succeeded", op.error
    assert vms.path("box") == STOP_PATH and vm.pid is None
    assert names(vms, "poweroff", "shutdown", "kill") == ["poweroff", "shutdown", "kill"]
    assert vms.backend.named("kill")[0].args == ("SIGKILL",)
    assert vms.backend.live() == []


def test_a_stop_whose_vmm_survives_sigkill_fails_and_never_claims_stopped(vms: FakeVMs) -> None:
    vms.guest.honours_poweroff = False
    vms.backend.faults.ignores_powerdown = True
    vms.backend.faults.kill_fails = True
    op, vm = run(vms, lambda v: v.service.stop("box"))
    assert op.state == "failed" and op.error is not None
    assert "survived SIGKILL" in op.error.message
    assert vms.path("box") == STOP_PATH[:1]
    assert vm.state is VMState.STOPPING and vm.pid == vms.backend.live()[0].pid
    assert_illegal(vms, VMState.STARTING)


def test_stop_of_a_stopped_vm_changes_nothing(vms: FakeVMs) -> None:
    op, vm = on_box(vms, start=False)
    op = vms.drive(lambda: vms.run(vms.service.stop("box")))
    assert op.state == "succeeded" and vms.vm("box") == vm
    assert vms.transitions == [] and names(vms, "poweroff", "shutdown", "kill") == []


# -- restart, kill, delete ------------------------------------------------------------


def test_restart_stops_then_boots_a_new_vmm(vms: FakeVMs) -> None:
    async def scenario() -> tuple[int | None, Operation]:
        await vms.create("box")
        old = vms.vm("box").pid
        vms.transitions.clear()
        return old, await vms.run(vms.service.restart("box"))

    old, op = vms.drive(scenario)
    assert op.state == "succeeded", op.error
    assert vms.path("box") == [*STOP_PATH, *START_PATH]
    vm = vms.vm("box")
    assert vm.pid not in (None, old) and [h.pid for h in vms.backend.live()] == [vm.pid]


@pytest.mark.parametrize("signame", ["TERM", "KILL", "INT"])
def test_kill_sends_the_signal_and_the_vm_stops(vms: FakeVMs, signame: str) -> None:
    op, vm = run(vms, lambda v: v.service.kill("box", signame))
    assert op.state == "succeeded", op.error
    assert vms.path("box") == [(R, S, f"killed with SIG{signame}")]
    assert [c.args for c in vms.backend.named("kill")] == [(f"SIG{signame}",)]
    assert vm.pid is None and vms.backend.live() == []
    assert_illegal(vms, VMState.STOPPING)


def test_a_kill_that_is_not_delivered_leaves_the_vm_running(vms: FakeVMs) -> None:
    vms.backend.faults.kill_fails = True
    op, vm = run(vms, lambda v: v.service.kill("box", "TERM"))
    assert op.state == "succeeded" and vm.state is R
    assert vms.transitions == [] and vm.pid == vms.backend.live()[0].pid


def test_kill_of_a_stopped_vm_changes_nothing_and_a_bad_signal_is_refused(
    vms: FakeVMs,
) -> None:
    _, vm = on_box(vms, start=False)
    op = vms.drive(lambda: vms.run(vms.service.kill("box", "TERM")))
    assert op.state == "succeeded" and vms.vm("box") == vm and vms.transitions == []
    with pytest.raises(InvalidInput, match="unknown signal 'STOP'"):
        vms.service.kill("box", "STOP")


@pytest.mark.parametrize("start", [True, False])
def test_delete_removes_the_vmm_the_files_and_the_row(vms: FakeVMs, start: bool) -> None:
    op, _ = on_box(vms, start=start)
    op = vms.drive(lambda: vms.run(vms.service.delete("box")))
    assert op.state == "succeeded", op.error
    assert vms.store.vms.find("box") is None and vms.leftovers() == []
    assert vms.backend.live() == [] and vms.transitions == []
    assert names(vms, "shutdown") == (["shutdown"] if start else [])


# -- set ------------------------------------------------------------------------------


def test_set_resizes_a_stopped_vm(vms: FakeVMs) -> None:
    _, before = on_box(vms, start=False)
    work = vms.service.rt.files(before).work
    vm = vms.drive(lambda: vms.service.set("box", vcpu=2, memory_mib=256, disk="16M"))
    assert (vm.vcpu, vm.memory_mib, vm.disk_bytes) == (2, 256, 16 << 20)
    assert work.stat().st_size == 16 << 20
    assert vm.state is before.state and vms.transitions == []


def test_set_of_a_running_vm_is_a_conflict_that_changes_nothing(vms: FakeVMs) -> None:
    _, before = on_box(vms)

    async def scenario() -> VMRecord:
        return await vms.service.set("box", vcpu=2, memory_mib=None, disk="16M")

    with pytest.raises(Conflict, match="VM 'box' is running") as err:
        vms.drive(scenario)
    assert err.value.hint == "stop it first: banger vm stop box"
    assert vms.vm("box") == before
    assert vms.service.rt.files(before).work.stat().st_size == 8 << 20


# -- a VM still being created --------------------------------------------------------


def half_created(vms: FakeVMs) -> VMRecord:
    """VM ``box`` as its create left it mid-way (its row in ``creating``)."""
    return vms.store.vms.add(VMRecord("id-box", "box", "qemu", 1, 128, 1 << 20,
                                      image_id=IMAGE_ID, kernel_name="k",
                                      state=VMState.CREATING, net_mode="user"))


@pytest.mark.parametrize("verb", ["start", "restart"])
def test_start_or_restart_of_a_vm_still_being_created_is_a_conflict_that_boots_nothing(
    vms: FakeVMs, verb: str
) -> None:
    half = half_created(vms)
    op = vms.drive(lambda: vms.run(getattr(vms.service, verb)("box")))
    assert op.state == "failed" and op.error is not None
    assert (op.error.code, op.error.message) == ("conflict", "VM 'box' is still being created")
    assert op.error.hint == "wait for its create to finish: banger vm show box"
    assert vms.vm("box") == half and vms.transitions == []
    assert names(vms, "attach", "launch") == [] and vms.backend.live() == []


def test_set_of_a_vm_still_being_created_is_a_conflict(vms: FakeVMs) -> None:
    half = half_created(vms)
    with pytest.raises(Conflict, match="VM 'box' is still being created"):
        vms.drive(lambda: vms.service.set("box", vcpu=2, memory_mib=None, disk=None))
    assert vms.vm("box") == half
