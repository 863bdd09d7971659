"""Warm snapshots (docs/snapshots.md): one booted, quiesced guest saved per shape, restored
by ``vm create`` instead of a boot.

A snapshot is ``state_dir/snapshots/<id>/``: ``state`` (device state), ``ram`` (the
guest's memory, a sparse file clones map copy-on-write), ``root`` (the template's root
overlay: read-only base of its clones' root overlays) and ``meta.json`` (its key).
``<id>`` hashes the key: image, kernel files, vCPUs, memory, backend, accelerator,
VMM version, network kind and the agent protocol. It is built in ``.tmp-<id>-*`` and
renamed into place, so a crash or a full disk never leaves a partial one; one build
per id at a time.

Generations: a dropped snapshot keeps its ``root`` while VMs' root overlays are backed
by it (their overlays name that path), so its replacement is renamed to
``<id>.<hex>`` instead; ``find`` takes the complete one, and a VM's ``snapshot_id``
names the directory that backs it. Removal renames a directory to ``.trash-*`` on the
event loop (after checking again that nothing took it meanwhile), then deletes it in a
worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from banger.core.cancel import to_thread_joined
from banger.core.errors import BangerError, Conflict, HostToolError, Unavailable
from banger.core.vmspec import RootDisk, TapNet, UserNet, VMSpec
from banger.daemon.background import Listeners
from banger.daemon.vm_layout import adoption_spec, boot_kernel, tcg_cmdline
from banger.daemon.vm_restore import RAM, STATE
from banger.daemon.vm_runtime import VMRuntime
from banger.host import disks, ssh
from banger.host.files import atomic_write_text, fsync_file, remove_tree
from banger.host.net import allocate_mac
from banger.host.proc import lower_priority
from banger.images.guest_bits import LEAN_INIT
from banger.images.manifest import ROOTFS_NAME, WORK_SEED_NAME
from banger.kernels.manifest import INITRD
from banger.store.records import ImageRecord, KernelRecord
from banger.vmm.base import SnapshotCapable
from banger.vmm.channel import Channel

log = structlog.get_logger("banger.daemon.snapshots")

FORMAT = 3  # the agent protocol and this layout; a change invalidates every snapshot
ROOT, META = "root", "meta.json"  # root: in the backend's root format
TMP, TRASH = ".tmp-", ".trash-"
CONFIG = ("backend", "accel", "net_mode")  # another value: kept for when it comes back
TEMPLATE_WORK_BYTES = 64 << 20  # the template's scratch /root, unmounted before the save


@dataclass(frozen=True)
class SnapshotKey:
    image_id: str
    kernel: str  # name and the size+mtime of the files booted
    vcpu: int
    memory_mib: int
    backend: str
    accel: str
    vmm_version: str
    net_mode: str
    format: int = FORMAT

    @property
    def id(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Lookup:
    """A shape's key, the kernel it boots and its usable snapshot (None: none made yet)."""

    key: SnapshotKey
    kernel: KernelRecord
    path: Path | None


def _changed(name: str, old: object, new: object) -> str:
    """One line of why a key no longer matches: the field that changed."""
    if name == "vmm_version":
        return f"the VMM changed ({old} -> {new})"
    if name == "kernel":
        return "its kernel changed (re-imported, replaced or another default)"
    if name == "format":
        return "made by an older banger"
    return f"{name.replace('_', ' ')} changed ({old} -> {new})"


def _file_stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path.name}:absent"
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def _sync_ram(path: Path) -> int:
    """Flush the template's memory file to disk; return the bytes it holds (it is sparse)."""
    return fsync_file(path).st_blocks * 512


def _key_id(name: str) -> str:
    """The key id a snapshot directory's name (``<id>``, ``<id>.<hex>``, ``.tmp-<id>-*``)
    is for."""
    return name.removeprefix(TMP).split("-")[0].split(".")[0]


def _signature(d: Path) -> tuple[int, str | None] | None:
    """What a removal re-checks: the directory's inode and its meta (a build renamed in a
    new one meanwhile, or wrote its meta); None once it is gone."""
    try:
        ino = d.lstat().st_ino
    except OSError:
        return None
    try:
        return ino, (d / META).read_text()
    except (OSError, ValueError):
        return ino, None


class Snapshots:
    def __init__(self, rt: VMRuntime) -> None:
        self.rt = rt
        self.root = rt.paths.state_dir / "snapshots"
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._sweeping = asyncio.Lock()  # one prune at a time
        self._changes = Listeners("a warm snapshot made or dropped")
        self._stale = Listeners("warm snapshots may have gone stale")
        self._seen: dict[tuple[str, str], str] = {}  # what ``lookup`` last saw (``_notice``)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) after a snapshot is made or dropped."""
        self._changes.add(listener)

    def on_stale(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) when a lookup finds that snapshots made
        before went stale: the VMM's version or an image's kernel changed since the last."""
        self._stale.add(listener)

    def _changed(self) -> None:
        self._changes.notify()

    def _backend(self) -> SnapshotCapable | None:
        b = self.rt.backend
        return b if b.traits.can_snapshot and isinstance(b, SnapshotCapable) else None

    def why_not(self, image: ImageRecord) -> str | None:
        """Why VMs of ``image`` cannot start from a snapshot here, or None when they can."""
        if self._backend() is None:
            return f"the {self.rt.backend.name} backend keeps no snapshots"
        if image.manifest is None or image.manifest.init != LEAN_INIT:
            return "the image boots systemd, which has no banger agent (lean init only)"
        return None

    def _config(self) -> dict[str, str]:
        """The key's fields another daemon configuration changes (``CONFIG``)."""
        return {"backend": self.rt.backend.name, "accel": self.rt.backend.accel,
                "net_mode": str(self.rt.network.mode)}

    def key(self, image: ImageRecord, kernel: KernelRecord, vcpu: int, memory_mib: int
            ) -> SnapshotKey:
        """The key of this shape (blocking: it may run the VMM to ask its version)."""
        backend = self._backend()
        assert backend is not None
        boot = boot_kernel(kernel, self.rt.backend.traits)
        stamps = ",".join(_file_stamp(p) for p in (boot, kernel.path / INITRD))
        # the record's creation time too: a kernel deleted and imported again under its
        # name is another kernel, even when its files' sizes and times are the same
        made = kernel.created_at.isoformat() if kernel.created_at else "?"
        config = self._config()
        return SnapshotKey(
            image_id=image.id, kernel=f"{kernel.name}@{made}/{stamps}", vcpu=vcpu,
            memory_mib=memory_mib, vmm_version=backend.vmm_version(), backend=config["backend"],
            accel=config["accel"], net_mode=config["net_mode"])

    def dir(self, snap_id: str) -> Path:
        """A snapshot's directory: ``snap_id`` is its name (``<key id>[.<hex>]``)."""
        return self.root / snap_id

    async def lookup(self, image: ImageRecord, vcpu: int, memory_mib: int) -> Lookup | str:
        """The key of this shape and its usable snapshot, or why VMs of ``image`` cannot
        start from one here (``why_not``). A ``BangerError`` when there is no key: the kernel
        is gone, or the VMM cannot say its version (asked in a worker thread)."""
        why = self.why_not(image)
        if why is not None:
            return why
        kernel = self.rt.kernel(image)
        key = await to_thread_joined(self.key, image, kernel, vcpu, memory_mib)
        self._notice(image.id, key)
        return Lookup(key, kernel, self.find(key))

    def _notice(self, image_id: str, key: SnapshotKey) -> None:
        """Tell ``on_stale`` listeners when ``key``'s VMM version or its image's kernel
        (name, import time, files) differ from the last lookup's: snapshots made before may
        be stale now. A first sighting only records (the daemon swept at its start)."""
        now = {("vmm", ""): key.vmm_version, ("kernel", image_id): key.kernel}
        stale = any(self._seen.get(what, seen) != seen for what, seen in now.items())
        self._seen.update(now)
        if stale:
            self._stale.notify()

    def find(self, key: SnapshotKey) -> Path | None:
        """The complete snapshot (any generation) whose meta matches ``key``, else None."""
        for d in [self.dir(key.id), *sorted(self.root.glob(f"{key.id}.*"))]:
            try:
                meta = json.loads((d / META).read_text())
            except (OSError, ValueError):
                continue
            if meta.get("key") == asdict(key) and \
                    all((d / f).is_file() for f in (STATE, RAM, ROOT)):
                return d
        return None

    async def invalidate(self, snap_id: str, why: str) -> None:
        """Drop a snapshot whose files are bad: its meta goes at once (``find`` no longer
        sees it; a replacement can be made), the rest once no VM is backed by its root."""
        log.warning("snapshot dropped", snapshot=snap_id, why=why)
        d = self.dir(snap_id)
        (d / META).unlink(missing_ok=True)
        for path in [d] if not self._in_use(snap_id) else [d / STATE, d / RAM]:
            self._trash(path)
        self._changed()
        await to_thread_joined(self._empty_trash)

    def _trash(self, path: Path) -> None:
        """Rename ``path`` (in ``snapshots/``) out of every reader's way, to be deleted by
        ``_empty_trash``: on the event loop, so no build renames in between."""
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, self.root / f"{TRASH}{path.name}-{secrets.token_hex(4)}")

    def _empty_trash(self) -> None:
        """Delete what ``_trash`` set aside (blocking: in a worker thread)."""
        for d in self.root.glob(f"{TRASH}*") if self.root.is_dir() else []:
            if d.is_dir() and not d.is_symlink():
                remove_tree(d)
            else:
                d.unlink(missing_ok=True)

    def _in_use(self, snap_id: str) -> bool:
        return any(vm.snapshot_id == snap_id for vm in self.rt.store.vms.list())

    def _dirs(self) -> list[Path]:
        """The directories in ``snapshots/`` (blocking). A symbolic link there is none of
        banger's: it is removed (never followed); other files are left alone."""
        found = []
        for d in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if d.is_symlink():
                d.unlink(missing_ok=True)
            elif d.is_dir():
                found.append(d)
        return found

    def all(self) -> list[dict[str, Any]]:
        """Every complete snapshot's meta, with its id and why it cannot be restored now
        (``stale``, None: ready). Blocking: it may run the VMM to ask its version."""
        out = []
        for d in self._dirs():
            if d.name.startswith("."):  # a build's .tmp-*, .trash-*
                continue
            with contextlib.suppress(OSError, ValueError):
                meta = json.loads((d / META).read_text())
                out.append({"id": d.name, **meta, "stale": self.judge(meta)[0]})
        return out

    def judge(self, meta: dict[str, object]) -> tuple[str | None, bool]:
        """Why the snapshot ``meta`` describes cannot be restored now (None: it can), and
        whether that is for good (prune removes it). Kept: one made under another backend,
        accelerator or network mode (it serves again when the configuration comes back),
        and any while the VMM cannot say its version (a loaded host, a missing binary)."""
        key = meta.get("key")
        if not isinstance(key, dict):
            return "its meta.json has no key", True
        image = self.rt.store.images.find_key(str(key.get("image_id")))
        if image is None:
            return "its image was deleted", True
        config = self._config()
        if other := [n for n in CONFIG if key.get(n) != config[n]]:
            changes = ", ".join(_changed(n, key.get(n), config[n]) for n in other)
            return f"made under another configuration ({changes})", False
        why = self.why_not(image)
        if why is not None:
            return why, True
        try:
            kernel = self.rt.kernel(image)
        except BangerError as exc:
            return f"its kernel is gone: {exc.message}", True
        try:
            current = asdict(self.key(image, kernel, int(key["vcpu"]), int(key["memory_mib"])))
        except (KeyError, TypeError, ValueError):
            return "its key is malformed", True
        except BangerError as exc:  # only the VMM's version can fail here
            return f"the VMM's version is unknown now: {exc.message}", False
        changed = [name for name, value in current.items() if key.get(name) != value]
        why = "; ".join(_changed(name, key.get(name), current[name]) for name in changed)
        return why or None, True

    def _stale_dirs(self) -> list[tuple[Path, tuple[int, str | None]]]:
        """Snapshot dirs stale for good (or that lost their meta), and ``.tmp-*`` dirs of
        builds not running now (a killed daemon's), each with its ``_signature``.
        Blocking (a worker thread): ``_removable`` checks each again on the event loop."""
        found = []
        for d in self._dirs():
            if d.name.startswith(TRASH):
                continue
            seen = _signature(d)
            if seen is None:
                continue  # gone meanwhile
            if d.name.startswith(TMP):
                found.append((d, seen))
                continue
            meta = json.loads(seen[1]) if seen[1] else {}
            why, for_good = self.judge(meta if isinstance(meta, dict) else {})
            if why is not None and for_good:
                found.append((d, seen))
        return found

    def _removable(self, d: Path, seen: tuple[int, str | None]) -> bool:
        """Whether ``d`` may go now (on the event loop, right before ``_trash``): no build of
        its key runs (one holds the key's lock from before its ``.tmp-*`` exists until it is
        renamed in), no VM is backed by it, and it is what ``_stale_dirs`` judged (no new
        one was renamed in meanwhile)."""
        lock = self._locks.get(_key_id(d.name))
        if (lock is not None and lock.locked()) or self._in_use(d.name):
            return False
        return d.name.startswith(TMP) or _signature(d) == seen

    async def prune(self, *, dry_run: bool = False) -> list[str]:
        """Remove snapshots stale for good (image gone, kernel or VMM changed) no VM is
        backed by, and unfinished builds a killed daemon left; return their names (with
        ``dry_run``: what would go). One prune at a time."""
        async with self._sweeping:
            found = await to_thread_joined(self._stale_dirs)
            removed = [d.name for d, seen in found if self._removable(d, seen)]
            if dry_run:
                return removed
            for name in removed:
                self._trash(self.dir(name))
            await to_thread_joined(self._empty_trash)
        if removed:
            log.info("stale snapshots removed", what=removed)
        return removed

    def forget_image(self, image_id: str) -> list[str]:
        """``image delete`` (in a worker thread): delete that image's snapshots no VM is
        backed by (the others stay, stale, until their last clone goes); return their ids."""
        removed = []
        for meta in self.all():
            key = meta.get("key")
            if isinstance(key, dict) and key.get("image_id") == image_id \
                    and not self._in_use(meta["id"]):
                remove_tree(self.dir(meta["id"]))
                removed.append(meta["id"])
        if removed:
            log.info("snapshots of a deleted image removed", image=image_id, snapshots=removed)
        return removed

    async def recover(self) -> list[str]:
        """Daemon start: put right what a daemon killed while saving left behind. Its
        template's VMM is killed (it runs on, daemonized), its run dir and the unfinished
        ``.tmp-*`` build are removed; return the names of what was removed."""
        removed = []
        runs = self._run_root()
        for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
            spec = self._leftover_spec(run_dir)
            handle = self.rt.backend.adopt(spec.pidfile, spec) if spec is not None else None
            if handle is not None:
                log.warning("killing the template VMM of an interrupted save", pid=handle.pid)
                await self.rt.backend.shutdown(handle, graceful=False, timeout=0)
            remove_tree(run_dir)
            removed.append(f"snap/{run_dir.name}")
        for d in sorted(self.root.glob(f"{TMP}*")) if self.root.is_dir() else []:
            self._trash(d)
            removed.append(d.name)
        await to_thread_joined(self._empty_trash)  # and what a killed daemon set aside
        if removed:
            log.warning("removed an interrupted snapshot save", what=removed)
        return removed

    def _run_root(self) -> Path:
        return self.rt.paths.runtime_dir / "snap"

    def _leftover_spec(self, run_dir: Path) -> VMSpec | None:
        """A template spec naming ``run_dir``: all a backend's ``adopt`` reads (its pidfile and
        control socket prove a process is that template's VMM); None for a foreign name."""
        try:
            return adoption_spec(f"snap-{run_dir.name}", run_dir, run_dir,
                                 self.rt.backend.traits.root_format)
        except BangerError:
            return None

    async def warm(self, image: ImageRecord, vcpu: int, memory_mib: int, *,
                   background: bool = False) -> str:
        """The snapshot for this shape, made now if there is none; return its id.
        ``background``: the template's VMM runs at the lowest CPU priority."""
        found = await self.lookup(image, vcpu, memory_mib)
        if isinstance(found, str):
            raise Unavailable(f"no snapshot for image '{image.name}': {found}",
                              hint="VMs of this image boot cold")
        key = found.key
        async with self._locks[key.id]:  # a racing create waits, then finds it made
            made = self.find(key)
            return made.name if made is not None else \
                await self._build(key, image, found.kernel, background)

    async def _build(self, key: SnapshotKey, image: ImageRecord, kernel: KernelRecord,
                     background: bool) -> str:
        """Make the snapshot in ``.tmp-*`` and rename it in; return its name."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.root / f"{TMP}{key.id}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o700)
        try:
            started = time.monotonic()
            size = await self._save_template(key, image, kernel, tmp, background)
            # state_bytes: the device state and the RAM the guest touched (its file is sparse)
            meta = {"key": asdict(key), "image_name": image.name, "state_bytes": size,
                    "created": time.time(), "save_seconds": round(time.monotonic() - started, 2)}
            await to_thread_joined(atomic_write_text, tmp / META, json.dumps(meta, indent=2))
            if self.rt.store.images.find_key(image.id) is None:
                raise Conflict(f"image '{image.name}' was deleted while its snapshot was made",
                               hint="nothing to do: the snapshot is dropped")
            final = self._free_name(key.id)
            os.rename(tmp, final)
            log.info("snapshot made", snapshot=final.name, image=image.name, bytes=size)
            self._changed()
            return final.name
        except BaseException:
            await to_thread_joined(remove_tree, tmp)
            raise
        finally:
            await to_thread_joined(self._empty_trash)

    def _free_name(self, key_id: str) -> Path:
        """Where a new snapshot of ``key_id`` goes (``find`` saw none complete): ``<id>``, or
        when a dropped one is there a new generation ``<id>.<hex>``: VMs' overlays may name
        the old one's root (it is set aside now if no VM is backed by it), and a warm pool
        member of the old one must not pass for one of the new."""
        final = self.dir(key_id)
        if os.path.lexists(final):
            if not self._in_use(key_id):
                self._trash(final)
            final = self.dir(f"{key_id}.{secrets.token_hex(4)}")
        return final

    async def _save_template(self, key: SnapshotKey, image: ImageRecord, kernel: KernelRecord,
                             tmp: Path, background: bool) -> int:
        """Boot the template, wait for its agent, quiesce it, save it; its disks stay in ``tmp``."""
        rt, backend = self.rt, self._backend()
        assert backend is not None
        await to_thread_joined(disks.create_root_overlay, image.path / ROOTFS_NAME, tmp / ROOT,
                               rt.backend.traits.root_overlay)
        seed = image.path / WORK_SEED_NAME
        size = max(TEMPLATE_WORK_BYTES, seed.stat().st_size if seed.exists() else 0)
        await to_thread_joined(functools.partial(
            disks.create_work_disk, tmp / "work.ext4", size, seed=seed if seed.exists() else None,
            authorized_keys=ssh.ensure_ssh_key(rt.paths.ssh_key)))
        net, tap = await rt.network.attach_template(allocate_mac(f"snap-{key.id}"))
        try:
            spec = self._template_spec(key, image, kernel, tmp, net)
            handle = await rt.backend.launch(spec)
            try:
                if background and not lower_priority(handle.pid):
                    log.info("could not lower the template VMM's priority", pid=handle.pid)
                channel = await backend.agent_channel(spec)
                try:
                    await self._ask(channel, "ping", "pong", rt.settings.ssh_ready_timeout)
                    await self._ask(channel, "quiesce", "quiesced", 30.0)
                    size = await backend.save_state(handle, tmp / STATE)
                    return size + await to_thread_joined(_sync_ram, tmp / RAM)
                finally:
                    await channel.close()
            except (BangerError, OSError) as exc:
                if handle.running():
                    raise
                raise self._template_died(exc) from exc
            finally:
                await rt.backend.shutdown(handle, graceful=False, timeout=0)
        finally:
            await rt.network.detach(tap)
            await to_thread_joined(remove_tree, self._template_run_dir(key))
            await to_thread_joined(remove_tree, tmp / "work.ext4")

    def _template_died(self, exc: BaseException) -> BangerError:
        """The template's VMM exited mid-save: most often its memory file could not grow."""
        free = shutil.disk_usage(self.root).free
        why = exc.message if isinstance(exc, BangerError) else repr(exc)
        return HostToolError(
            f"the template's VMM exited before its snapshot was saved ({why})",
            hint=f"{free >> 20} MiB are free under {self.root}: a snapshot holds the guest's "
                 "touched memory (~100 MB per GiB); free space, or see the daemon log")

    @staticmethod
    async def _ask(channel: Channel, request: str, expected: str, timeout: float) -> None:
        reply = await channel.request(request, timeout=timeout)
        if reply != expected:
            raise Unavailable(f"the template's agent answered {request!r} with {reply[:80]!r}",
                              hint="see the template's console log in the daemon log")

    def _template_run_dir(self, key: SnapshotKey) -> Path:
        return self._run_root() / key.id[:8]

    def _template_spec(self, key: SnapshotKey, image: ImageRecord, kernel: KernelRecord,
                       tmp: Path, net: TapNet | UserNet) -> VMSpec:
        initrd = kernel.path / INITRD
        traits, accel = self.rt.backend.traits, self.rt.backend.accel
        return VMSpec(
            vm_id=f"snap-{key.id}", name="banger-template", vcpu=key.vcpu,
            memory_mib=key.memory_mib, kernel=boot_kernel(kernel, traits),
            initrd=initrd if initrd.exists() else None,
            root=RootDisk(tmp / ROOT, traits.root_format),
            work_disk=tmp / "work.ext4", console_log=tmp / "console.log",
            vmm_log=tmp / "vmm.log", run_dir=self._template_run_dir(key),
            net=net, accel=accel, init=LEAN_INIT, cmdline_extra=tcg_cmdline(accel),
            snapshot_role="template", memory_file=tmp / RAM,
        )
