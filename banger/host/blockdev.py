"""Loop devices and dm-snapshots: the block devices under a Firecracker root overlay.

An overlay is two loop devices (the image read-only, a sparse copy-on-write file)
and one dm-snapshot over them. Everything runs through the distribution tools
(``losetup``, ``dmsetup``) with argv lists; the validators here are the grammar
``CheckedHostOps`` and the root helper apply before any of it runs:

- a loop device is ``/dev/loopN`` and nothing else;
- a dm name carries ``DM_PREFIX`` and fits the grammar below (far under the
  kernel's 127-byte ``DM_NAME_LEN``); a mapper path is ``/dev/mapper/<such a name>``.

What a loop device is backed by comes from the kernel: the file's path from
``/sys/block/loopN/loop/backing_file`` and its device and inode from
``losetup --json`` (``LOOP_GET_STATUS64``), so a caller can prove the backing
file is the very inode it checked; a caller holding that inode's fd hands
``losetup`` the fd itself (``/dev/fd/N``), never the path again.

A dm-snapshot carries the uuid ``BANGER-<uid>-<name>`` of the uid it was made for,
and what it is built on is read by device number (``dmsetup deps``: ``(7, 3)``),
never by name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import Forbidden, InternalError, InvalidInput
from banger.core.validate import show_value
from banger.host.run import require_tool, run

TIMEOUT = 30.0
LOOP_RE = re.compile(r"/dev/loop(0|[1-9][0-9]{0,5})")
DM_PREFIX = "banger-"
DM_NAME_RE = re.compile(rf"{DM_PREFIX}[a-z0-9][a-z0-9-]{{0,62}}")
MAPPER_DIR = "/dev/mapper/"
SYS_BLOCK = Path("/sys/block")
SYS_DEV_BLOCK = Path("/sys/dev/block")
LOOP_MAJOR = 7  # the kernel's fixed block major of loop devices
BACKING_PART_RE = re.compile(r"[A-Za-z0-9._-]+")  # a backing file's path components
DEPS_RE = re.compile(r"\s*(\d+) dependencies\s*:((?:\s*\(\d+, \d+\))*)\s*")
SNAPSHOT_CHUNK = 8  # sectors: 4 KiB copy-on-write chunks


def validate_loop_device(device: object) -> str:
    """``/dev/loopN``, nothing else (no other block device, no path games)."""
    if not isinstance(device, str) or not LOOP_RE.fullmatch(device):
        raise InvalidInput(f"invalid loop device {show_value(device)}",
                           hint="a loop device is /dev/loopN")
    return device


def validate_dm_name(name: object) -> str:
    """A dm device name of banger's: ``banger-`` then 1-63 of ``[a-z0-9-]``."""
    if not isinstance(name, str) or not DM_NAME_RE.fullmatch(name):
        raise InvalidInput(f"invalid dm name {show_value(name)}",
                           hint=f"a dm name is {DM_PREFIX} then 1-63 of a-z, 0-9 and '-'")
    return name


def validate_mapper_path(path: object) -> str:
    """``/dev/mapper/<dm name of banger's>``."""
    if not isinstance(path, str) or not path.startswith(MAPPER_DIR):
        raise InvalidInput(f"invalid mapper path {show_value(path)}",
                           hint=f"a mapper path is {MAPPER_DIR}{DM_PREFIX}...")
    validate_dm_name(path.removeprefix(MAPPER_DIR))
    return path


@dataclass(frozen=True)
class LoopBacking:
    """The file behind a loop device, as the kernel reports it."""

    path: str  # ends in " (deleted)" when the file was unlinked
    dev: tuple[int, int]  # major, minor of the file's filesystem
    ino: int


def loop_backing(device: str) -> LoopBacking | None:
    """What backs ``device``; None when it is not attached."""
    sys_file = SYS_BLOCK / validate_loop_device(device).removeprefix("/dev/") / "loop/backing_file"
    try:
        path = os.fsdecode(sys_file.read_bytes().removesuffix(b"\n"))  # any byte a name holds
    except FileNotFoundError:
        return None
    out = run([require_tool("losetup", "mount"), "--list", "--json", "--output",
               "NAME,BACK-INO,BACK-MAJ:MIN", device], timeout=TIMEOUT, check=False).stdout
    try:
        entry = json.loads(out)["loopdevices"][0]
        major, minor = (int(x) for x in str(entry["back-maj:min"]).split(":"))
        return LoopBacking(path, (major, minor), int(entry["back-ino"]))
    except (ValueError, KeyError, IndexError, TypeError):
        return None  # detached between the two reads


def same_inode(backing: LoopBacking, st: os.stat_result) -> bool:
    return backing.dev == (os.major(st.st_dev), os.minor(st.st_dev)) and backing.ino == st.st_ino


def attach_loop(backing: str | int, read_only: bool) -> str:
    """A free loop device attached to the file ``backing`` (a path, or an open fd, even
    ``O_PATH``: ``losetup`` then opens ``/dev/fd/N``, that very inode); its ``/dev/loopN``."""
    path, fds = (f"/dev/fd/{backing}", (backing,)) if isinstance(backing, int) else (backing, ())
    argv = [require_tool("losetup", "mount"), "--find", "--show"]
    out = run([*argv, *(["--read-only"] if read_only else []), "--", path],
              timeout=TIMEOUT, pass_fds=fds).stdout
    return validate_loop_device(out.decode(errors="replace").strip())


def detach_loop(device: str, verify: Callable[[LoopBacking], object] = lambda _: None) -> bool:
    """Detach ``device`` once ``verify`` (the root helper's ownership check) accepted what
    backs it; False when it was not attached."""
    backing = loop_backing(device)
    if backing is None:
        return False
    verify(backing)
    run([require_tool("losetup", "mount"), "--detach", device], timeout=TIMEOUT)
    return True


def force_detach(device: str) -> None:
    """``losetup --detach``, whatever the kernel reports of ``device`` (cleanup paths)."""
    run([require_tool("losetup", "mount"), "--detach", device], timeout=TIMEOUT, check=False)


def loop_devno(device: str) -> tuple[int, int]:
    """The block device number of loop ``device`` (``/sys/block/loopN/dev``)."""
    text = (SYS_BLOCK / validate_loop_device(device).removeprefix("/dev/") / "dev").read_text()
    major, minor = (int(x) for x in text.strip().split(":"))
    return major, minor


def have_device_mapper() -> bool:
    """The kernel's device-mapper is there (``/dev/mapper/control`` alone is not enough:
    ``dmsetup`` makes that node even where the driver is missing)."""
    try:
        return any(line.split()[1:] == ["device-mapper"]
                   for line in Path("/proc/misc").read_text().splitlines())
    except OSError:
        return False


def snapshot_table(origin: str, cow: str, sectors: int) -> str:
    """The dm table of a non-persistent snapshot of ``origin`` writing to ``cow``."""
    return f"0 {sectors} snapshot {origin} {cow} N {SNAPSHOT_CHUNK}"


def device_sectors(device: str) -> int:
    name = validate_loop_device(device).removeprefix("/dev/")
    return int((SYS_BLOCK / name / "size").read_text())


def snapshot_uuid(uid: int, name: str) -> str:
    """The dm uuid a snapshot made for ``uid`` carries (DM_UUID_LEN is 129)."""
    return f"BANGER-{uid}-{name}"


def create_snapshot(name: str, origin: str, cow: str, uid: int) -> str:
    """dm-snapshot ``name`` of loop ``origin`` over loop ``cow``, made for ``uid``; its
    mapper path."""
    table = snapshot_table(origin, cow, device_sectors(origin))
    run([require_tool("dmsetup", "dmsetup"), "create", name, "--uuid", snapshot_uuid(uid, name),
         "--table", table], timeout=TIMEOUT)
    return validate_mapper_path(MAPPER_DIR + name)


def snapshot_made_for(name: str, uid: int) -> bool:
    """True when dm device ``name`` exists and was made for ``uid`` (its uuid), False when
    there is none; ``Forbidden`` when it is another's. One ``dmsetup info`` answers both."""
    proc = run([require_tool("dmsetup", "dmsetup"), "info", "-c", "--noheadings", "-o", "uuid",
                name], timeout=TIMEOUT, check=False)
    if proc.returncode != 0:
        return False  # "Device does not exist."
    if proc.stdout.decode(errors="replace").strip() != snapshot_uuid(uid, name):
        raise Forbidden(f"dm device {name} was not made by banger for uid {uid}",
                        hint="banger removes only the snapshots it made for this user")
    return True


def remove_snapshot(name: str, uid: int, verify: Callable[[], object] = lambda: None) -> bool:
    """Remove dm device ``name`` made for ``uid`` once ``verify`` (the root helper's check of
    what it is built on) passed; False when there is none."""
    if not snapshot_made_for(name, uid):
        return False
    verify()
    run([require_tool("dmsetup", "dmsetup"), "remove", name], timeout=TIMEOUT)
    return True


def parse_deps(text: str) -> list[tuple[int, int]]:
    """The device numbers in ``dmsetup deps`` output: ``2 dependencies : (7, 1) (7, 0)``;
    ``InternalError`` when the text is not that or the count disagrees with the list."""
    m = DEPS_RE.fullmatch(text)
    deps = [(int(a), int(b)) for a, b in re.findall(r"\((\d+), (\d+)\)", m[2])] if m else []
    if m is None or int(m[1]) != len(deps):
        raise InternalError(f"unexpected dmsetup deps output {text[:120]!r}")
    return deps


def snapshot_deps(name: str) -> list[tuple[int, int]]:
    """The device numbers dm device ``name`` is built on."""
    out = run([require_tool("dmsetup", "dmsetup"), "deps", name], timeout=TIMEOUT).stdout
    return parse_deps(out.decode(errors="replace"))


def loop_of_devno(dm_name: str, devno: tuple[int, int]) -> str:
    """The ``/dev/loopN`` with number ``devno`` that dm device ``dm_name`` is built on;
    ``Forbidden`` naming ``dm_name`` when it is not a loop device."""
    refused = Forbidden(f"dm device {dm_name} is built on {devno[0]}:{devno[1]}, not a loop "
                        "device", hint="banger acts only on snapshots over its loop devices")
    if devno[0] != LOOP_MAJOR:
        raise refused
    try:
        name = os.path.basename(os.readlink(SYS_DEV_BLOCK / f"{devno[0]}:{devno[1]}"))
        return validate_loop_device(f"/dev/{name}")
    except (OSError, InvalidInput):
        raise refused from None
