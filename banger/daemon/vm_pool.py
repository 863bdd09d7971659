"""The warm pool (docs/snapshots.md, "Warm pool"): ``warm_pool = N`` clones of the default
shape, restored and paused, ready for a ``vm create`` to claim.

A member is a clone whose host-side identity is made when it is filled: an id
(so its files are already the VM's own, ``vms/<id>/`` and ``runtime_dir/vms/<id>/``),
a held guest address and a TAP, its MAC, a root overlay on the snapshot's root, a
work disk with the owner's key, a fresh host key (pinned in its ``known_hosts``)
and the git identity. Its VMM was launched as a clone (waiting for its state), the
state loaded, and the guest ran just long enough to take all that identity from its
agent (address, MAC, RNG reseed, machine-id, ``/root``, sshd's host key) and for
sshd to accept our key over the VM's shared SSH connection, held open (no
keepalives: ``ssh_argv(held=True)``); it is paused again with its agent waiting on
the open control channel. It has no row:
it is in no ``vm list``, holds no name, and the network never hands its address
to a VM (``VMNetwork.hold_ip``). A create it can serve (``why_not_served``)
gives the member's id, address, TAP and VMM to its new row (``hand_over``); the
guest then runs and takes the VM's name and the wall clock, and the held connection,
still up, is its readiness (``claim``): no SSH handshake on the claim's path. The
create then copies the ``[[file_sync]]`` files in over that connection
(``VMBooter.sync_running``), read from the host at the claim as a start reads them.

Members are filled one at a time in the background, only while no create runs,
and discarded when the snapshot, the default shape or the git identity changes,
and at daemon shutdown. While a member has no row a marker ``state_dir/pool/<id>``
names it, so the members of a daemon killed with a filled pool are reaped at the
next start (``recover``, before the network deletes their TAPs).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from banger.core.errors import BangerError, GuestError, HostToolError, SnapshotDamaged
from banger.core.guest_sh import NO_TAR, PRELUDE, REQUIRE_TAR, lacks_tar, sh_argv
from banger.core.names import ID_RE, new_id
from banger.core.states import NetMode
from banger.core.validate import parse_size
from banger.daemon.background import BackgroundTasks, CreatesInFlight
from banger.daemon.operations import OperationContext
from banger.daemon.snapshots import Snapshots
from banger.daemon.vm_boot import VMBooter
from banger.daemon.vm_layout import VMFiles, adoption_spec
from banger.daemon.vm_restore import clone_spec, give_identity, give_name, load_clone
from banger.daemon.vm_runtime import VMRuntime
from banger.host import ssh
from banger.host.files import remove_tree
from banger.host.git_identity import host_git_identity
from banger.host.net import allocate_mac
from banger.host.ssh import GuestCommandError
from banger.store.records import ImageRecord, VMRecord
from banger.vmm.base import Handle, SnapshotCapable
from banger.vmm.channel import Channel

if TYPE_CHECKING:  # vm_create imports this module
    from banger.daemon.vm_create import CreatePlan

log = structlog.get_logger("banger.daemon.vm_pool")

MEMBER_NAME = "banger-pool"  # a member's hostname until a create names it
TAR_CHECK = sh_argv(PRELUDE + REQUIRE_TAR, "banger-pool")  # with [[file_sync]]: checked at the fill
TAR_CHECK_TIMEOUT = 60.0

# the VM, its image, the snapshot its root is based on, the git identity for its work disk
MakeDisks = Callable[[VMRecord, ImageRecord, Path | None, dict[str, str]], Awaitable[None]]


@dataclass(frozen=True)
class Shape:
    """What a member is: a VM of this image, kernel and size, restored from this snapshot,
    with this git identity on its work disk."""

    image_id: str
    kernel_name: str
    vcpu: int
    memory_mib: int
    disk_bytes: int
    snapshot_id: str
    git: tuple[tuple[str, str], ...]


@dataclass
class Member:
    vm: VMRecord  # its row to be (not stored): id, address, MAC, TAP, SSH port
    shape: Shape
    snapshot: Path
    handle: Handle
    channel: Channel
    handed_over: bool = False  # a VM row holds it now (its create's undo destroys it)


def why_not_served(want: CreatePlan, image: ImageRecord | None, shape: Shape, *,
                   user_net: bool) -> str | None:
    """Why a member of ``shape`` cannot be this create's VM, or None when it can. The
    ``[[file_sync]]`` files and a workspace go in over SSH after the claim (read from the
    host then, as a start reads them); NAT and published ports are host rules added then,
    except with user-mode networking, where ports are forwarded by the VMM's own argv."""
    if not want.start:
        return "created without starting"
    if want.cold:
        return "--cold"
    if (want.nat or want.ports) and user_net:
        return "--nat or --publish with user-mode networking (the VMM forwards the ports)"
    if image is None or image.id != shape.image_id:
        return "another image than the default one"
    if (want.vcpu, want.memory_mib) != (shape.vcpu, shape.memory_mib):
        return "other vCPUs or memory than the defaults"
    if want.disk_bytes != shape.disk_bytes:
        return "another --disk than default_disk"
    return None


class WarmPool:
    def __init__(self, rt: VMRuntime, booter: VMBooter, snapshots: Snapshots,
                 creates: CreatesInFlight, make_disks: MakeDisks) -> None:
        self.rt = rt
        self.booter = booter
        self.snapshots = snapshots
        self.creates = creates  # the pool fills only while none runs
        self._make_disks = make_disks
        self.size = rt.settings.warm_pool
        self.markers = rt.paths.state_dir / "pool"
        self._members: list[Member] = []
        self._tasks = BackgroundTasks()
        self._wake = asyncio.Event()
        self._idle_why: str | None = None
        self._without_tar: set[str] = set()  # snapshot ids whose guest has no tar
        snapshots.on_change(self.kick)  # a new snapshot fills the pool, a dropped one empties it

    @property
    def members(self) -> int:
        return len(self._members)

    def start(self) -> None:
        """Daemon start (after ``recover`` and reconcile): fill the pool in the background."""
        if self.size > 0:
            self._tasks.spawn(self._fill_forever(), name="fill the warm pool")
            self.kick()

    def kick(self) -> None:
        """Look again: fill up, or discard members gone stale (a claim, a new snapshot)."""
        self._wake.set()

    async def _fill_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._fill()

    async def _fill(self) -> None:
        """Discard stale members, then fill up to ``size`` from one look at the shape and
        the git identity (``_current``); look again after a create that began meanwhile."""
        while True:
            await self.creates.lull()  # woken, but a create may have begun since
            current = await self._current()
            await self._discard_stale(current[0] if current else None)
            if current is None or not await self._fill_up(*current):
                return

    async def _fill_up(self, shape: Shape, image: ImageRecord, snapshot: Path) -> bool:
        """Members one at a time until ``size``; True when a create began meanwhile (look
        again after it). A kick meanwhile (a snapshot made or dropped, a claim) or a
        failed fill ends it: ``_fill_forever`` looks again at the next kick."""
        while len(self._members) < self.size:
            if self._wake.is_set():
                return False
            if not self.creates.quiet:
                return True
            try:
                member = await self._fill_one(shape, image, snapshot)
            except BangerError as exc:
                log.warning("could not fill the warm pool", error=exc.message, hint=exc.hint)
                if isinstance(exc, SnapshotDamaged):  # its files are bad: a create's rule
                    await self.snapshots.invalidate(snapshot.name, exc.message)
                return False
            self._members.append(member)
            log.info("warm pool member ready", member=member.vm.id, members=self.members)
        return False

    async def _current(self) -> tuple[Shape, ImageRecord, Path] | None:
        """The default shape and its snapshot; None (saying why, once) when there is none."""
        found = await self._find_current()
        if isinstance(found, str):
            if found != self._idle_why:
                log.info("the warm pool stays empty", why=found)
            self._idle_why = found
            return None
        self._idle_why = None
        return found

    async def _find_current(self) -> tuple[Shape, ImageRecord, Path] | str:
        rt = self.rt
        image = rt.store.images.get_default()
        if image is None:
            return "no default image"
        vcpu, memory = rt.settings.default_vcpu, rt.settings.default_memory_mib
        try:
            found = await self.snapshots.lookup(image, vcpu, memory)
        except BangerError as exc:
            return exc.message
        if isinstance(found, str):
            return found
        if found.path is None:
            return "no snapshot of the default shape (banger image warm makes one)"
        if rt.settings.file_sync and found.path.name in self._without_tar:
            return (f"[[file_sync]] is set and the guest of snapshot {found.path.name} has no "
                    "tar to take the files while it runs")
        git = await asyncio.to_thread(host_git_identity)
        shape = Shape(image.id, found.kernel.name, vcpu, memory,
                      parse_size(rt.settings.default_disk, "disk"), found.path.name,
                      tuple(sorted(git.items())))
        return shape, image, found.path

    async def _discard_stale(self, current: Shape | None) -> None:
        for member in [m for m in self._members if m.shape != current]:
            if member not in self._members:  # a create took it while one before was discarded
                continue
            self._members.remove(member)
            log.info("discarding a stale warm pool member", member=member.vm.id)
            await self.discard(member)

    async def _fill_one(self, shape: Shape, image: ImageRecord, snapshot: Path) -> Member:
        """A new member: its identity, its disks and network, its VMM with the state loaded."""
        rt = self.rt
        vm_id = new_id()
        self.markers.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.markers / vm_id).touch(mode=0o600)  # first: recover() reaps what follows
        vm = VMRecord(
            id=vm_id, name=MEMBER_NAME, backend=rt.backend.name, vcpu=shape.vcpu,
            memory_mib=shape.memory_mib, disk_bytes=shape.disk_bytes, image_id=image.id,
            kernel_name=shape.kernel_name, net_mode=rt.network.mode, mac=allocate_mac(vm_id),
            guest_ip=rt.network.hold_ip(),
        )
        async with contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(self._remove, vm)
            await self._make_disks(vm, image, snapshot, dict(shape.git))  # read with the shape
            net, tap, port = await rt.network.attach(vm)
            undo.push_async_callback(rt.network.detach, tap)
            vm = dataclasses.replace(vm, tap_name=tap, ssh_port=port)
            files = rt.files(vm)
            host, port = rt.network.ssh_endpoint(vm)
            ssh.write_known_hosts(files.known_hosts, host, port, files.host_key_pub.read_bytes())
            spec = clone_spec(rt.spec(vm, net), snapshot)
            handle = await rt.backend.launch(spec)
            undo.push_async_callback(rt.backend.shutdown, handle, graceful=False, timeout=0)
            channel = await load_clone(rt.backend, handle, spec, snapshot)
            undo.push_async_callback(channel.close)
            await give_identity(rt.backend, handle, spec, channel, hold=True)
            undo.push_async_callback(ssh.close_master, ssh.control_path_for(files.run_dir))
            await rt.guest.wait_ready(vm, files, host, port, held=True, alive=handle.running,
                                      deadline=time.monotonic() + rt.settings.ssh_ready_timeout)
            if rt.settings.file_sync:
                await self._needs_tar(vm, snapshot)
            await self._pause(handle)
            undo.pop_all()
        return Member(vm, shape, snapshot, handle, channel)

    async def _needs_tar(self, vm: VMRecord, snapshot: Path) -> None:
        """A claim puts the ``[[file_sync]]`` files in with tar: a guest without it could
        serve no create, so its snapshot fills no member (until the daemon restarts)."""
        try:
            await self.rt.guest.read(self.rt.guest_target(vm), TAR_CHECK, limit=4096,
                                     timeout=TAR_CHECK_TIMEOUT)
        except GuestCommandError as exc:
            if exc.status != NO_TAR:
                raise
            self._without_tar.add(snapshot.name)
            raise lacks_tar(vm.name) from None

    async def _pause(self, handle: Handle) -> None:
        backend = self.rt.backend
        assert isinstance(backend, SnapshotCapable)
        await backend.pause(handle)

    async def take(self, want: CreatePlan, image: ImageRecord | None) -> Member | None:
        """A member to be this create's VM, or None (the create goes on without the pool)."""
        if not self._members:
            self.kick()  # a fill that failed tries again (once no create runs)
            return None
        current = await self._current()  # its create is counted in ``creates`` already
        if not self._members:  # another create took the last one meanwhile
            return None
        member = self._members[0]
        why = why_not_served(want, image, member.shape,
                             user_net=self.rt.network.mode is NetMode.USER)
        if why is None and (current is None or current[0] != member.shape):
            why = "the snapshot, the default shape or the git identity changed since it filled"
        if why is not None:
            log.info("the warm pool cannot serve this create", why=why)
            self.kick()
            return None
        self._members.pop(0)
        self.kick()  # refill (once no create runs)
        return member

    def hand_over(self, vm: VMRecord, member: Member) -> VMRecord:
        """``vm``'s new row takes the member's address, TAP, SSH port and VMM."""
        row = self.rt.store.vms.update(
            vm.id, guest_ip=member.vm.guest_ip, tap_name=member.vm.tap_name,
            ssh_port=member.vm.ssh_port, pid=member.handle.pid,
            snapshot_id=member.snapshot.name)
        member.handed_over = True
        self.rt.network.release_ip(member.vm.guest_ip)
        (self.markers / member.vm.id).unlink(missing_ok=True)
        return row

    async def claim(self, ctx: OperationContext, vm: VMRecord, member: Member
                    ) -> VMRecord | None:
        """Run the handed-over member as ``vm`` until it is ready. None when the guest failed
        to take its identity: it is killed and its disks removed, and the create goes on as
        one without a pool."""
        rt = self.rt
        try:
            with ctx.stage("restore"):
                ctx.detail("claimed from the warm pool")
                try:
                    await give_name(rt.backend, member.handle, vm.name, member.channel)
                finally:
                    await member.channel.close()
        except (GuestError, HostToolError) as exc:
            ctx.detail(f"the warm pool's VM failed ({exc.message}): starting without it")
            await rt.backend.shutdown(member.handle, graceful=False, timeout=0)
            await rt.network.detach(vm.tap_name)
            await asyncio.to_thread(remove_tree, rt.files(vm).dir)
            rt.store.vms.update(vm.id, tap_name=None, pid=None, ssh_port=None, snapshot_id=None)
            rt.snapshot_released()
            return None
        return await self.booter.become_ready(
            ctx, vm, member.handle, f"snapshot {member.snapshot.name} (warm pool)",
            connected=True)

    async def discard(self, member: Member) -> None:
        """Kill a member and give back all it holds; once handed over, its row's owner
        does that, and only the channel is closed here (idempotent)."""
        await member.channel.close()
        if member.handed_over:
            return
        await ssh.close_master(ssh.control_path_for(self.rt.files(member.vm).run_dir))
        await self.rt.backend.shutdown(member.handle, graceful=False, timeout=0)
        await self.rt.network.detach(member.vm.tap_name)
        await self._remove(member.vm)

    async def _remove(self, vm: VMRecord) -> None:
        """A member's files, its held address, then its marker."""
        files = self.rt.files(vm)
        await asyncio.to_thread(remove_tree, files.dir)
        await asyncio.to_thread(remove_tree, files.run_dir)
        self.rt.network.release_ip(vm.guest_ip)
        (self.markers / vm.id).unlink(missing_ok=True)

    async def recover(self) -> list[str]:
        """Daemon start: kill the VMMs of members a killed daemon left (only a process its
        pidfile and argv prove is that member's), remove their files and markers; return
        their ids. Their TAPs, held by no row, go with the network's reconcile."""
        reaped = []
        for marker in sorted(self.markers.iterdir()) if self.markers.is_dir() else []:
            if not ID_RE.fullmatch(marker.name):
                continue  # not a name we make
            if self.rt.store.vms.find_key(marker.name) is None:
                files = VMFiles.of(self.rt.paths, marker.name, self.rt.backend.traits.root_format)
                spec = adoption_spec(marker.name, files.run_dir, files.dir, files.root_format)
                handle = self.rt.backend.adopt(spec.pidfile, spec)
                await ssh.close_master(ssh.control_path_for(files.run_dir))
                if handle is not None:
                    await self.rt.backend.shutdown(handle, graceful=False, timeout=0)
                await asyncio.to_thread(remove_tree, files.dir)
                await asyncio.to_thread(remove_tree, files.run_dir)
                reaped.append(marker.name)
            marker.unlink(missing_ok=True)  # a row's already (a claim done), or not ours
        if reaped:
            log.warning("reaped the warm pool a killed daemon left", members=reaped)
        return reaped

    async def close(self) -> None:
        """Daemon shutdown: stop filling, discard every member."""
        await self._tasks.aclose()
        while self._members:
            await self.discard(self._members.pop())
