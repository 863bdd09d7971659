"""``vm create``: validate everything up front, then reserve -> disks -> network -> boot -> ssh.

Every stage that acquires something registers its undo; a failure (or a
cancel) unwinds them in reverse, and the row is the last thing to go. A row
still in state ``creating`` after a daemon crash is removed by reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

from banger.api.models import ImageBuildRequest, ImageInfo, VMCreateRequest, VMInfo
from banger.core.cancel import to_thread_joined
from banger.core.errors import Conflict, GuestError, HostToolError, InvalidInput, SnapshotDamaged
from banger.core.names import generate_vm_name, new_id
from banger.core.publish import PortMap, PublishedPort, parse_publish_list
from banger.core.states import VMState
from banger.core.validate import (
    format_size,
    parse_size,
    validate_memory_mib,
    validate_new_name,
    validate_vcpu,
)
from banger.core.vmspec import DiskFormat
from banger.daemon.background import CreatesInFlight
from banger.daemon.image_service import ImageService
from banger.daemon.operations import OperationContext, Work
from banger.daemon.snapshot_keeper import SnapshotKeeper
from banger.daemon.snapshots import ROOT as SNAPSHOT_ROOT
from banger.daemon.snapshots import Snapshots
from banger.daemon.vm_layout import VMFiles
from banger.daemon.vm_pool import WarmPool
from banger.daemon.vm_service import VMService, check_host_room
from banger.daemon.workspace_service import WorkspaceService
from banger.host import disks, ssh
from banger.host.git_identity import guest_gitconfig, host_git_identity
from banger.host.net import allocate_mac
from banger.images.manifest import ROOTFS_NAME, WORK_SEED_NAME
from banger.store.records import ImageRecord, VMRecord


@dataclass(frozen=True)
class CreatePlan:
    name: str
    vcpu: int
    memory_mib: int
    disk_bytes: int
    image: ImageRecord | None  # None: build the default image first (first use)
    start: bool
    nat: bool = False
    ports: tuple[PublishedPort, ...] = ()
    cold: bool = False


def _check_seed_fits(image: ImageRecord, disk_bytes: int) -> None:
    """The work disk starts as a copy of the image's work seed, so it cannot be smaller."""
    seed = image.path / WORK_SEED_NAME
    seed_bytes = seed.stat().st_size if seed.is_file() else 0
    if disk_bytes < seed_bytes:
        raise InvalidInput(
            f"--disk {format_size(disk_bytes)} is smaller than the work seed of image "
            f"'{image.name}' ({format_size(seed_bytes)})",
            hint=f"ask for --disk {format_size(seed_bytes)} or more",
        )


class VMCreator:
    def __init__(self, vms: VMService, images: ImageService,
                 workspaces: WorkspaceService) -> None:
        self.rt = vms.rt
        self.workspaces = workspaces
        self.booter = vms.booter
        self.watcher = vms.watcher
        self.images = images
        self.store = vms.rt.store
        self.settings = vms.rt.settings
        self.snapshots = Snapshots(vms.rt)
        self.creates = CreatesInFlight()  # background builds and pool fills wait for none
        self.keeper = SnapshotKeeper(self.snapshots, self.creates,
                                     on_cold_create=vms.rt.settings.snapshot_on_cold_create)
        images.on_delete(self.snapshots.forget_image)
        images.kernels.on_delete(self.keeper.sweep_soon)
        self.pool = WarmPool(vms.rt, vms.booter, self.snapshots, self.creates, self._make_disks)

    def plan(self, req: VMCreateRequest) -> CreatePlan:
        """Validate the request against the store and the host; nothing is created."""
        taken = {vm.name for vm in self.store.vms.list()}
        if req.name is None:
            name = generate_vm_name(taken)
        else:
            name = validate_new_name(req.name, "VM")
        if name in taken:
            raise Conflict(
                f"VM '{name}' already exists",
                hint=f"pick another --name, or delete it: banger vm delete {name}",
            )
        if req.image is not None:
            image: ImageRecord | None = self.store.images.get(req.image)
        else:
            image = self.store.images.get_default()
            if image is None and self.store.images.list():
                raise Conflict("no default image", hint="pick one: banger image promote NAME")
        plan = CreatePlan(
            name=name,
            vcpu=validate_vcpu(req.vcpu if req.vcpu is not None else self.settings.default_vcpu),
            memory_mib=validate_memory_mib(
                req.memory_mib if req.memory_mib is not None else self.settings.default_memory_mib
            ),
            disk_bytes=parse_size(
                req.disk if req.disk is not None else self.settings.default_disk, "disk"
            ),
            image=image,
            start=req.start,
            nat=req.nat,
            ports=parse_publish_list(req.publish),
            cold=req.cold,
        )
        if plan.nat:
            self.rt.network.nat.check_available()
        self.rt.network.check_ports_free(plan.ports)
        if image is not None:
            _check_seed_fits(image, plan.disk_bytes)
        check_host_room(
            self.settings.paths.state_dir,
            vcpu=plan.vcpu, memory_mib=plan.memory_mib, disk_bytes=plan.disk_bytes,
        )
        return plan

    async def create(self, req: VMCreateRequest) -> tuple[CreatePlan, Work]:
        plan = self.plan(req)
        workspace = None
        if req.workspace is not None:
            if not req.start:
                raise InvalidInput("a workspace needs a running VM",
                                   hint="drop --no-start, or prepare it after: banger vm "
                                   "workspace prepare VM PATH")
            workspace = await self.workspaces.plan(req.workspace)
        # Before any reservation: a bridge another daemon owns is refused here, as the
        # create's own error, and its subnet's addresses are never handed out twice.
        await self.rt.network.claim_bridge()

        async def work(ctx: OperationContext) -> VMInfo:
            image = plan.image or await self._default_image(ctx)
            member = await self.pool.take(plan, image)
            vm_id = member.vm.id if member is not None else new_id()
            async with (self.rt.lock(vm_id),
                        contextlib.AsyncExitStack() as undo,
                        contextlib.AsyncExitStack() as scratch):
                if member is not None:
                    undo.push_async_callback(self.pool.discard, member)
                with ctx.stage("reserve"):
                    vm = self._add_row(vm_id, plan, image)
                    undo.push_async_callback(self.watcher.destroy, vm)
                    if member is None:
                        self.rt.network.allocate_ip(vm.id)
                    else:
                        vm = self.pool.hand_over(vm, member)
                if member is not None and (started := await self.pool.claim(ctx, vm, member)):
                    await self.rt.network.open_rules(started)
                    await self.booter.sync_running(ctx, started)  # as a start's, over SSH
                    if workspace is not None:  # its work disk is the guest's /root already
                        staged, where = await scratch.enter_async_context(
                            self.workspaces.staged(ctx, workspace))
                        copied = await self.workspaces.copy_over_ssh(ctx, started, staged, where)
                        started = self.workspaces.record(started, staged, copied)
                    undo.pop_all()
                    return self.rt.info(started)
                snapshot, cold_why = await self._pick_snapshot(plan, image)
                if snapshot is not None:  # before a disk is based on it (prune, invalidate)
                    self.store.vms.update(vm.id, snapshot_id=snapshot.name)
                with ctx.stage("disks"):
                    await self._make_disks(vm, image, snapshot)
                vm = self.store.vms.get_key(vm.id)
                if workspace is not None:
                    staged, where = await scratch.enter_async_context(
                        self.workspaces.staged(ctx, workspace))
                    written = await self.workspaces.write_before_boot(ctx, vm, staged)
                if plan.start:
                    vm = await self._start(ctx, vm, image, undo, snapshot, cold_why)
                    if workspace is not None:
                        if written is None:  # names only the guest's tar can carry
                            written = await self.workspaces.copy_over_ssh(ctx, vm, staged, where)
                        vm = self.workspaces.record(vm, staged, written)
                else:
                    vm = self.store.vms.transition(
                        vm, VMState.CREATED, reason="created without booting (--no-start)"
                    )
                undo.pop_all()
            if plan.start and not plan.cold and (vm.started_from or "").startswith("cold"):
                self.keeper.after_cold_create(image, plan.vcpu, plan.memory_mib)
            return self.rt.info(vm)

        return plan, self.creates.counting(work)

    async def _pick_snapshot(self, plan: CreatePlan, image: ImageRecord
                             ) -> tuple[Path | None, str]:
        """The warm snapshot this VM starts from, or None and why it boots cold."""
        if not plan.start:
            return None, "created without starting"
        if plan.cold:
            return None, "--cold"
        try:
            found = await self.snapshots.lookup(image, plan.vcpu, plan.memory_mib)
        except HostToolError as exc:  # e.g. the VMM cannot say its version: the boot will tell
            return None, f"no snapshot key: {exc.message}"
        if isinstance(found, str):
            return None, found
        if found.path is None:
            return None, "no snapshot of this shape: banger image warm makes one"
        return found.path, ""

    async def _start(self, ctx: OperationContext, vm: VMRecord, image: ImageRecord,
                     undo: contextlib.AsyncExitStack, snapshot: Path | None,
                     cold_why: str) -> VMRecord:
        """Restore from ``snapshot`` when there is one; if that fails, boot cold saying why."""
        if snapshot is not None:
            try:
                async with contextlib.AsyncExitStack() as attempt:
                    vm = await self.booter.boot(ctx, vm, attempt, restore=snapshot)
                    undo.push_async_exit(attempt.pop_all())
                    return vm
            except (GuestError, HostToolError) as exc:  # SnapshotUnusable is a HostToolError
                cold_why = f"snapshot {snapshot.name} failed: {exc.message}"
                if isinstance(exc, SnapshotDamaged):  # only bad files drop it, not a timeout
                    await self.snapshots.invalidate(snapshot.name, exc.message)
                ctx.detail(cold_why)
            with ctx.stage("disks"):  # the root overlay again, on the image itself
                await to_thread_joined(
                    disks.create_root_overlay, image.path / ROOTFS_NAME, self.rt.files(vm).root,
                    self.rt.backend.traits.root_overlay)
            vm = self.store.vms.update(vm.id, snapshot_id=None, pid=None, tap_name=None)
            self.rt.snapshot_released()
        return await self.booter.boot(ctx, vm, undo, started_from=f"cold ({cold_why})")

    async def _default_image(self, ctx: OperationContext) -> ImageRecord:
        """First use: build the default kernel and image (with progress)."""
        built = await self.images.build(ImageBuildRequest())(ctx)
        assert isinstance(built, ImageInfo)
        return self.store.images.get_key(built.id)

    def _add_row(self, vm_id: str, plan: CreatePlan, image: ImageRecord) -> VMRecord:
        return self.store.vms.add(
            VMRecord(
                id=vm_id,
                name=plan.name,
                backend=self.rt.backend.name,
                vcpu=plan.vcpu,
                memory_mib=plan.memory_mib,
                disk_bytes=plan.disk_bytes,
                image_id=image.id,
                kernel_name=self.rt.kernel(image).name,
                state=VMState.CREATING,
                state_reason="create requested",
                net_mode=self.rt.network.mode,
                mac=allocate_mac(vm_id),
                nat=plan.nat,
                ports=PortMap(ports=plan.ports) if plan.ports else None,
            )
        )

    async def _make_disks(self, vm: VMRecord, image: ImageRecord, snapshot: Path | None,
                          git: dict[str, str] | None = None) -> None:
        """Root overlay (on the image, or on a warm snapshot's saved root), and (in
        parallel) the work disk with our key, a fresh host key and the git identity ``git``
        (None: the host's, read now)."""
        files = self.rt.files(vm)
        files.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        base: Path = image.path / ROOTFS_NAME
        base_format: DiskFormat | None = None  # an image's rootfs
        if snapshot is not None:  # the template's root overlay, in the backend's format
            base, base_format = snapshot / SNAPSHOT_ROOT, self.rt.backend.traits.root_format
        # Both threads end (a cancel stops their mkfs and debugfs) before the undo
        # removes their files, so none recreates the VM's directory afterwards.
        results = await asyncio.gather(
            to_thread_joined(functools.partial(
                disks.create_root_overlay, base, files.root, self.rt.backend.traits.root_overlay,
                backing_format=base_format,
            )),
            to_thread_joined(self._make_work_disk, vm, image, files, git),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _make_work_disk(self, vm: VMRecord, image: ImageRecord, files: VMFiles,
                        git: dict[str, str] | None) -> None:
        host_key = ssh.fresh_host_key("banger-vm")
        files.host_key_pub.write_bytes(host_key[1])
        seed = image.path / WORK_SEED_NAME
        disks.create_work_disk(
            files.work,
            vm.disk_bytes,
            seed=seed if seed.exists() else None,
            authorized_keys=ssh.ensure_ssh_key(self.settings.paths.ssh_key),
            host_key=host_key,
            gitconfig=guest_gitconfig(host_git_identity() if git is None else git),
        )
