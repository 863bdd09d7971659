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
- Snapshots stale for good that no VM's root is backed by any more are removed
  (``Snapshots.prune``: one at a time) where one may have gone stale or free: at
  daemon start, after a kernel is deleted, when a lookup finds the VMM's version or
  an image's kernel changed since the last lookup (``Snapshots.on_stale``),
  after a snapshot is made or dropped (a build's lock kept an older generation), and
  when a VM lets go of its snapshot (``VMRuntime.on_snapshot_released``: deleted, or
  its disks made again on the image after a failed restore; the last clone takes a
  dropped or stale one with it). A VM's start or stop changes none of these, and
  sweeps nothing.
"""

from __future__ import annotations

import asyncio
import shutil

import structlog

from banger.core.errors import BangerError
from banger.daemon.background import BackgroundTasks, CreatesInFlight
from banger.daemon.snapshots import Snapshots
from banger.store.records import ImageRecord

log = structlog.get_logger("banger.daemon.snapshot_keeper")

QUIET_MAX_WAIT = 30.0  # then it starts anyway (at nice 19): a stream of creates never ends
DISK_RESERVE = 1 << 30  # bytes a background build leaves free beyond the guest's memory


class SnapshotKeeper:
    def __init__(self, snapshots: Snapshots, creates: CreatesInFlight, *,
                 on_cold_create: bool) -> None:
        self.snapshots = snapshots
        self.creates = creates
        self.on_cold_create = on_cold_create
        self._tasks = BackgroundTasks()
        self._pending: set[str] = set()  # key ids a background build is queued or running for
        self._failed: set[str] = set()  # key ids whose background build failed
        self._sweep_queued = False
        self._building = asyncio.Lock()  # one background build at a time, across shapes
        self._closed = False  # after aclose nothing new starts
        snapshots.on_stale(self.sweep_soon)
        snapshots.on_change(self.sweep_soon)  # a build's lock held back an older generation
        snapshots.rt.on_snapshot_released(self.sweep_soon)

    def after_cold_create(self, image: ImageRecord, vcpu: int, memory_mib: int) -> None:
        """A VM of this shape booted cold: make its snapshot in the background if it could
        have one and none exists (nothing when ``snapshot_on_cold_create`` is off)."""
        if self.on_cold_create and not self._closed:
            self._tasks.spawn(self._make(image, vcpu, memory_mib),
                              name=f"snapshot of {image.name} {vcpu} vCPU {memory_mib} MiB")

    async def _make(self, image: ImageRecord, vcpu: int, memory_mib: int) -> None:
        snaps = self.snapshots
        try:
            found = await snaps.lookup(image, vcpu, memory_mib)
        except BangerError as exc:
            log.warning("no background snapshot: no key", image=image.name, error=exc.message)
            return
        if isinstance(found, str) or found.path is not None:  # it cannot have one, or has
            return
        key = found.key
        if key.id in self._pending or key.id in self._failed:
            return
        self._pending.add(key.id)
        try:
            await self.creates.lull(QUIET_MAX_WAIT)  # the creates' own guests boot first
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

    def sweep_soon(self) -> None:
        """Something may have made snapshots stale or freed one: sweep in the background
        (one queued at a time)."""
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
