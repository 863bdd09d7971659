"""``/v1/kernels`` and ``/v1/images``: list/show/delete answer at once; the rest are operations."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request

from banger.api.models import (
    CachePruneRequest,
    CachePruneResult,
    ImageBuildRequest,
    ImageImportRequest,
    ImageInfo,
    ImageList,
    ImagePullRequest,
    ImageWarmRequest,
    KernelCatalog,
    KernelImportRequest,
    KernelInfo,
    KernelList,
    Operation,
    SnapshotInfo,
    SnapshotList,
)
from banger.core.validate import validate_memory_mib, validate_vcpu
from banger.daemon.image_service import image_info
from banger.daemon.kernel_service import kernel_info
from banger.daemon.operations import OperationContext
from banger.daemon.routes import DaemonDep, Ref, api_router, request_op_id

router = api_router("images and kernels")


# Not under /kernels/: GET /kernels/{name} must reach a kernel named "catalog" too.
@router.get("/kernel-catalog", response_model=KernelCatalog)
async def kernel_catalog(daemon: DaemonDep) -> KernelCatalog:
    return KernelCatalog(kernels=daemon.kernels.catalog())


@router.get("/kernels", response_model=KernelList)
async def list_kernels(daemon: DaemonDep) -> KernelList:
    return KernelList(kernels=[kernel_info(k) for k in daemon.store.kernels.list()])


@router.get("/kernels/{name}", response_model=KernelInfo)
async def show_kernel(name: Ref, daemon: DaemonDep) -> KernelInfo:
    return kernel_info(daemon.store.kernels.get(name))


@router.delete("/kernels/{name}", status_code=204)
async def delete_kernel(name: Ref, daemon: DaemonDep) -> None:
    await daemon.kernels.delete(name)


@router.post("/kernels/{name}/pull", response_model=Operation, status_code=202)
async def pull_kernel(name: Ref, daemon: DaemonDep, request: Request) -> Operation:
    work = daemon.kernels.pull(name)
    return daemon.operations.begin("kernel.pull", work, target=name, op_id=request_op_id(request))


@router.post("/kernels/import", response_model=Operation, status_code=202)
async def import_kernel(
    body: KernelImportRequest, daemon: DaemonDep, request: Request
) -> Operation:
    work = daemon.kernels.import_(body)
    return daemon.operations.begin(
        "kernel.import", work, target=body.name, op_id=request_op_id(request)
    )


@router.get("/images", response_model=ImageList)
async def list_images(daemon: DaemonDep) -> ImageList:
    return ImageList(images=[image_info(i) for i in daemon.store.images.list()])


@router.post("/images/build", response_model=Operation, status_code=202)
async def build_image(body: ImageBuildRequest, daemon: DaemonDep, request: Request) -> Operation:
    work = daemon.images.build(body)
    return daemon.operations.begin(
        "image.build", work, target=body.name, op_id=request_op_id(request)
    )


@router.post("/images/pull", response_model=Operation, status_code=202)
async def pull_image(body: ImagePullRequest, daemon: DaemonDep, request: Request) -> Operation:
    work = daemon.images.pull(body)
    return daemon.operations.begin(
        "image.pull", work, target=body.ref, op_id=request_op_id(request)
    )


@router.post("/images/import", response_model=Operation, status_code=202)
async def import_image(body: ImageImportRequest, daemon: DaemonDep, request: Request) -> Operation:
    work = daemon.images.import_(body)
    return daemon.operations.begin(
        "image.import", work, target=body.path, op_id=request_op_id(request)
    )


@router.post("/images/cache/prune", response_model=CachePruneResult)
async def prune_cache(body: CachePruneRequest, daemon: DaemonDep) -> CachePruneResult:
    freed, blobs = await daemon.images.prune_cache(dry_run=body.dry_run)
    stale = await daemon.creator.snapshots.prune(dry_run=body.dry_run)
    return CachePruneResult(bytes=freed, blobs=blobs, dry_run=body.dry_run, snapshots=len(stale))


@router.get("/snapshots", response_model=SnapshotList)
async def list_snapshots(daemon: DaemonDep) -> SnapshotList:
    metas = await asyncio.to_thread(daemon.creator.snapshots.all)
    return SnapshotList(snapshots=[snapshot_info(m) for m in metas])


@router.post("/images/{ref}/warm", response_model=Operation, status_code=202)
async def warm_image(ref: Ref, body: ImageWarmRequest, daemon: DaemonDep,
                     request: Request) -> Operation:
    image = daemon.store.images.get(ref)
    settings = daemon.settings
    vcpu = validate_vcpu(body.vcpu if body.vcpu is not None else settings.default_vcpu)
    memory = validate_memory_mib(
        body.memory_mib if body.memory_mib is not None else settings.default_memory_mib)

    async def work(ctx: OperationContext) -> SnapshotInfo:
        with ctx.stage("warm"):
            snap_id = await daemon.creator.snapshots.warm(image, vcpu, memory)
        metas = await asyncio.to_thread(daemon.creator.snapshots.all)
        return snapshot_info(next(m for m in metas if m["id"] == snap_id))

    return daemon.operations.begin("image.warm", work, target=image.name,
                                   op_id=request_op_id(request))


def snapshot_info(meta: dict[str, Any]) -> SnapshotInfo:
    key = meta["key"]
    return SnapshotInfo(id=meta["id"], image_name=meta.get("image_name"), vcpu=key["vcpu"],
                        memory_mib=key["memory_mib"], state_bytes=meta.get("state_bytes", 0),
                        save_seconds=meta.get("save_seconds"), current=meta["stale"] is None,
                        stale=meta["stale"])


@router.get("/images/{ref}", response_model=ImageInfo)
async def show_image(ref: Ref, daemon: DaemonDep) -> ImageInfo:
    return image_info(daemon.store.images.get(ref))


@router.delete("/images/{ref}", response_model=ImageInfo)
async def delete_image(ref: Ref, daemon: DaemonDep) -> ImageInfo:
    return image_info(await daemon.images.delete(ref))


@router.post("/images/{ref}/promote", response_model=ImageInfo)
async def promote_image(ref: Ref, daemon: DaemonDep) -> ImageInfo:
    return image_info(daemon.store.images.set_default(ref))
