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
file is the very inode it checked.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import InvalidInput
from banger.host.run import require_tool, run

TIMEOUT = 30.0
LOOP_RE = re.compile(r"/dev/loop(0|[1-9][0-9]{0,5})")
DM_PREFIX = "banger-"
DM_NAME_RE = re.compile(rf"{DM_PREFIX}[a-z0-9][a-z0-9-]{{0,62}}")
MAPPER_DIR = "/dev/mapper/"
SYS_BLOCK = Path("/sys/block")
SNAPSHOT_CHUNK = 8  # sectors: 4 KiB copy-on-write chunks


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_loop_device(device: object) -> str:
    """``/dev/loopN``, nothing else (no other block device, no path games)."""
    if not isinstance(device, str) or not LOOP_RE.fullmatch(device):
        raise InvalidInput(f"invalid loop device {_show(device)}",
                           hint="a loop device is /dev/loopN")
    return device


def validate_dm_name(name: object) -> str:
    """A dm device name of banger's: ``banger-`` then 1-63 of ``[a-z0-9-]``."""
    if not isinstance(name, str) or not DM_NAME_RE.fullmatch(name):
        raise InvalidInput(f"invalid dm name {_show(name)}",
                           hint=f"a dm name is {DM_PREFIX} then 1-63 of a-z, 0-9 and '-'")
    return name


def validate_mapper_path(path: object) -> str:
    """``/dev/mapper/<dm name of banger's>``."""
    if not isinstance(path, str) or not path.startswith(MAPPER_DIR):
        raise InvalidInput(f"invalid mapper path {_show(path)}",
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
        path = sys_file.read_text().rstrip("\n")
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


def attach_loop(backing: str, read_only: bool) -> str:
    """A free loop device attached to the file ``backing``; its ``/dev/loopN``."""
    argv = [require_tool("losetup", "mount"), "--find", "--show"]
    out = run([*argv, *(["--read-only"] if read_only else []), "--", backing],
              timeout=TIMEOUT).stdout
    return validate_loop_device(out.decode(errors="replace").strip())


def detach_loop(device: str) -> bool:
    """Detach ``device``; False when it was not attached."""
    if loop_backing(device) is None:
        return False
    run([require_tool("losetup", "mount"), "--detach", device], timeout=TIMEOUT)
    return True


def have_device_mapper() -> bool:
    return Path("/dev/mapper/control").exists()


def snapshot_table(origin: str, cow: str, sectors: int) -> str:
    """The dm table of a non-persistent snapshot of ``origin`` writing to ``cow``."""
    return f"0 {sectors} snapshot {origin} {cow} N {SNAPSHOT_CHUNK}"


def device_sectors(device: str) -> int:
    name = validate_loop_device(device).removeprefix("/dev/")
    return int((SYS_BLOCK / name / "size").read_text())


def create_snapshot(name: str, origin: str, cow: str) -> str:
    """dm-snapshot ``name`` of loop ``origin`` over loop ``cow``; its mapper path."""
    table = snapshot_table(origin, cow, device_sectors(origin))
    run([require_tool("dmsetup", "dmsetup"), "create", name, "--table", table],
        timeout=TIMEOUT)
    return validate_mapper_path(MAPPER_DIR + name)


def snapshot_exists(name: str) -> bool:
    return run([require_tool("dmsetup", "dmsetup"), "info", name], timeout=TIMEOUT,
               check=False).returncode == 0


def remove_snapshot(name: str) -> bool:
    """Remove dm device ``name``; False when there is none."""
    if not snapshot_exists(name):
        return False
    run([require_tool("dmsetup", "dmsetup"), "remove", name], timeout=TIMEOUT)
    return True


def parse_deps(text: str) -> list[str]:
    """The devices in ``dmsetup deps -o devname`` output: ``2 dependencies : (loop1) (loop0)``."""
    return [f"/dev/{m}" for m in re.findall(r"\(([A-Za-z0-9]+)\)", text.partition(":")[2])]


def snapshot_loops(name: str) -> list[str]:
    """The devices dm device ``name`` is built on."""
    out = run([require_tool("dmsetup", "dmsetup"), "deps", "-o", "devname", name],
              timeout=TIMEOUT).stdout
    return parse_deps(out.decode(errors="replace"))
