"""Importing an existing ext4 image: probe, add guest bits, and cut a work seed, via debugfs.

Nothing is mounted. Boot validation reuses ``guest_bits.check_bootable`` on a
tiny probe tree that mirrors just the paths it looks at (symlinks included).
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from banger.core.errors import InvalidInput
from banger.host.ext4 import debugfs_quote, make_ext4
from banger.host.run import require_tool, run
from banger.images import guest_bits
from banger.images.flatten import Entry, EntryKind
from banger.images.guest_bits import GuestFile, Kind, parent_dirs, refuse_symlinked_parents
from banger.images.ownership import apply_ownership, run_debugfs_script

_MAX_DEPTH = 20
_KINDS = {
    stat.S_IFREG: EntryKind.FILE,
    stat.S_IFDIR: EntryKind.DIR,
    stat.S_IFLNK: EntryKind.SYMLINK,
    stat.S_IFCHR: EntryKind.CHAR,
    stat.S_IFBLK: EntryKind.BLOCK,
    stat.S_IFIFO: EntryKind.FIFO,
}


@dataclass(frozen=True)
class Ext4Node:
    name: str
    mode: int  # full i_mode
    uid: int
    gid: int

    @property
    def kind(self) -> EntryKind | None:
        return _KINDS.get(stat.S_IFMT(self.mode))


def _debugfs(image: Path, request: str) -> str:
    debugfs = require_tool("debugfs", "e2fsprogs")
    proc = run([debugfs, "-R", request, os.fspath(image)], timeout=60, check=False)
    return proc.stdout.decode("utf-8", "replace")


def list_dir(image: Path, path: str) -> dict[str, Ext4Node] | None:
    """The entries of directory ``path`` in ``image`` (``None`` when it is not one)."""
    try:
        quoted = debugfs_quote(path)
    except InvalidInput:
        return None
    out = _debugfs(image, f"ls -p {quoted}")
    nodes: dict[str, Ext4Node] = {}
    for line in out.splitlines():
        fields = line.split("/")
        if len(fields) < 7 or fields[5] in ("", ".", ".."):
            continue
        nodes[fields[5]] = Ext4Node(fields[5], int(fields[2], 8), int(fields[3]), int(fields[4]))
    return nodes if out.strip() else None


def _symlink_target(image: Path, path: str) -> str | None:
    out = _debugfs(image, f"stat {debugfs_quote(path)}")
    for line in out.splitlines():
        if "Fast link dest:" in line:
            return line.split("Fast link dest:", 1)[1].strip().strip('"')
    return None


def _materialize(image: Path, probe: Path, path: str, cache: dict, depth: int = 0) -> None:
    """Mirror ``path`` (and the symlinks it goes through) from ``image`` into ``probe``."""
    parts = [p for p in PurePosixPath(path).parts[1:] if p != "."]
    cur = "/"
    for i, part in enumerate(parts):
        if part == "..":
            cur = posixpath.dirname(cur)
            continue
        listing = cache.get(cur)
        if listing is None:
            listing = cache[cur] = list_dir(image, cur) or {}
        node = listing.get(part)
        if node is None:
            return
        cur = posixpath.join(cur, part)
        dest = probe / cur.lstrip("/")
        if node.kind == EntryKind.DIR:
            dest.mkdir(exist_ok=True)
        elif node.kind == EntryKind.SYMLINK:
            target = _symlink_target(image, cur)
            if target is None or depth >= _MAX_DEPTH:
                return
            if not os.path.lexists(dest):
                os.symlink(target, dest)
            base = posixpath.join(posixpath.dirname(cur), target)  # absolute target: join drops cur
            rest = "/".join(parts[i + 1 :])
            nxt = posixpath.normpath("/" + base + "/" + rest)
            _materialize(image, probe, nxt, cache, depth + 1)
            return
        elif node.kind == EntryKind.FILE and i == len(parts) - 1:
            dest.write_bytes(b"")
            os.chmod(dest, (node.mode & 0o777) | 0o600)
        else:
            return


def check_bootable_ext4(image: Path, probe: Path) -> None:
    """``check_bootable`` for an ext4 image, through a probe tree of the paths it checks."""
    probe.mkdir(mode=0o700)
    cache: dict = {}
    for _what, candidates, _pkg in guest_bits.BOOT_REQUIREMENTS:
        for path in candidates:
            _materialize(image, probe, path, cache)
    guest_bits.check_bootable(probe)


def _cd_lines(path: str) -> tuple[str, str]:
    parent, _, base = path.rpartition("/")
    return f"cd {debugfs_quote(parent or '/')}", debugfs_quote(base)


def guest_script(
    files: list[GuestFile], existing: dict[str, Ext4Node | None], hostdir: Path
) -> list[str]:
    """debugfs commands writing ``files`` into an image whose current nodes are ``existing``."""
    lines: list[str] = []
    type_bits = {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}
    made: set[str] = set()
    for n, f in enumerate(files):
        for anc in parent_dirs(f.path):
            if existing.get(anc) is None and anc not in made:
                cd, base = _cd_lines(anc)
                lines += [cd, f"mkdir {base}", "cd /", f"sif {debugfs_quote(anc)} mode 040755"]
                made.add(anc)
        made.add(f.path)
        node = existing.get(f.path)
        cd, base = _cd_lines(f.path)
        quoted = debugfs_quote(f.path)
        if node is not None and node.kind == EntryKind.DIR and f.kind is not Kind.DIR:
            raise InvalidInput(
                f"image path {f.path} is a directory; banger needs a file there",
                hint="remove it from the image, then import again",
            )
        if node is not None and not (node.kind == EntryKind.DIR and f.kind is Kind.DIR):
            lines.append(f"rm {quoted}")
        if f.kind is Kind.DIR and not (node is not None and node.kind == EntryKind.DIR):
            lines += [cd, f"mkdir {base}", "cd /"]
        elif f.kind is Kind.SYMLINK:
            lines += [cd, f"symlink {base} {debugfs_quote(f.target)}", "cd /"]
        elif f.kind is Kind.FILE:
            host = hostdir / f"{n:04d}"
            host.write_bytes(f.content)
            lines += [cd, f"write {debugfs_quote(os.fspath(host))} {base}", "cd /"]
        lines += [
            f"sif {quoted} uid {f.uid}",
            f"sif {quoted} gid {f.gid}",
            f"sif {quoted} mode 0{type_bits[f.kind] | (f.mode & 0o7777):o}",
        ]
    return lines


def write_guest_files_ext4(image: Path, files: list[GuestFile], hostdir: Path) -> None:
    """Write banger's guest files into an existing ext4 image in one debugfs batch."""
    hostdir.mkdir(mode=0o700)
    existing: dict[str, Ext4Node | None] = {}
    listings: dict[str, dict[str, Ext4Node]] = {}
    for path in {p for f in files for p in [*parent_dirs(f.path), f.path]}:
        parent, _, base = path.rpartition("/")
        parent = parent or "/"
        if parent not in listings:
            listings[parent] = list_dir(image, parent) or {}
        existing[path] = listings[parent].get(base)

    def is_symlink(path: str) -> bool:
        node = existing.get(path)  # holds every parent of every file
        return node is not None and node.kind == EntryKind.SYMLINK

    refuse_symlinked_parents(files, is_symlink)
    run_debugfs_script(image, guest_script(files, existing, hostdir))


def walk_ext4(image: Path, top: str) -> list[Entry]:
    """Every entry below directory ``top`` of ``image``, re-rooted at it."""
    out: list[Entry] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        listing = list_dir(image, posixpath.join(top, rel) if rel else top) or {}
        for name, node in sorted(listing.items()):
            kind = node.kind
            if kind is None or (rel == "" and name == "lost+found"):
                continue
            path = f"{rel}/{name}" if rel else name
            out.append(Entry(path, kind, node.mode & 0o7777, node.uid, node.gid))
            if kind == EntryKind.DIR:
                pending.append(path)
    return out


def build_work_seed_from_ext4(image: Path, seed: Path, tmp: Path) -> None:
    """Cut ``/root`` of ``image`` into a small ext4 work seed with its ownership."""
    from banger.images.importer import default_work_seed_size, tree_usage

    tmp.mkdir(mode=0o700)
    debugfs = require_tool("debugfs", "e2fsprogs")
    run([debugfs, "-R", f"rdump /root {debugfs_quote(os.fspath(tmp))}", os.fspath(image)],
        timeout=600)
    src = tmp / "root"
    src.mkdir(exist_ok=True)
    root = (list_dir(image, "/") or {}).get("root")
    entries = [e for e in walk_ext4(image, "/root") if e.kind in (
        EntryKind.FILE, EntryKind.DIR, EntryKind.SYMLINK)]
    entries.append(Entry("", EntryKind.DIR, root.mode & 0o7777 if root else 0o700,
                         root.uid if root else 0, root.gid if root else 0))
    make_ext4(seed, default_work_seed_size(tree_usage(src)), source_dir=src)
    apply_ownership(seed, entries)
