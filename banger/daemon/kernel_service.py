"""Kernels: the catalog, pulls and imports as operations, and the store rows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from banger.api.models import CatalogKernel, KernelImportRequest, KernelInfo
from banger.core.errors import Conflict, InvalidInput
from banger.core.manifests import KernelManifest
from banger.core.validate import validate_name, validate_new_name
from banger.daemon.background import Listeners
from banger.daemon.operations import OperationContext, Work
from banger.kernels import catalog
from banger.kernels.importer import delete_kernel, import_kernel, pull_kernel
from banger.store.db import Store
from banger.store.records import KernelRecord

DEFAULT_KERNEL = "debian-cloud"


def kernel_info(record: KernelRecord) -> KernelInfo:
    return KernelInfo(
        name=record.name,
        version=record.version,
        source=record.source,
        path=str(record.path),
        is_default=record.is_default,
        created_at=record.created_at,
        manifest=record.manifest,
    )


class KernelService:
    def __init__(self, store: Store, kernels_dir: Path, cache_dir: Path) -> None:
        self.store = store
        self.kernels_dir = kernels_dir
        self.cache_dir = cache_dir
        self._deletes = Listeners("a kernel deleted")

    def on_delete(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) after a kernel is deleted."""
        self._deletes.add(listener)

    def catalog(self) -> list[CatalogKernel]:
        stored = {k.name for k in self.store.kernels.list()}
        return [
            CatalogKernel(
                name=e.name, description=e.description, package=e.package, pulled=e.name in stored
            )
            for e in catalog.CATALOG.values()
        ]

    def _register(self, manifest: KernelManifest) -> KernelRecord:
        """Record a stored kernel; the first one becomes the default."""
        existing = self.store.kernels.find(manifest.name)
        if existing is not None:
            return existing
        record = self.store.kernels.add(
            KernelRecord(
                name=manifest.name,
                version=manifest.version,
                source=manifest.source,
                path=manifest.path,
                manifest=manifest,
            )
        )
        if self.store.kernels.get_default() is None:
            record = self.store.kernels.set_default(record.name)
        return record

    async def _pull(self, ctx: OperationContext, name: str) -> KernelRecord:
        manifest = await ctx.in_thread(
            "pull", pull_kernel, name, self.kernels_dir, self.cache_dir
        )
        with ctx.stage("register"):
            return self._register(manifest)

    def pull(self, name: str) -> Work:
        """Validate now; the returned work pulls catalog kernel ``name``."""
        validate_name(name, "kernel")
        catalog.catalog_entry(name)

        async def work(ctx: OperationContext) -> KernelInfo:
            return kernel_info(await self._pull(ctx, name))

        return work

    def import_(self, req: KernelImportRequest) -> Work:
        """Validate now; the returned work imports ``req.source`` (a dir or a .deb)."""
        name, source = req.name, Path(req.source)
        validate_new_name(name, "kernel")
        if self.store.kernels.find(name) is not None:
            raise Conflict(
                f"kernel '{name}' already exists",
                hint=f"pick another name, or delete it first: banger kernel delete {name}",
            )
        if not source.is_absolute():
            raise InvalidInput(f"kernel source {source} is not an absolute path")

        async def work(ctx: OperationContext) -> KernelInfo:
            manifest = await ctx.in_thread(
                "import", import_kernel, name, source, self.kernels_dir
            )
            with ctx.stage("register"):
                return kernel_info(self._register(manifest))

        return work

    async def ensure_default(self, ctx: OperationContext) -> KernelRecord:
        """The default kernel, pulling the catalog's default on first use."""
        record = self.store.kernels.get_default()
        if record is not None:
            return record
        return await self._pull(ctx, DEFAULT_KERNEL)

    async def delete(self, name: str) -> None:
        """Forget the kernel, then remove its files in a worker thread (it may wait for a lock)."""
        record = self.store.kernels.get(name)
        self.store.kernels.delete(record.name)  # refuses while an image or VM refers to it
        self._deletes.notify()  # e.g. the warm snapshots it booted are stale now
        if record.path.exists():
            await asyncio.to_thread(delete_kernel, record.name, self.kernels_dir)
