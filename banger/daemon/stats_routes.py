"""``vm stats``, ``vm health`` and ``top``: reads that answer at once (docs/vms.md)."""

from __future__ import annotations

from banger.api.models import TopView, VMHealth, VMStats
from banger.daemon.routes import DaemonDep, Ref, api_router

router = api_router("stats")


@router.get("/vms/{ref}/stats", response_model=VMStats)
async def vm_stats(ref: Ref, daemon: DaemonDep) -> VMStats:
    """The VMM's CPU % (over half a second), RSS, TAP bytes and files; the guest's view."""
    return await daemon.stats.stats(ref)


@router.get("/vms/{ref}/health", response_model=VMHealth)
async def vm_health(ref: Ref, daemon: DaemonDep) -> VMHealth:
    """Whether the guest runs a command over SSH; its uptime and boot id."""
    return await daemon.stats.health(ref)


@router.get("/top", response_model=TopView)
async def top(daemon: DaemonDep) -> TopView:
    """One refresh of ``banger top``: every VM's host figures, cached guest figures, capacity."""
    return await daemon.stats.top()
