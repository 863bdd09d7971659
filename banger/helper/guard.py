"""What the root helper checks beyond ``CheckedHostOps``: the call is about its owner.

``CheckedHostOps`` proves every argument has the right shape; ``GuardedHostOps``
then proves it names the owner's things before the in-process operation runs:

- a bridge owner alias carries the owner's uid, and a bridge the helper routes or
  NATs for carries such an alias (no other daemon's bridge);
- a TAP is made owned by the owner's uid (its QEMU opens it without privileges),
  and only a TAP owned by the owner (or by no one, on the owner's bridge) is deleted;
- a VMM is signalled only when every path in its markers lies under the owner's
  state or runtime dir with no symlink in any component (each component opened
  ``O_PATH | O_NOFOLLOW`` from ``/`` down, the owner's dir owned by the owner, the
  leaf re-checked through its fd: a regular file of the owner's), the pidfile read
  through that fd names the pid, and the process runs as the owner; then
  ``InProcessHostOps`` proves start time and argv again and signals through a pidfd;
- a loop device is attached only on a regular file of the owner's under the owner's
  state dir, reached the same way and handed to ``losetup`` as that fd; loop devices
  and dm-snapshots are the owner's by the helper's own registry and the dm uuid,
  never by path (``helper.blockguard``);
- Firecracker is jailed only as the owner's uid and gid, and a jail removed only when
  its chroot is the owner's; the chroot base is the helper's own (``host.jailer``),
  never named by a request.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import Forbidden, InvalidInput, NotFound
from banger.helper.blockguard import OwnedBlockDevices
from banger.host import net
from banger.host.files import path_parts, walk_nofollow
from banger.host.jailer import HELPER_RUN_DIR, JailedVmm
from banger.host.privileged import (
    MARKER_MAX,
    CheckedHostOps,
    HostOps,
    InProcessHostOps,
    path_marker,
)
from banger.host.proc_identity import read_pid_fd


@dataclass(frozen=True)
class Owner:
    """The user the helper serves, and the dirs its paths must lie under."""

    name: str
    uid: int
    gid: int
    dirs: tuple[Path, ...]

    @classmethod
    def lookup(cls, name: str, state_dir: Path | None = None,
               runtime_dir: Path | None = None) -> Owner:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise NotFound(f"no user {name!r}", hint="pass --owner an existing user") from None
        state = state_dir or Path(entry.pw_dir, ".local/state/banger")
        runtime = runtime_dir or Path(f"/run/user/{entry.pw_uid}/banger")
        for d in (state, runtime):
            if not d.is_absolute() or os.path.normpath(d) != str(d):
                raise InvalidInput(f"owner dir {d} is not a normalised absolute path",
                                   hint="pass absolute paths without '..'")
        return cls(name, entry.pw_uid, entry.pw_gid, (state, runtime))

    @property
    def alias_prefix(self) -> str:
        return f"{net.OWNER_PREFIX}{self.uid}:"


def _refuse_path(path: str, why: str) -> Forbidden:
    return Forbidden(f"refusing path {path[:120]!r}: {why}",
                     hint="banger's helper acts only on files under the owner's state "
                          "and runtime dirs, reached without symlinks")


def _root_for(path: str, roots: tuple[Path, ...]) -> tuple[Path, list[str]]:
    """The dir of ``roots`` that ``path`` lies under and the components below it."""
    if len(path) > MARKER_MAX or not path_marker(path):
        raise InvalidInput(f"invalid path {path[:120]!r}",
                           hint="a normalised absolute path (no '..', '//' or trailing '/')")
    for root in roots:
        rel = os.path.relpath(path, root)
        if rel != "." and not rel.startswith(".."):
            return root, rel.split("/")
    raise _refuse_path(path, f"it is outside {' and '.join(map(str, roots))}")


def open_owner_file(path: str, owner: Owner, roots: tuple[Path, ...] | None = None) -> int:
    """An ``O_PATH`` fd on the owner's regular file ``path`` under the owner's dir (of
    ``roots``, default both), walked from ``/`` one component at a time without following
    a symlink anywhere (the owner's dir itself included: root never starts a walk where
    the owner points), the owner's dir owned by the owner. Missing, a symlink, not a
    regular file, not the owner's: one refusal, so the walk tells nothing of what
    exists where. The caller closes the fd."""
    root, parts = _root_for(path, roots or owner.dirs)
    refused = _refuse_path(path, "it is not a regular file of the owner's in its dir")
    try:
        root_fd = walk_nofollow(path_parts(root), directory=True)
    except OSError:
        raise refused from None
    try:
        if os.fstat(root_fd).st_uid != owner.uid:
            raise refused
        fd = walk_nofollow(parts, root_fd)
    except OSError:
        raise refused from None
    finally:
        os.close(root_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != owner.uid:
        os.close(fd)
        raise refused
    return fd


def process_uid(pid: int) -> int | None:
    """The real uid of ``pid``, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class GuardedHostOps:
    """``HostOps`` limited to ``owner``'s bridge, TAPs and VMMs, over ``transport``."""

    def __init__(self, owner: Owner, transport: HostOps, run_dir: Path = HELPER_RUN_DIR) -> None:
        self.owner = owner
        self.transport = transport
        self.blocks = OwnedBlockDevices(
            owner.uid, lambda path: open_owner_file(path, owner, (owner.dirs[0],)), run_dir)

    def _own_alias(self, alias: str) -> str:
        if not alias.startswith(self.owner.alias_prefix):
            raise Forbidden(f"bridge owner {alias!r} is not the helper's owner "
                            f"{self.owner.name} (uid {self.owner.uid})",
                            hint="a helper serves its owner's daemon only")
        return alias

    def _own_bridge(self, bridge: str) -> None:
        facts = net.link_facts(bridge)
        if facts is None or not (facts[0] or "").startswith(self.owner.alias_prefix):
            raise Forbidden(f"bridge {bridge} is not a bridge of {self.owner.name}'s daemon",
                            hint="claim the bridge first (a VM create does)")

    def can_manage_network(self) -> bool:
        return self.transport.can_manage_network()

    def claim_bridge(self, name: str, cidr: str, owner: str, *, create: bool = True) -> bool:
        return self.transport.claim_bridge(name, cidr, self._own_alias(owner), create=create)

    def create_tap(self, name: str, bridge: str, owner_uid: int | None = None) -> None:
        if owner_uid not in (None, self.owner.uid):
            raise Forbidden(f"refusing a TAP for uid {owner_uid}: the helper's owner is "
                            f"uid {self.owner.uid}", hint="ask for a TAP of the owner's")
        self._own_bridge(bridge)
        self.transport.create_tap(name, bridge, self.owner.uid)

    def delete_tap(self, name: str) -> bool:
        facts = net.link_facts(name)
        if facts is None:
            return False
        if facts[1] != self.owner.uid:
            raise Forbidden(f"TAP {name} is not owned by uid {self.owner.uid}",
                            hint="a helper deletes only its owner's TAPs")
        return self.transport.delete_tap(name)

    def taps_on_our_bridge(self, bridge: str, owner: str) -> list[str]:
        return self.transport.taps_on_our_bridge(bridge, self._own_alias(owner))

    def signal_vmm(self, pid: int, start_time: int, markers: tuple[str, ...],
                   sig: signal.Signals) -> bool:
        named = False
        for marker in (m for m in markers if path_marker(m)):
            fd = open_owner_file(marker, self.owner)
            try:
                named = named or read_pid_fd(fd) == pid
            finally:
                os.close(fd)
        uid = process_uid(pid)
        if uid is None:
            return False
        if uid != self.owner.uid or not named:
            raise Forbidden(f"refusing to signal pid {pid}: it is not a VMM of "
                            f"{self.owner.name}'s (uid {uid}, no pidfile of the owner's names it)",
                            hint="banger signals only the VMMs its daemon started")
        return self.transport.signal_vmm(pid, start_time, markers, sig)

    def route_vm_domain(self, bridge: str, resolver: str) -> None:
        self._own_bridge(bridge)
        self.transport.route_vm_domain(bridge, resolver)

    def revert_resolver(self, bridge: str) -> None:
        self.transport.revert_resolver(bridge)

    def nat_sync(self, bridge: str, guests: tuple[str, ...]) -> None:
        self._own_bridge(bridge)
        self.transport.nat_sync(bridge, guests)

    def nat_add(self, bridge: str, guest: str) -> None:
        self._own_bridge(bridge)
        self.transport.nat_add(bridge, guest)

    def nat_remove(self, bridge: str, guest: str) -> None:
        self.transport.nat_remove(bridge, guest)

    def enable_ip_forward(self) -> None:
        self.transport.enable_ip_forward()

    def attach_loop(self, backing: str, read_only: bool) -> str:
        return self.blocks.attach(backing, read_only)

    def detach_loop(self, device: str) -> bool:
        return self.blocks.detach(device)

    def create_snapshot(self, name: str, origin: str, cow: str) -> str:
        return self.blocks.create_snapshot(name, origin, cow)

    def remove_snapshot(self, name: str) -> bool:
        return self.blocks.remove_snapshot(name)

    def _own_ids(self, uid: int, gid: int) -> None:
        if (uid, gid) != (self.owner.uid, self.owner.gid):
            raise Forbidden(f"refusing a jail as {uid}:{gid}: the helper's owner is "
                            f"{self.owner.uid}:{self.owner.gid}",
                            hint="Firecracker runs as the owner")

    def launch_jailed(self, jail_id: str, uid: int, gid: int) -> JailedVmm:
        self._own_ids(uid, gid)
        return self.transport.launch_jailed(jail_id, uid, gid)

    def remove_jail(self, jail_id: str, uid: int) -> bool:
        self._own_ids(uid, self.owner.gid)
        return self.transport.remove_jail(jail_id, uid)


def helper_ops(owner: Owner, transport: HostOps | None = None,
               run_dir: Path = HELPER_RUN_DIR) -> HostOps:
    """What the helper runs a request through: shape checks, then owner checks, then
    the in-process operation (``transport``, for tests); block devices run in the guard
    itself (``helper.blockguard``), their registry in the helper's ``run_dir``."""
    return CheckedHostOps(GuardedHostOps(owner, transport or InProcessHostOps(), run_dir))

