"""``vm stats``, ``vm health`` and ``top``: a VM as the host sees it and as it sees itself.

Host figures come from /proc and /sys (``host/proc.py``, ``host/usage.py``) for a VMM
proven ours (``rt.handle``); the guest's come from one fixed command over its shared
SSH connection, parsed as hostile (``core/guest_stats.py``). ``top`` asks every second:
it gets host figures only, CPU % against the previous call's sample, and guest figures
from a cache that background reads refresh at most every ``GUEST_REFRESH`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from banger.api.models import (
    GuestDisk,
    GuestUsage,
    HostUsage,
    TopHost,
    TopView,
    TopVM,
    VMHealth,
    VMStats,
)
from banger.core.errors import GuestError
from banger.core.guest_stats import HEALTH_ARGV, OUTPUT_LIMIT, STATS_ARGV, GuestView
from banger.core.guest_stats import parse_guest_view as parse
from banger.core.states import VMState
from banger.core.usage import cpu_percent
from banger.daemon.background import BackgroundTasks
from banger.daemon.vm_runtime import VMRuntime
from banger.host import proc, usage
from banger.store.records import VMRecord
from banger.vmm.base import Handle

SAMPLE_SECONDS = 0.5  # ``vm stats``: the CPU sample's length
GUEST_TIMEOUT = 10.0
GUEST_REFRESH = 3.0  # ``top``: the oldest guest figures it shows, plus one read
GUEST_READS_AT_ONCE = 8


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    usage: proc.ProcUsage


@dataclass(frozen=True)
class GuestReading:
    at: float
    view: GuestView | None
    error: str | None


def sample(handle: Handle | None) -> Sample | None:
    """CPU ticks and RSS of the VMM behind ``handle`` now, if it still runs."""
    found = proc.usage(handle.pid, handle.start_time) if handle is not None else None
    return Sample(time.monotonic(), found) if found is not None else None


def guest_usage(view: GuestView) -> GuestUsage:
    """The wire form of what the guest said."""
    return GuestUsage(
        load=list(view.load) if view.load else None, mem_total_bytes=view.mem_total_bytes,
        mem_available_bytes=view.mem_available_bytes, mem_used_bytes=view.mem_used_bytes,
        uptime_seconds=view.uptime_seconds, boot_id=view.boot_id,
        disks=[GuestDisk(mount=m, total_bytes=d.total_bytes, used_bytes=d.used_bytes,
                         available_bytes=d.available_bytes) for m, d in view.disks.items()],
        ssh_sessions=view.ssh_sessions, unparsed=view.unparsed,
    )


def not_running(vm: VMRecord) -> str:
    return f"not running (VM '{vm.name}' is {vm.state})"


class VMStatsService:
    def __init__(self, rt: VMRuntime) -> None:
        self.rt = rt
        self._samples: dict[str, Sample] = {}  # by VM id: top's previous CPU sample
        self._guest: dict[str, GuestReading] = {}  # by VM id
        self._reading: set[str] = set()
        self._gate = asyncio.Semaphore(GUEST_READS_AT_ONCE)
        self._tasks = BackgroundTasks()

    async def read_guest(self, vm: VMRecord) -> GuestView:
        """The running ``vm``'s own view of itself (GuestError when it does not answer)."""
        async with self._gate:
            output = await self.rt.guest.read(self.rt.guest_target(vm), STATS_ARGV,
                                              limit=OUTPUT_LIMIT, timeout=GUEST_TIMEOUT)
        return parse(output)

    def _handle(self, vm: VMRecord) -> Handle | None:
        """The VM's VMM if it provably runs (on the loop: this reads the store)."""
        return self.rt.handle(vm) if vm.state.active else None

    def _host(self, vm: VMRecord, before: Sample | None, after: Sample | None) -> HostUsage:
        """Host figures of ``vm``; CPU % between two samples of the same process."""
        cpu = None
        if before is not None and after is not None:
            cpu = cpu_percent(before.usage.cpu_ticks, after.usage.cpu_ticks,
                              after.at - before.at, proc.CLOCK_TICKS)
        tap = usage.tap_bytes(vm.tap_name) if vm.tap_name and after is not None else None
        return HostUsage(
            cpu_percent=cpu, rss_bytes=after.usage.rss_bytes if after else None,
            tap_rx_bytes=tap.rx_bytes if tap else None, tap_tx_bytes=tap.tx_bytes if tap else None,
            disk_bytes=usage.allocated_bytes(self.rt.files(vm).dir),
        )

    async def stats(self, ref: str) -> VMStats:
        """``vm stats``: a CPU sample of SAMPLE_SECONDS, then the guest is asked (asking it
        during the sample would count banger's own command as the guest's load)."""
        vm = self.rt.store.vms.get(ref)
        handle = self._handle(vm)
        before = sample(handle)
        if vm.state is not VMState.RUNNING:
            host = await asyncio.to_thread(self._host, vm, None, before)
            return VMStats(vm=vm.name, state=vm.state, host=host, guest_error=not_running(vm))
        await asyncio.sleep(SAMPLE_SECONDS)
        after = sample(handle)
        guest = await self._guest_reading(vm)
        host = await asyncio.to_thread(self._host, vm, before, after)
        return VMStats(vm=vm.name, state=vm.state, host=host, guest_error=guest.error,
                       guest=guest_usage(guest.view) if guest.view else None)

    async def _guest_reading(self, vm: VMRecord) -> GuestReading:
        try:
            view, error = await self.read_guest(vm), None
        except GuestError as exc:
            view, error = None, f"the guest did not answer: {exc.message}"
        return GuestReading(time.monotonic(), view, error)

    async def health(self, ref: str) -> VMHealth:
        """``vm health``: does the guest run a command over SSH, its uptime and boot id."""
        vm = self.rt.store.vms.get(ref)
        if vm.state is not VMState.RUNNING:
            return VMHealth(vm=vm.name, state=vm.state, healthy=False, error=not_running(vm))
        try:
            view = parse(await self.rt.guest.read(self.rt.guest_target(vm), HEALTH_ARGV,
                                                  limit=4096, timeout=GUEST_TIMEOUT))
        except GuestError as exc:
            return VMHealth(vm=vm.name, state=vm.state, healthy=False,
                            error=f"the guest did not answer: {exc.message}")
        healthy = view.uptime_seconds is not None and view.boot_id is not None
        return VMHealth(vm=vm.name, state=vm.state, healthy=healthy,
                        uptime_seconds=view.uptime_seconds, boot_id=view.boot_id,
                        error=None if healthy else "the guest's answer was not understood")

    async def top(self) -> TopView:
        """Everything one refresh of ``banger top`` shows, from host figures and caches."""
        vms = self.rt.store.vms.list()
        ids = {vm.id for vm in vms}
        for cache in (self._samples, self._guest):  # forget deleted VMs
            for gone in cache.keys() - ids:
                del cache[gone]
        for vm in vms:
            self._refresh_guest(vm)
        handles = [self._handle(vm) for vm in vms]
        rows, room, banger = await asyncio.to_thread(self._top_host, vms, handles)
        running = [vm for vm in vms if vm.state is VMState.RUNNING]
        host = TopHost(
            cpus=room.cpus, memory_mib=room.memory_mib,
            vcpus_reserved=sum(vm.vcpu for vm in running),
            memory_mib_reserved=sum(vm.memory_mib for vm in running),
            fs_total_bytes=room.fs_total_bytes, fs_free_bytes=room.fs_free_bytes,
            banger_bytes=banger,
        )
        return TopView(host=host, vms=[self._top_vm(vm, row) for vm, row in zip(vms, rows,
                                                                               strict=True)])

    def _top_host(self, vms: list[VMRecord], handles: list[Handle | None],
                  ) -> tuple[list[HostUsage], usage.HostRoom, int]:
        """Host figures of every VM (CPU % since the last call), the host's room, banger's
        bytes (in a thread: it walks directories)."""
        rows = []
        for vm, handle in zip(vms, handles, strict=True):
            after = sample(handle)
            rows.append(self._host(vm, self._samples.get(vm.id), after))
            if after is None:
                self._samples.pop(vm.id, None)
            else:
                self._samples[vm.id] = after
        paths = self.rt.paths
        return rows, usage.host_room(paths.state_dir), usage.allocated_bytes(paths.state_dir)

    def _top_vm(self, vm: VMRecord, host: HostUsage) -> TopVM:
        reading = self._guest.get(vm.id) if vm.state is VMState.RUNNING else None
        error = reading.error if reading else None
        if vm.state is not VMState.RUNNING:
            error = not_running(vm)
        return TopVM(name=vm.name, state=vm.state, vcpu=vm.vcpu, memory_mib=vm.memory_mib,
                     started_at=vm.started_at, host=host, guest_error=error,
                     guest=guest_usage(reading.view) if reading and reading.view else None)

    def _refresh_guest(self, vm: VMRecord) -> None:
        """Start a background read of ``vm``'s guest when its cached one is too old."""
        if vm.state is not VMState.RUNNING:
            self._guest.pop(vm.id, None)
            return
        cached = self._guest.get(vm.id)
        if vm.id in self._reading or (cached and time.monotonic() - cached.at < GUEST_REFRESH):
            return
        self._reading.add(vm.id)

        async def read() -> None:
            try:
                self._guest[vm.id] = await self._guest_reading(vm)
            finally:
                self._reading.discard(vm.id)

        self._tasks.spawn(read(), name=f"guest stats {vm.name}")

    async def close(self) -> None:
        """Daemon shutdown: cancel the guest reads still running."""
        await self._tasks.aclose()
