"""Warm snapshots' life beside the requests (docs/snapshots.md, "Lifecycle").

- After a cold ``vm create`` of a shape that could have a snapshot and has
  none, the snapshot is made in the background (``snapshot_on_cold_create``):
  once no create is in flight (or after 30 s of them), one background build at
  a time across all shapes, the template's VMM at the lowest CPU priority, and
  none (logged) while the disk under ``snapshots/`` has less free space than
  the guest's memory plus ``DISK_RESERVE``. A failure is logged, and that key is
  not built in the background again while the daemon runs (an image whose guest
  cannot serve a template would otherwise boot one after every cold create);
  ``banger image warm`` still tries. The daemon's shutdown cancels a build (its
  ``.tmp-*`` and template go with it).
- Whenever a VM starts, stops or is deleted, snapshots stale for good that no
  VM's root is backed by any more are removed (``Snapshots.prune``: one at a
  time).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator

import structlog

from banger.api.models import OperationResult
from banger.core.errors import BangerError
from banger.daemon.background import BackgroundTasks
from banger.daemon.operations import OperationContext, Work
from banger.daemon.snapshots import Snapshots
from banger.store.records import ImageRecord

log = structlog.get_logger("banger.daemon.snapshot_keeper")

QUIET_POLL = 0.25  # seconds between looks for "no create in flight"
QUIET_MAX_WAIT = 30.0  # then it starts anyway (at nice 19): a stream of creates never ends
DISK_RESERVE = 1 << 30  # bytes a background build leaves free beyond the guest's memory


class SnapshotKeeper:
    def __init__(self, snapshots: Snapshots, *, on_cold_create: bool) -> None:
        self.snapshots = snapshots
        self.on_cold_create = on_cold_create
        self._tasks = BackgroundTasks()
        self._creates = 0
        self._pending: set[str] = set()  # key ids a background build is queued or running for
        self._failed: set[str] = set()  # key ids whose background build failed
        self._sweep_queued = False
        self._building = asyncio.Lock()  # one background build at a time, across shapes
        self._closed = False  # after aclose nothing new starts
        snapshots.rt.on_running_change(self.vm_changed)

    def counting(self, work: Work) -> Work:
        """``work`` (a create) counted as in flight while it runs."""

        async def counted(ctx: OperationContext) -> OperationResult | None:
            async with self._in_flight():
                return await work(ctx)

        return counted

    @contextlib.asynccontextmanager
    async def _in_flight(self) -> AsyncIterator[None]:
        self._creates += 1
        try:
            yield
        finally:
            self._creates -= 1

    def after_cold_create(self, image: ImageRecord, vcpu: int, memory_mib: int) -> None:
        """A VM of this shape booted cold: make its snapshot in the background if it could
        have one and none exists (nothing when ``snapshot_on_cold_create`` is off)."""
        if self.on_cold_create and not self._closed and self.snapshots.why_not(image) is None:
            self._tasks.spawn(self._make(image, vcpu, memory_mib),
                              name=f"snapshot of {image.name} {vcpu} vCPU {memory_mib} MiB")

    async def _make(self, image: ImageRecord, vcpu: int, memory_mib: int) -> None:
        snaps = self.snapshots
        try:
            kernel = snaps.rt.kernel(image)
            key = await asyncio.to_thread(snaps.key, image, kernel, vcpu, memory_mib)
        except BangerError as exc:
            log.warning("no background snapshot: no key", image=image.name, error=exc.message)
            return
        if key.id in self._pending or key.id in self._failed or snaps.find(key) is not None:
            return
        self._pending.add(key.id)
        try:
            await self._lull()
            async with self._building:
                if (why := self._no_room(memory_mib)) is not None:
                    log.warning("no background snapshot", image=image.name, why=why)
                    return
                snap_id = await snaps.warm(image, vcpu, memory_mib, background=True)
            log.info("snapshot made in the background", snapshot=snap_id, image=image.name)
        except Exception as exc:  # noqa: BLE001 - a background task: logged, never raised
            self._failed.add(key.id)
            log.warning("background snapshot failed", image=image.name, vcpu=vcpu,
                        memory_mib=memory_mib, error=getattr(exc, "message", repr(exc)),
                        hint=getattr(exc, "hint", None),
                        next_try="banger image warm (none in the background until a restart)")
        finally:
            self._pending.discard(key.id)

    def _no_room(self, memory_mib: int) -> str | None:
        """Why the disk cannot take a snapshot of a ``memory_mib`` guest now, or None."""
        root = self.snapshots.root
        where = root if root.is_dir() else root.parent
        free = shutil.disk_usage(where).free
        need = (memory_mib << 20) + DISK_RESERVE
        if free < need:
            return (f"{free >> 20} MiB free under {where}, less than the guest's "
                    f"{memory_mib} MiB and a {DISK_RESERVE >> 20} MiB reserve")
        return None

    async def _lull(self) -> None:
        """Until no create is in flight (their guests boot first), at most ``QUIET_MAX_WAIT``."""
        waited = 0.0
        while self._creates and waited < QUIET_MAX_WAIT:
            await asyncio.sleep(QUIET_POLL)
            waited += QUIET_POLL

    def vm_changed(self) -> None:
        """A VM started, stopped or went: sweep stale snapshots no VM is backed by now."""
        if not self._sweep_queued and not self._closed:
            self._sweep_queued = True
            self._tasks.spawn(self._sweep(), name="sweep stale snapshots")

    async def _sweep(self) -> None:
        self._sweep_queued = False
        await self.snapshots.prune()

    @property
    def busy(self) -> bool:
        """Whether a background build or sweep is queued or running."""
        return bool(self._tasks.running)

    async def aclose(self) -> None:
        """Daemon shutdown: cancel what runs (a build removes its ``.tmp-*`` and template);
        nothing starts afterwards."""
        self._closed = True
        await self._tasks.aclose()
