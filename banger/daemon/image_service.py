"""Images: builds, OCI pulls and imports as operations, and the store rows."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

from banger.api.models import ImageBuildRequest, ImageImportRequest, ImageInfo, ImagePullRequest
from banger.core.errors import Conflict, InvalidInput, NotFound
from banger.core.manifests import ImageManifest
from banger.core.validate import parse_size, validate_new_name
from banger.daemon.kernel_service import KernelService
from banger.daemon.operations import OperationContext, Work
from banger.host.files import remove_tree
from banger.images.build import build_image, parse_source, validate_package_names
from banger.images.importer import import_image, pull_image
from banger.images.oci import parse_reference, prune_blob_cache
from banger.store.db import Store
from banger.store.records import ImageRecord


def image_info(record: ImageRecord) -> ImageInfo:
    return ImageInfo(
        id=record.id,
        name=record.name,
        source=record.source,
        path=str(record.path),
        kernel_name=record.kernel_name,
        is_default=record.is_default,
        size_bytes=record.size_bytes,
        created_at=record.created_at,
        manifest=record.manifest,
    )


def name_from_source(source: str) -> str:
    """``debian:bookworm`` -> ``debian-bookworm``; an OCI ref's last component and tag."""
    last = source.rsplit("/", 1)[-1].split("@", 1)[0]
    slug = re.sub(r"[^a-z0-9]+", "-", last.lower()).strip("-")
    return slug[:63].strip("-") or "image"


class ImageService:
    def __init__(
        self, store: Store, kernels: KernelService, images_dir: Path, cache_dir: Path
    ) -> None:
        self.store = store
        self.kernels = kernels
        self.images_dir = images_dir
        self.cache_dir = cache_dir
        self._on_delete: list[Callable[[str], object]] = []

    def on_delete(self, listener: Callable[[str], object]) -> None:
        """Call ``listener(image_id)`` (in a worker thread) after an image is deleted."""
        self._on_delete.append(listener)

    def _ensure_name_free(self, name: str) -> None:
        validate_new_name(name, "image")
        if self.store.images.find(name) is not None:
            raise Conflict(
                f"image '{name}' already exists",
                hint=f"pick another with --name, or delete it first: banger image delete {name}",
            )

    async def _register(self, manifest: ImageManifest) -> ImageRecord:
        """Record a finished image dir; the first image becomes the default."""
        path = self.images_dir / manifest.id
        try:
            record = self.store.images.add(
                ImageRecord(
                    id=manifest.id,
                    name=manifest.name,
                    source=manifest.source,
                    path=path,
                    kernel_name=manifest.kernel_name,
                    size_bytes=manifest.rootfs_bytes + manifest.work_seed_bytes,
                    manifest=manifest,
                )
            )
        except BaseException:
            await asyncio.to_thread(remove_tree, path)  # lost a race for the name: leave nothing
            raise
        if self.store.images.get_default() is None:
            record = self.store.images.set_default(record.id)
        return record

    def _produce(
        self, stage: str, func: Callable[..., ImageManifest], *args: object, **kwargs: object
    ) -> Work:
        async def work(ctx: OperationContext) -> ImageInfo:
            kernel = await self.kernels.ensure_default(ctx)
            manifest = await ctx.in_thread(
                stage, func, *args, images_dir=self.images_dir, kernel_name=kernel.name, **kwargs
            )
            with ctx.stage("register"):
                return image_info(await self._register(manifest))

        return work

    def build(self, req: ImageBuildRequest) -> Work:
        """Validate now; the returned work builds a golden image with mmdebstrap."""
        parse_source(req.source)
        validate_package_names(req.packages)
        name = req.name or name_from_source(req.source)
        self._ensure_name_free(name)
        size_bytes = parse_size(req.size) if req.size else None
        return self._produce(
            "build", build_image, name, source=req.source, packages=req.packages,
            size_bytes=size_bytes,
        )

    def pull(self, req: ImagePullRequest) -> Work:
        """Validate now; the returned work pulls ``req.ref`` from its OCI registry."""
        parsed = parse_reference(req.ref)
        name = req.name or name_from_source(str(parsed))
        self._ensure_name_free(name)
        return self._produce("pull", pull_image, req.ref, cache_dir=self.cache_dir, name=name)

    def import_(self, req: ImageImportRequest) -> Work:
        """Validate now; the returned work imports a tar, OCI layout or ext4 file."""
        path = Path(req.path)
        if not path.is_absolute():
            raise InvalidInput(f"image path {path} is not an absolute path")
        if not path.exists():
            raise NotFound(f"{path} does not exist", hint="pass an existing file or directory")
        name = req.name or name_from_source(path.name.split(".", 1)[0])
        self._ensure_name_free(name)
        return self._produce("import", import_image, path, name=name)

    async def delete(self, ref: str) -> ImageRecord:
        """Forget the image, then remove its files in a worker thread (never on the loop)."""
        record = self.store.images.delete(ref)  # refuses while a VM uses it
        await asyncio.to_thread(remove_tree, record.path)
        for listener in self._on_delete:  # e.g. its warm snapshots go too
            await asyncio.to_thread(listener, record.id)
        return record

    async def prune_cache(self, *, dry_run: bool) -> tuple[int, int]:
        """Delete the OCI blob cache; waiting for a running pull's lock happens in a thread."""
        return await asyncio.to_thread(prune_blob_cache, self.cache_dir, dry_run=dry_run)
