"""Auto-stop (``auto_stop_stale_after``): stop running VMs nobody uses, gracefully.

Use is: an API request naming the VM (``touch``, from the request middleware; ``vm
stats`` and ``vm health`` do not count, so a monitor polling them does not keep a VM
up), and a guest with an SSH session (``core/guest_stats.py``: a shell or command of
any SSH connection). Every ``interval`` the sweep looks at the running VMs whose last
use is older than the setting, and at those that had a session at its last look, and
asks those guests (one command each, concurrently); a VM with no session is stopped
through the stop verb as an operation, whose reason (``core/idle.py``) ``vm show``
gives. A guest that does not answer is left running (logged): its sessions are unknown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from banger.core.errors import GuestError
from banger.core.idle import idle_verdict
from banger.core.states import VMState
from banger.core.validate import NAME_RE
from banger.daemon.operations import OperationRegistry
from banger.daemon.vm_service import VMService
from banger.daemon.vm_stats import VMStatsService
from banger.store.records import VMRecord

log = structlog.get_logger("banger.daemon.vm_idle")

NOT_USE = frozenset({"stats", "health"})  # requests that only look


def sweep_interval(after: float) -> float:
    """How often to look: a tenth of the setting, from 1 s to 1 min."""
    return min(60.0, max(1.0, after / 10))


def named_vm(path: str) -> str | None:
    """The VM a request path names as use (``/v1/vms/REF[/...]``), or None."""
    parts = path.split("/")
    if len(parts) < 4 or parts[1:3] != ["v1", "vms"] or not NAME_RE.fullmatch(parts[3]):
        return None
    return None if len(parts) > 4 and parts[4] in NOT_USE else parts[3]


class IdleStopper:
    def __init__(self, vms: VMService, stats: VMStatsService, operations: OperationRegistry,
                 after: float | None, clock: Callable[[], float] = time.time,
                 banger_sessions: Callable[[VMRecord], Awaitable[int]] | None = None) -> None:
        self.vms = vms
        self.stats = stats
        self.banger_sessions = banger_sessions
        self.operations = operations
        self.after = after
        self.clock = clock
        self.started = clock()
        self._used: dict[str, float] = {}  # by the name or id a request used, or by VM id
        self._busy: set[str] = set()  # VM ids that had a session at the last look

    def touch(self, ref: str) -> None:
        """A request named ``ref`` (a VM's name or id): that VM is in use now."""
        self._used[ref] = self.clock()

    def last_use(self, vm: VMRecord) -> float:
        """The latest of its start, the daemon's start, requests naming it, sessions seen."""
        started = vm.started_at.timestamp() if vm.started_at else 0.0
        return max(self.started, started, *(self._used.get(k, 0.0) for k in (vm.name, vm.id)))

    async def sessions(self, vm: VMRecord) -> int | None:
        """How many SSH and running banger sessions ``vm`` has now (None: its guest did not say)."""
        try:
            ssh = (await self.stats.read_guest(vm)).ssh_sessions
            ours = await self.banger_sessions(vm) if self.banger_sessions is not None else 0
        except GuestError as exc:
            log.warning("auto-stop: the guest did not answer; leaving it running",
                        vm=vm.name, error=exc.message)
            return None
        return None if ssh is None else ssh + ours

    async def sweep(self) -> list[str]:
        """One look at every running VM; the names of those whose stop was begun."""
        assert self.after is not None
        now = self.clock()
        for ref, when in list(self._used.items()):  # too old to keep any VM up
            if now - when >= self.after:
                del self._used[ref]
        running = [vm for vm in self.vms.rt.store.vms.list() if vm.state is VMState.RUNNING]
        self._busy &= {vm.id for vm in running}
        due = [vm for vm in running
               if vm.id in self._busy or now - self.last_use(vm) >= self.after]
        counts = await asyncio.gather(*(self.sessions(vm) for vm in due))
        stopping = []
        for vm, sessions in zip(due, counts, strict=True):
            if sessions:
                self._used[vm.id] = self.clock()
                self._busy.add(vm.id)
                continue
            self._busy.discard(vm.id)
            why = idle_verdict(now=self.clock(), last_use=self.last_use(vm), sessions=sessions,
                               after=self.after)
            if why is not None:
                log.info("auto-stop: stopping an unused VM", vm=vm.name, reason=why)
                self.operations.begin("vm.stop", self.vms.stop_idle(vm.id, self._still_idle),
                                      target=vm.name)
                stopping.append(vm.name)
        return stopping

    def _still_idle(self, vm: VMRecord) -> str | None:
        """The reason again under the VM's lock: a request may have come since the look."""
        assert self.after is not None
        return idle_verdict(now=self.clock(), last_use=self.last_use(vm), sessions=0,
                            after=self.after)

    async def run_forever(self) -> None:
        """Sweep every ``sweep_interval``; a failed sweep is logged, the next one runs."""
        assert self.after is not None
        while True:
            await asyncio.sleep(sweep_interval(self.after))
            try:
                await self.sweep()
            except Exception:
                log.exception("auto-stop sweep failed")
