"""The root helper's block devices: loop devices and dm-snapshots of its owner's only.

Ownership is never read from a path (a backing file can be renamed, replaced or
deleted under a loop device): the helper keeps a registry of the loop devices it
attached, in a root-only file of its own run dir (``loops.json``: the device, the
owner uid, and the kernel's backing device and inode at attach time). A loop device
is the owner's when the registry says the helper attached it for the owner and the
kernel still reports that very backing inode behind it, deleted or not.

- attach: the backing file is opened once, component by component without
  following symlinks (the guard's ``open_owner_file``), and ``losetup`` is handed
  that fd (``/dev/fd/N``), never the path; the kernel's backing inode must then be
  the fd's, else the device is detached again (unconditionally, whatever failed);
- a dm-snapshot is made with the uuid ``BANGER-<uid>-<name>`` over two of the
  owner's loop devices, and its dependencies (by device number) are read back after
  ``dmsetup create``: anything else than those two loops and it is removed again;
- a dm-snapshot is removed only with the owner's uuid and when it is built on one
  or more devices, every one a loop device of the owner's.

Each operation runs each check once: one ownership test of a loop (``_owned``, on one
reading of the kernel's backing inode, which ``blockdev.detach_loop`` hands it), and a
removal's uuid and dependency checks inside ``blockdev.remove_snapshot``'s own steps.

One lock serialises every block-device operation of the helper, so no detach runs
between another call's check and its use.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from banger.core.errors import Forbidden
from banger.host import blockdev
from banger.host.files import open_root_only_dir

REGISTRY = "loops.json"
_LOCK = threading.Lock()  # one per helper process: every block-device call runs under it


class LoopRegistry:
    """``device -> [uid, major, minor, ino]`` of the loops the helper attached."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def _load(self, dir_fd: int) -> dict[str, list[int]]:
        try:
            fd = os.open(REGISTRY, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return {}
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read() or b"{}")
        return {str(k): [int(x) for x in v] for k, v in data.items()}

    def _update(self, change: Callable[[dict[str, list[int]]], object]) -> None:
        dir_fd = open_root_only_dir(self.run_dir, create=True)
        try:
            entries = self._load(dir_fd)
            change(entries)
            tmp = f".{REGISTRY}.{os.getpid()}.{threading.get_ident()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(entries).encode())
            os.replace(tmp, REGISTRY, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, device: str) -> list[int] | None:
        try:
            dir_fd = open_root_only_dir(self.run_dir, create=False)
        except FileNotFoundError:
            return None
        try:
            return self._load(dir_fd).get(device)
        finally:
            os.close(dir_fd)

    def add(self, device: str, uid: int, backing: blockdev.LoopBacking) -> None:
        self._update(lambda e: e.__setitem__(device, [uid, *backing.dev, backing.ino]))

    def drop(self, device: str) -> None:
        self._update(lambda e: e.pop(device, None))


class OwnedBlockDevices:
    """Loop devices and dm-snapshots of uid ``uid``'s; ``open_backing`` opens a backing
    file the owner may name (an ``O_PATH`` fd) or raises ``Forbidden``."""

    def __init__(self, uid: int, open_backing: Callable[[str], int], run_dir: Path) -> None:
        self.uid = uid
        self.open_backing = open_backing
        self.registry = LoopRegistry(run_dir)

    def attach(self, backing: str, read_only: bool) -> str:
        with _LOCK:
            fd = self.open_backing(backing)
            try:
                st = os.fstat(fd)
                device = blockdev.attach_loop(fd, read_only)
                try:
                    got = blockdev.loop_backing(device)
                    if got is None or not blockdev.same_inode(got, st):
                        raise Forbidden(f"{backing} changed while it was being attached",
                                        hint="attach a file nothing replaces meanwhile")
                    self.registry.add(device, self.uid, got)
                except BaseException:
                    blockdev.force_detach(device)
                    raise
                return device
            finally:
                os.close(fd)

    def _owned(self, device: str, backing: blockdev.LoopBacking | None) -> None:
        """``Forbidden`` unless loop ``device``, backed by ``backing`` as the kernel reported
        it just now, is one the helper attached for the owner, still on that very inode."""
        if backing is None:
            raise Forbidden(f"{device} is not attached", hint="attach its backing file first")
        if self.registry.get(device) != [self.uid, *backing.dev, backing.ino]:
            raise Forbidden(f"{device} is not a loop device the helper attached for uid "
                            f"{self.uid}", hint="a helper acts only on the owner's loop devices")

    def _owned_loop(self, device: str) -> None:
        """``_owned`` on what the kernel reports behind ``device`` now."""
        self._owned(device, blockdev.loop_backing(device))

    def detach(self, device: str) -> bool:
        with _LOCK:
            detached = blockdev.detach_loop(device, lambda got: self._owned(device, got))
            self.registry.drop(device)
            return detached

    def _owned_deps(self, name: str) -> set[tuple[int, int]]:
        """The devices dm device ``name`` is built on: one or more, all the owner's loops."""
        deps = blockdev.snapshot_deps(name)
        if not deps:
            raise Forbidden(f"dm device {name} is built on no device",
                            hint="banger acts only on snapshots over its loop devices")
        for devno in deps:
            self._owned_loop(blockdev.loop_of_devno(name, devno))
        return set(deps)

    def create_snapshot(self, name: str, origin: str, cow: str) -> str:
        with _LOCK:
            for device in (origin, cow):
                self._owned_loop(device)
            want = {blockdev.loop_devno(origin), blockdev.loop_devno(cow)}
            mapper = blockdev.create_snapshot(name, origin, cow, self.uid)
            try:
                if self._owned_deps(name) != want:
                    raise Forbidden(f"dm device {name} is not built on {origin} and {cow}",
                                    hint="something changed the loop devices meanwhile")
            except BaseException:
                blockdev.remove_snapshot(name, self.uid)
                raise
            return mapper

    def remove_snapshot(self, name: str) -> bool:
        with _LOCK:
            return blockdev.remove_snapshot(name, self.uid, lambda: self._owned_deps(name))
