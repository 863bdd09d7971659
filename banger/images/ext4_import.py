"""Importing an existing ext4 image: probe, add guest bits, and cut a work seed, via debugfs.

Nothing is mounted. Boot validation reuses ``guest_bits.check_bootable`` on a
tiny probe tree that mirrors just the paths it looks at (symlinks included).

The image is untrusted: it must pass ``e2fsck -fn`` first, every name read
from it is checked to be one safe path component (``core.validate.safe_component``)
before it becomes part of a host path, and files are copied out one by one
to host paths banger builds (never ``rdump``, which trusts on-disk names).
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from banger.core.cancel import checkpoint
from banger.core.errors import InvalidInput
from banger.core.validate import safe_component
from banger.host.ext4 import (
    debugfs_batch,
    debugfs_quote,
    debugfs_request,
    make_ext4,
    read_ext4_file,
)
from banger.images import guest_bits
from banger.images.flatten import TYPE_BITS, Entry, EntryKind
from banger.images.guest_bits import GuestFile, Kind, parent_dirs, refuse_symlinked_parents
from banger.images.ownership import apply_ownership
from banger.images.sizing import default_work_seed_size, tree_usage

_MAX_DEPTH = 20
_NAME_HINT = "the image is damaged or hostile: repair it with e2fsck or rebuild it"
_KINDS = {bits: kind for kind, bits in TYPE_BITS.items()}


@dataclass(frozen=True)
class Ext4Node:
    name: str
    mode: int  # full i_mode
    uid: int
    gid: int

    @property
    def kind(self) -> EntryKind | None:
        return _KINDS.get(stat.S_IFMT(self.mode))


# ``ls -p`` prints /inode/mode/uid/gid/name/size/ (size empty for directories).
_LS_LINE = re.compile(rb"/(\d+)/([0-7]+)/(\d+)/(\d+)/(.*)/(\d*)/", re.DOTALL)


def list_dir(image: Path, path: str) -> dict[str, Ext4Node] | None:
    """The entries of directory ``path`` in ``image`` (``None`` when it is not one).

    Every name is checked to be one safe path component; a listing that holds
    an unsafe or duplicate name refuses the whole image.
    """
    try:
        quoted = debugfs_quote(path)
    except InvalidInput:
        return None
    out = debugfs_request(image, f"ls -p {quoted}")
    where = f"ext4 image directory {path}"
    nodes: dict[str, Ext4Node] = {}
    for raw in out.split(b"\n"):
        if not raw.strip():
            continue
        m = _LS_LINE.fullmatch(raw)
        if m is None:
            raise InvalidInput(
                f"unsafe entry name in {where}: unreadable listing line {raw[:80]!r}",
                hint=_NAME_HINT,
            )
        name = m[5].decode("utf-8", "surrogateescape")
        if name in (".", "..") and name not in nodes:
            nodes[name] = Ext4Node(name, 0, 0, 0)
            continue
        if name in nodes:
            raise InvalidInput(f"unsafe entry name {name!r} in {where}: it appears twice",
                               hint=_NAME_HINT)
        safe_component(name, where=where, hint=_NAME_HINT)
        nodes[name] = Ext4Node(name, int(m[2], 8), int(m[3]), int(m[4]))
    nodes.pop(".", None)
    nodes.pop("..", None)
    return nodes if out.strip() else None


def symlink_target(image: Path, path: str) -> str | None:
    """The target of symlink ``path`` in ``image`` (fast links from ``stat``, others read).

    A slow link's target is read through ``debugfs cat``, never dumped to a host
    file: a host path next to what the image names could be a link it planted.
    """
    out = debugfs_request(image, f"stat {debugfs_quote(path)}").decode("utf-8", "surrogateescape")
    for line in out.splitlines():
        if "Fast link dest:" in line:
            return line.split("Fast link dest:", 1)[1].strip().strip('"')
    target = read_ext4_file(image, path).decode("utf-8", "surrogateescape")
    return target or None


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
            target = symlink_target(image, cur)
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
    debugfs_batch(image, guest_script(files, existing, hostdir))


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


def _copy_out(image: Path, top: str, entries: list[Entry], dest: Path) -> None:
    """Copy the files, dirs and symlinks ``entries`` below ``top`` of ``image`` into ``dest``.

    Host paths are built here from names :func:`list_dir` checked, never by debugfs
    from on-disk names; symlinks are made last, so nothing is written through one.
    """
    dumps: list[str] = []
    links: list[Entry] = []
    for e in entries:  # parents come before their children
        host = dest / e.path
        if e.kind == EntryKind.DIR:
            host.mkdir(mode=0o700)
        elif e.kind == EntryKind.FILE:
            dumps.append(f"dump {debugfs_quote(posixpath.join(top, e.path))} "
                         f"{debugfs_quote(os.fspath(host))}")
        elif e.kind == EntryKind.SYMLINK:
            links.append(e)
    if dumps:
        debugfs_batch(image, dumps, writable=False)
    for e in links:
        checkpoint()
        target = symlink_target(image, posixpath.join(top, e.path))
        if target is not None:
            os.symlink(target, dest / e.path)


def build_work_seed_from_ext4(image: Path, seed: Path, tmp: Path) -> None:
    """Cut ``/root`` of ``image`` into a small ext4 work seed with its ownership."""
    tmp.mkdir(mode=0o700)
    src = tmp / "root"
    src.mkdir(mode=0o700)
    root = (list_dir(image, "/") or {}).get("root")
    copied = (EntryKind.FILE, EntryKind.DIR, EntryKind.SYMLINK)
    entries = [e for e in walk_ext4(image, "/root") if e.kind in copied]
    _copy_out(image, "/root", entries, src)
    entries.append(Entry("", EntryKind.DIR, root.mode & 0o7777 if root else 0o700,
                         root.uid if root else 0, root.gid if root else 0))
    checkpoint()
    make_ext4(seed, default_work_seed_size(tree_usage(src)), source_dir=src)
    apply_ownership(seed, entries)
