"""Stats, top and auto-stop in-process, on a fake backend whose VMMs are real processes.

The guest answers the stats command with a text the test writes (so a session count,
a silent guest or a hostile answer is chosen per test); the VMM's CPU and RSS are
read from /proc for the fake VMM's real ``sleep`` process; auto-stop runs the stop
verb's real path, and the test's clock decides how long a VM has been unused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from banger.api.models import TopView
from banger.core.errors import GuestError
from banger.core.states import VMState
from banger.daemon.vm_idle import IdleStopper
from banger.daemon.vm_stats import VMStatsService
from banger.host.ssh import GuestTarget
from tests.support.fake_backend import Call, FakeBackend, FakeGuest
from tests.support.fake_vms import FakeVMs, fake_vms

BOOT_ID = "c372eded-75e3-41ce-85a4-3f1fba960c6e"


def guest_answer(sessions: int) -> bytes:
    procs = "".join(f"{20 + i} 10 -\n" for i in range(sessions))
    return ("@load\n0.50 0.25 0.10 1/80 312\n@mem\nMemTotal: 1000 kB\nMemAvailable: 600 kB\n"
            f"@uptime\n12.00 20.00\n@boot\n{BOOT_ID}\n@df\n"
            "Filesystem 1024-blocks Used Available Capacity Mounted on\n"
            "/dev/vdb 2000 1000 1000 50% /root\n"
            f"@procs 99 98\n10 1 s\n99 10 -\n{procs}").encode()


class AnsweringGuest(FakeGuest):
    """A fake guest whose answer to a read is ``answer`` (None: it does not answer)."""

    def __init__(self, backend: FakeBackend) -> None:
        super().__init__(backend)
        self.answer: bytes | None = guest_answer(0)

    async def read(self, target: GuestTarget, command: Sequence[str], *, limit: int,
                   timeout: float) -> bytes:
        self.calls.append(Call("guest_read", None, ()))
        if self.answer is None:
            raise GuestError(f"SSH on {target.host}:{target.port}: connection refused")
        return self.answer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[FakeVMs]:
    with fake_vms(tmp_path) as made:
        made.guest = made.service.rt.guest = AnsweringGuest(made.backend)
        yield made


def booted(vms: FakeVMs, *names: str) -> None:
    async def create() -> None:
        for name in names:
            assert (await vms.create(name)).state == "succeeded"

    vms.drive(create)


def guest(vms: FakeVMs) -> AnsweringGuest:
    assert isinstance(vms.guest, AnsweringGuest)
    return vms.guest


def test_stats_of_a_running_vm_read_its_vmm_and_its_guest(vms: FakeVMs) -> None:
    booted(vms, "box")
    stats = vms.drive(lambda: VMStatsService(vms.service.rt).stats("box"))
    assert stats.state == "running" and stats.guest_error is None
    assert stats.host.cpu_percent is not None and stats.host.cpu_percent >= 0
    assert stats.host.rss_bytes and stats.host.rss_bytes > 0  # the fake VMM's sleep
    assert stats.host.disk_bytes > 0 and stats.host.tap_rx_bytes is None  # user-mode net
    assert stats.guest is not None and stats.guest.mem_used_bytes == 400 * 1024
    assert [d.mount for d in stats.guest.disks] == ["/root"] and stats.guest.ssh_sessions == 0


def test_stats_of_a_silent_guest_and_of_a_stopped_vm_say_why_there_is_no_guest_view(
        vms: FakeVMs) -> None:
    booted(vms, "box")
    service = VMStatsService(vms.service.rt)
    guest(vms).answer = None
    silent = vms.drive(lambda: service.stats("box"))
    assert silent.guest is None and "did not answer" in str(silent.guest_error)
    assert silent.host.rss_bytes is not None
    vms.drive(lambda: vms.run(vms.service.stop("box")))
    stopped = vms.drive(lambda: service.stats("box"))
    assert stopped.state == "stopped" and "not running" in str(stopped.guest_error)
    assert stopped.host.cpu_percent is None and stopped.host.disk_bytes > 0
    health = vms.drive(lambda: service.health("box"))
    assert not health.healthy and "not running" in str(health.error)


def test_health_of_a_hostile_answer_is_unhealthy_not_an_error(vms: FakeVMs) -> None:
    booted(vms, "box")
    service = VMStatsService(vms.service.rt)
    assert vms.drive(lambda: service.health("box")).boot_id == BOOT_ID
    guest(vms).answer = b"@uptime\nnan nan\n@boot\n\x1b]0;owned\x07\n"
    health = vms.drive(lambda: service.health("box"))
    assert not health.healthy and health.boot_id is None and health.uptime_seconds is None


def test_top_reserves_only_running_vms_and_fills_guest_figures_in_the_background(
        vms: FakeVMs) -> None:
    booted(vms, "one", "two")
    vms.drive(lambda: vms.run(vms.service.stop("two")))
    service = VMStatsService(vms.service.rt)

    async def twice() -> tuple[TopView, TopView]:
        first = await service.top()
        await asyncio.sleep(0.2)  # the background guest read lands
        return first, await service.top()

    first, second = vms.drive(twice)
    assert first.host.vcpus_reserved == 1 and first.host.memory_mib_reserved == 128
    rows = {vm.name: vm for vm in second.vms}
    assert rows["one"].guest is not None and rows["one"].host.cpu_percent is not None
    assert rows["two"].guest is None and "not running" in str(rows["two"].guest_error)
    assert second.host.banger_bytes > 0
    reads = [c for c in vms.calls if c.name == "guest_read"]
    assert len(reads) == 1  # the second call used the cache: at most one read per refresh
    vms.drive(service.close)


def stopper(vms: FakeVMs, clock: Clock, after: float = 60) -> IdleStopper:
    stats = VMStatsService(vms.service.rt)
    return IdleStopper(vms.service, stats, vms.registry, after, clock=clock)


def sweep(vms: FakeVMs, idle: IdleStopper) -> list[str]:
    async def once() -> list[str]:
        begun = await idle.sweep()
        for op in vms.registry.list():
            await vms.registry.join(op.id)
        return begun

    return vms.drive(once)


def test_auto_stop_stops_an_unused_vm_through_the_stop_verb_and_says_why(
        vms: FakeVMs) -> None:
    booted(vms, "box", "busy")
    clock = Clock()
    clock.now = vms.vm("box").started_at.timestamp() + 1  # type: ignore[union-attr]
    idle = stopper(vms, clock)
    assert sweep(vms, idle) == []
    assert Call("guest_read") not in vms.calls  # not due: the guest was not even asked
    clock.now += 30
    idle.touch("busy")  # `banger vm ssh busy` at minute 0.5
    clock.now += 45
    vms.transitions.clear()
    assert sweep(vms, idle) == ["box"]
    assert vms.vm("box").state is VMState.STOPPED and vms.vm("busy").state is VMState.RUNNING
    reason = str(vms.vm("box").state_reason)
    assert reason.startswith("stopped automatically: no SSH session, banger session or CLI use")
    assert vms.path("box") == [(VMState.RUNNING, VMState.STOPPING, reason),
                               (VMState.STOPPING, VMState.STOPPED, reason)]
    assert Call("poweroff", vms.vm("box").id) in vms.calls  # graceful: the guest was asked


def test_auto_stop_waits_while_an_ssh_session_runs_and_for_the_setting_after_it(
        vms: FakeVMs) -> None:
    booted(vms, "box")
    clock = Clock()
    clock.now = vms.vm("box").started_at.timestamp() + 120  # type: ignore[union-attr]
    idle = stopper(vms, clock)
    idle.started = clock.now - 120
    guest(vms).answer = guest_answer(sessions=1)
    assert sweep(vms, idle) == []
    guest(vms).answer = guest_answer(sessions=0)
    clock.now += 30  # the session ended within the last 30 s: too recent
    assert sweep(vms, idle) == [] and vms.vm("box").state is VMState.RUNNING
    clock.now += 31
    assert sweep(vms, idle) == ["box"] and vms.vm("box").state is VMState.STOPPED


def test_auto_stop_leaves_a_silent_guest_running(vms: FakeVMs) -> None:
    booted(vms, "box")
    clock = Clock()
    clock.now = vms.vm("box").started_at.timestamp() + 3600  # type: ignore[union-attr]
    idle = stopper(vms, clock)
    idle.started = 0
    guest(vms).answer = None
    assert sweep(vms, idle) == [] and vms.vm("box").state is VMState.RUNNING


def test_a_request_between_the_look_and_the_stop_keeps_the_vm_running(vms: FakeVMs) -> None:
    booted(vms, "box")
    clock = Clock()
    clock.now = vms.vm("box").started_at.timestamp() + 3600  # type: ignore[union-attr]
    idle = stopper(vms, clock)
    idle.started = 0

    async def raced() -> None:
        async with vms.service.rt.locked("box"):  # a verb holds the VM while the sweep looks
            assert await idle.sweep() == ["box"]
            idle.touch("box")  # ... and a request names it before the stop gets the lock
        for op in vms.registry.list():
            await vms.registry.join(op.id)

    vms.drive(raced)
    assert vms.vm("box").state is VMState.RUNNING
