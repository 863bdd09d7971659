"""``vm create`` on a fake backend: it succeeds in order, and a failure at any stage unwinds.

A failed create leaves no row, no VM directory and no VMM process, and its undo
runs in reverse: the VMM stopped, then the network given back, then the VM
destroyed (its row last). The real-VM tests (tests/vm) stay the proof with QEMU.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.api.models import Operation, VMCreateRequest
from banger.core.cancel import pause
from banger.core.errors import GuestError, HostToolError, Unavailable
from banger.core.states import VM_TRANSITIONS, NetMode, VMState
from banger.daemon.vm_boot import with_console
from banger.daemon.vm_layout import VMFiles
from banger.host import disks
from banger.images.manifest import ROOTFS_NAME
from banger.store import VMRecord
from banger.vmm.traits import TRAITS
from tests.support.fake_vms import IMAGE_ID, FakeVMs, fake_vms

# What the create and its undo do, in order (adopt: "is a VMM of this VM running?").
ORDER = ("attach", "launch", "wait_ready", "shutdown", "detach", "adopt")


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[FakeVMs]:
    with fake_vms(tmp_path) as made:
        yield made
        assert all(t.to in VM_TRANSITIONS[t.frm] for t in made.transitions)


def order(vms: FakeVMs) -> list[str]:
    return [c.name for c in vms.backend.named(*ORDER)]


def failed_stage(op: Operation) -> str:
    failed = [s.name for s in op.stages if s.state == "failed"]
    assert len(failed) == 1, op.stages
    return failed[0]


def assert_nothing_left(vms: FakeVMs) -> None:
    assert vms.store.vms.find("box") is None
    assert vms.leftovers() == []
    assert vms.backend.live() == []


def test_a_create_reserves_makes_disks_attaches_boots_and_waits_for_ssh(vms: FakeVMs) -> None:
    op = vms.drive(lambda: vms.create("box"))
    assert op.state == "succeeded", op.error
    assert [s.name for s in op.stages] == ["reserve", "disks", "network", "boot", "ssh"]
    vm = vms.vm("box")
    assert vms.path("box") == [
        (VMState.CREATING, VMState.RUNNING, "booted, sshd accepts our key")]
    (live,) = vms.backend.live()
    assert (vm.state, vm.pid, vm.net_mode) == (VMState.RUNNING, live.pid, "user")
    assert order(vms) == ["attach", "launch", "adopt", "wait_ready"]  # adopt: launch's own check
    files = vms.service.rt.files(vm)
    assert files.root.is_file() and files.work.is_file() and files.known_hosts.is_file()


def test_a_create_asks_the_backend_for_its_overlay_and_name(tmp_path: Path) -> None:
    raw_only = dataclasses.replace(TRAITS["firecracker"], net_kinds=frozenset({NetMode.USER}))
    with fake_vms(tmp_path, raw_only) as vms:
        op = vms.drive(lambda: vms.create("box"))
        assert op.state == "succeeded", op.error
        vm = vms.vm("box")
        files = vms.service.rt.files(vm)
        assert vm.backend == "firecracker" and files.root.name == "root.raw"
        assert files.root.is_file() and not (files.dir / "root.qcow2").exists()
        assert vms.service.rt.spec(vm).root.format == "raw"


def test_a_create_without_start_makes_disks_and_runs_nothing(vms: FakeVMs) -> None:
    op = vms.drive(lambda: vms.create("box", start=False))
    assert op.state == "succeeded", op.error
    assert vms.path("box") == [
        (VMState.CREATING, VMState.CREATED, "created without booting (--no-start)")]
    assert order(vms) == [] and vms.backend.live() == []


def test_a_create_failing_at_disks_unwinds_before_any_network_or_vmm(vms: FakeVMs) -> None:
    (vms.settings.paths.images / IMAGE_ID / ROOTFS_NAME).unlink()  # the image lost its root
    op = vms.drive(lambda: vms.create("box"))
    assert op.state == "failed" and failed_stage(op) == "disks"
    assert op.error is not None and "rootfs" in op.error.message
    assert_nothing_left(vms)
    assert order(vms) == ["adopt", "detach"]  # only the reservation's undo (destroy) ran


def test_a_create_failing_at_network_unwinds_the_reservation(vms: FakeVMs) -> None:
    vms.network.fail_attach = Unavailable("no network for the VM")
    op = vms.drive(lambda: vms.create("box"))
    assert op.state == "failed" and failed_stage(op) == "network"
    assert op.error is not None and op.error.message == "no network for the VM"
    assert_nothing_left(vms)
    assert order(vms) == ["attach", "adopt", "detach"]


def test_a_create_whose_vmm_fails_to_launch_gives_back_its_network(vms: FakeVMs) -> None:
    vms.backend.faults.launch = HostToolError("QEMU failed to start (exit status 1)")
    op = vms.drive(lambda: vms.create("box"))
    assert op.state == "failed" and failed_stage(op) == "boot"
    assert op.error is not None and "exit status 1" in op.error.message
    assert_nothing_left(vms)
    assert order(vms) == ["attach", "launch", "detach", "adopt", "detach"]


def test_a_create_whose_vmm_dies_at_once_fails_at_ssh_and_unwinds(vms: FakeVMs) -> None:
    vms.backend.faults.dies_after_launch = True
    op = vms.drive(lambda: vms.create("box"))
    assert op.state == "failed" and failed_stage(op) == "ssh"
    assert op.error is not None and "exited before SSH came up" in op.error.message
    assert_nothing_left(vms)
    assert order(vms) == [
        "attach", "launch", "adopt", "wait_ready", "shutdown", "detach", "adopt", "detach"]


def test_a_create_whose_guest_never_answers_stops_the_vmm_then_unwinds(vms: FakeVMs) -> None:
    vms.guest.ready = False
    op = vms.drive(lambda: vms.create("box"))
    assert op.state == "failed" and failed_stage(op) == "ssh"
    assert op.error is not None and "did not accept our key" in op.error.message
    assert_nothing_left(vms)
    # Reverse order: the VMM (boot's undo), the network, then the reservation (destroy).
    assert order(vms) == [
        "attach", "launch", "adopt", "wait_ready", "shutdown", "detach", "adopt", "detach"]
    (shutdown,) = vms.backend.named("shutdown")
    assert shutdown.args == (False, 0)  # not graceful: the create is being undone
    assert [c.args for c in vms.backend.named("kill")] == [("SIGKILL",)]


def test_a_guest_that_never_answers_has_its_console_tail_in_the_error(
    vms: FakeVMs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create's undo removes the VM and its console log: what the guest printed is in
    the error, its last lines only, since ``banger vm logs`` has nothing left to show."""
    vms.guest.ready = False
    never = vms.guest.wait_ready

    async def printing(vm: VMRecord, files: VMFiles, *args: Any, **kwargs: Any) -> None:
        files.console_log.write_text("boot noise\n" * 500 + "Kernel panic - not syncing: VFS\n")
        await never(vm, files, *args, **kwargs)

    monkeypatch.setattr(vms.guest, "wait_ready", printing)
    op = vms.drive(lambda: vms.create("box"))
    assert op.state == "failed" and op.error is not None
    assert "did not accept our key" in op.error.message
    hint = op.error.hint or ""
    assert hint.startswith("the guest's console, last lines:\n")  # the fake's error has none
    assert hint.endswith("Kernel panic - not syncing: VFS") and len(hint.splitlines()) == 21
    assert_nothing_left(vms)


def test_the_console_lines_follow_the_errors_own_hint_and_nothing_is_added_without_them(
) -> None:
    err = GuestError("SSH did not accept our key in time", hint="see banger vm logs")
    with tempfile.TemporaryDirectory() as d:
        console = Path(d) / "console.log"
        assert with_console(err, console) is err  # no console log: the error as it was
        console.write_text("banger-init: [2.27] sshd started\n")
        shown = with_console(err, console)
    assert type(shown) is GuestError and shown.message == err.message
    assert shown.hint == ("see banger vm logs\nthe guest's console, last lines:\n"
                          "banger-init: [2.27] sshd started")


def test_a_failed_create_leaves_the_name_free_for_the_next(vms: FakeVMs) -> None:
    vms.guest.ready = False

    async def twice() -> tuple[Operation, Operation]:
        first = await vms.create("box")
        vms.guest.ready = True
        return first, await vms.create("box")

    first, second = vms.drive(twice)
    assert (first.state, second.state) == ("failed", "succeeded")
    assert vms.vm("box").state is VMState.RUNNING and len(vms.backend.live()) == 1


def test_a_create_cancelled_while_its_disks_are_made_leaves_no_row_and_no_directory(
    vms: FakeVMs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The undo runs only once the disk threads have ended: none writes after it."""
    reached = threading.Event()
    real = disks.create_work_disk

    def slow_work_disk(*args: Any, **kwargs: Any) -> None:
        reached.set()
        pause(0.5)  # the work disk is still being made when the cancel comes
        real(*args, **kwargs)

    monkeypatch.setattr(disks, "create_work_disk", slow_work_disk)

    async def cancel_during_disks() -> Operation:
        _, work = await vms.creator.create(VMCreateRequest(name="box", image="img", disk="8M"))
        op = vms.registry.begin("vm.create", work)
        assert await asyncio.to_thread(reached.wait, 5)
        vms.registry.cancel(op.id)
        done = await vms.registry.join(op.id)
        for _ in range(100):  # a thread left running would write the work disk late
            assert vms.store.vms.find("box") is None and vms.leftovers() == []
            await asyncio.sleep(0.01)
        return done

    op = vms.drive(cancel_during_disks)
    assert op.state == "cancelled" and failed_stage(op) == "disks"
    assert_nothing_left(vms)
