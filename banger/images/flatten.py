"""Flatten image layers into a staging directory, keeping each entry's real metadata.

Files are written as the daemon user with owner-only modes; the uid, gid, mode
and type from the tar headers are recorded per final entry and applied to the
ext4 image later (``ownership.py``). Devices and FIFOs are never created on
disk, only recorded (debugfs ``mknod`` makes them). Parent paths are resolved
through symlinks inside the staging root, never outside it.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import IO, cast

from banger.core.cancel import checkpoint
from banger.core.errors import InvalidInput
from banger.core.validate import safe_component
from banger.host.ext4 import debugfs_quote
from banger.host.zstd import decompress_file
from banger.images.oci import LayerBlob

Progress = Callable[[str], None]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_MAX_SYMLINK_HOPS = 40
_NAME_MAX = 255
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_COPY_CHUNK = 1 << 20


class EntryKind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


TYPE_BITS = {
    EntryKind.FILE: stat.S_IFREG,
    EntryKind.DIR: stat.S_IFDIR,
    EntryKind.SYMLINK: stat.S_IFLNK,
    EntryKind.CHAR: stat.S_IFCHR,
    EntryKind.BLOCK: stat.S_IFBLK,
    EntryKind.FIFO: stat.S_IFIFO,
}
NODE_KINDS = frozenset({EntryKind.CHAR, EntryKind.BLOCK, EntryKind.FIFO})


@dataclass(frozen=True)
class Entry:
    """One final filesystem entry; ``path`` is relative to the root, ``""`` is the root."""

    path: str
    kind: EntryKind
    mode: int  # permission bits incl. setuid/setgid/sticky (0o7777)
    uid: int
    gid: int
    major: int = 0
    minor: int = 0

    @property
    def full_mode(self) -> int:
        """The whole ext4 ``i_mode`` word: file-type bits OR'ed with the permissions."""
        return TYPE_BITS[self.kind] | (self.mode & 0o7777)


ROOT_ENTRY = Entry("", EntryKind.DIR, 0o755, 0, 0)


def normalize_member_name(name: str, *, layer: str = "") -> str:
    """Turn a tar member name into a clean relative path, rejecting unsafe ones."""
    where = f" in {layer}" if layer else ""
    if name.startswith("/"):
        raise InvalidInput(
            f"unsafe entry {name!r}{where}: absolute path",
            hint="rebuild the image with relative paths in its layers",
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]  # "./a//b" is plain "a/b"
    for part in parts:
        safe_component(part, where=f"layer entry {name!r}{where}",
                       hint="rebuild the image without '..' in its layer paths")
    rel = "/".join(parts)
    check_encodable(rel, entry=name, layer=layer)
    return rel


def check_encodable(rel: str, *, entry: str, layer: str = "") -> None:
    """Refuse paths debugfs cannot address or ext4 cannot store, naming the entry."""
    where = f" in {layer}" if layer else ""
    try:
        debugfs_quote("/" + rel)
    except InvalidInput as exc:
        raise InvalidInput(
            f"unsafe entry {entry!r}{where}: name cannot be encoded for debugfs",
            hint=exc.hint,
        ) from exc
    if any(len(p.encode("utf-8", "surrogateescape")) > _NAME_MAX for p in rel.split("/")):
        raise InvalidInput(
            f"unsafe entry {entry!r}{where}: a name is longer than {_NAME_MAX} bytes",
            hint="shorten the file name in the image",
        )


_DECODE_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)
_TAR_BLOCK = 512


def corrupt_archive(what: str, why: object) -> InvalidInput:
    return InvalidInput(
        f"{what}: truncated or corrupt archive ({why})",
        hint="download or export it again; a partial copy cannot be imported",
    )


@contextlib.contextmanager
def archive_errors(what: str) -> Iterator[None]:
    """Turn a tar or decompressor complaint about ``what`` into one clear InvalidInput."""
    try:
        yield
    except _DECODE_ERRORS as exc:
        raise corrupt_archive(what, exc) from exc
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error (a full disk), not bad data
            raise
        raise corrupt_archive(what, exc) from exc  # BadGzipFile, bz2's "Invalid data stream"


class _HashingReader:
    """A read-only stream that hashes (and counts) what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> str:
        while self.read(_COPY_CHUNK):
            pass
        return "sha256:" + self.sha.hexdigest()


def _check_digest(layer: LayerBlob, what: str, expected: str | None, actual: str) -> None:
    if expected is not None and expected != actual:
        raise InvalidInput(
            f"{layer.name}: {what} mismatch (expected {expected}, got {actual})",
            hint="the blob is corrupt: prune the cache and pull or export the image again",
        )


class _Tree:
    """The staging directory plus the metadata of every entry in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: dict[str, Entry] = {"": ROOT_ENTRY}
        self.layer = ""
        self.layer_added: set[str] = set()

    # -- paths -------------------------------------------------------------

    def _abs(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def resolve_parent(self, rel: str, *, create: bool, entry: str) -> str | None:
        """Resolve the directory part of ``rel`` inside the root, following symlinks there."""
        pending = rel.split("/")[:-1]
        resolved: list[str] = []
        hops = 0
        while pending:
            comp = pending.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":  # only from symlink targets; clamp at the root like a chroot
                if resolved:
                    resolved.pop()
                continue
            cand = "/".join([*resolved, comp])
            try:
                st = os.lstat(self._abs(cand))
            except FileNotFoundError:
                if not create:
                    return None
                self._implicit_dir(cand, entry)
                resolved.append(comp)
                continue
            if stat.S_ISDIR(st.st_mode):
                resolved.append(comp)
            elif stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise InvalidInput(
                        f"entry {entry!r} in {self.layer}: too many symlinks in its path",
                        hint="fix the symlink loop in the image",
                    )
                target = os.readlink(self._abs(cand))
                if target.startswith("/"):
                    resolved = []
                pending = target.split("/") + pending
            else:
                if not create:
                    return None
                raise InvalidInput(
                    f"entry {entry!r} in {self.layer}: parent {cand!r} is not a directory",
                    hint="fix the image's layers",
                )
        return "/".join(resolved)

    def _implicit_dir(self, rel: str, entry: str) -> None:
        check_encodable(rel, entry=entry, layer=self.layer)
        os.mkdir(self._abs(rel), 0o755)
        self.entries[rel] = Entry(rel, EntryKind.DIR, 0o755, 0, 0)

    def locate(self, name: str, *, create: bool) -> str | None:
        """The real relative path for member ``name`` (its parent resolved)."""
        parent = self.resolve_parent(name, create=create, entry=name)
        if parent is None:
            return None
        base = name.rsplit("/", 1)[-1]
        rel = f"{parent}/{base}" if parent else base
        check_encodable(rel, entry=name, layer=self.layer)
        return rel

    # -- mutations ---------------------------------------------------------

    def remove(self, rel: str, *, keep: frozenset[str] | set[str] = frozenset()) -> None:
        """Delete ``rel`` and everything below it, sparing the paths in ``keep``."""
        path = self._abs(rel)
        is_dir = path.is_dir() and not path.is_symlink()
        if is_dir and not keep:
            prefix = rel + "/"
            for k in [k for k in self.entries if k.startswith(prefix)]:
                del self.entries[k]
            shutil.rmtree(path)
            self.entries.pop(rel, None)
            return
        doomed = [rel]
        if is_dir:
            prefix = rel + "/"
            doomed += [k for k in self.entries if k.startswith(prefix)]
        for k in sorted(doomed, reverse=True):  # children before their parents
            if k in keep:
                continue
            kpath = self._abs(k)
            if kpath.is_dir() and not kpath.is_symlink():
                if any(kpath.iterdir()):
                    continue  # still holds entries this layer added
                kpath.rmdir()
            elif os.path.lexists(kpath):
                kpath.unlink()
            self.entries.pop(k, None)

    def whiteout(self, name: str) -> None:
        """Apply a ``.wh.`` file: delete a lower-layer entry, or all of a dir's (opaque)."""
        parent, _, base = name.rpartition("/")
        real_parent = self.resolve_parent(name, create=False, entry=name)
        if real_parent is None:
            return
        if base == OPAQUE_MARKER:
            prefix = real_parent + "/" if real_parent else ""
            children = [
                k for k in self.entries
                if k and k.startswith(prefix) and "/" not in k[len(prefix):]
            ]
            for k in children:
                if k in self.entries:
                    self.remove(k, keep=self.layer_added)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # AUFS bookkeeping (.wh..wh.plnk etc.), not a whiteout
        victim = base[len(WHITEOUT_PREFIX):]
        rel = f"{real_parent}/{victim}" if real_parent else victim
        if rel in self.entries or os.path.lexists(self._abs(rel)):
            self.remove(rel, keep=self.layer_added)

    def _replace(self, rel: str, kind: EntryKind) -> None:
        path = self._abs(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.entries.pop(rel, None)  # a recorded device has no file on disk
            return
        if kind == EntryKind.DIR and stat.S_ISDIR(st.st_mode):
            return  # directories merge
        self.remove(rel)

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        rel = self.locate(name, create=True)
        assert rel is not None
        if rel == "":
            if member.isdir():
                self.entries[""] = Entry("", EntryKind.DIR, member.mode, member.uid, member.gid)
            return
        kind = _member_kind(member)
        if kind is None:
            return
        if member.islnk():
            self._add_hardlink(member, name, rel)
            return
        self._replace(rel, kind)
        path = self._abs(rel)
        # On disk: the real permission bits (check_bootable looks for x bits) plus the
        # owner's, so the daemon user can keep writing; setuid bits only go in the image.
        if kind == EntryKind.DIR:
            if not path.is_dir():
                os.mkdir(path, 0o700)
            os.chmod(path, (member.mode & 0o777) | 0o700)
        elif kind == EntryKind.FILE:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                src = tar.extractfile(member)
                if src is not None:
                    shutil.copyfileobj(src, out, _COPY_CHUNK)
                os.fchmod(out.fileno(), (member.mode & 0o777) | 0o600)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        elif kind == EntryKind.SYMLINK:
            os.symlink(member.linkname, path)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        self.entries[rel] = Entry(
            rel, kind, member.mode & 0o7777, member.uid, member.gid,
            member.devmajor if kind in NODE_KINDS else 0,
            member.devminor if kind in NODE_KINDS else 0,
        )
        self.layer_added.add(rel)

    def _add_hardlink(self, member: tarfile.TarInfo, name: str, rel: str) -> None:
        target_name = normalize_member_name(member.linkname, layer=self.layer)
        target = self.locate(target_name, create=False)
        source = self.entries.get(target) if target is not None else None
        if target is None or source is None or source.kind == EntryKind.DIR:
            raise InvalidInput(
                f"entry {name!r} in {self.layer}: hard link to missing {member.linkname!r}",
                hint="fix the image's layers",
            )
        self._replace(rel, source.kind)
        if source.kind not in NODE_KINDS:
            os.link(self._abs(target), self._abs(rel), follow_symlinks=False)
        self.entries[rel] = replace(source, path=rel)
        self.layer_added.add(rel)


def _member_kind(member: tarfile.TarInfo) -> EntryKind | None:
    if member.isreg():
        return EntryKind.FILE
    if member.isdir():
        return EntryKind.DIR
    if member.issym():
        return EntryKind.SYMLINK
    if member.islnk():
        return EntryKind.FILE  # refined from the link target
    if member.ischr():
        return EntryKind.CHAR
    if member.isblk():
        return EntryKind.BLOCK
    if member.isfifo():
        return EntryKind.FIFO
    return None


def _apply_tar(tree: _Tree, stream: _HashingReader) -> None:
    """Apply one uncompressed layer tar; refuse one that stops before its end-of-archive block."""
    fileobj = cast(IO[bytes], stream)
    with archive_errors(tree.layer), tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            checkpoint()
            name = normalize_member_name(member.name, layer=tree.layer)
            base = name.rpartition("/")[2]
            if base.startswith(WHITEOUT_PREFIX):
                tree.whiteout(name)
            else:
                tree.add(tar, member, name)
        end = tar.offset
        stream.drain()
    if stream.size < end + _TAR_BLOCK:  # tarfile takes a cut-off header for the end
        raise corrupt_archive(tree.layer, "it ends without the end-of-archive block")


def _decompressor(head: bytes, stream: IO[bytes]) -> IO[bytes]:
    """Wrap ``stream`` in the decompressor its magic bytes call for (or none)."""
    if head[:2] == _GZIP_MAGIC:
        return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    if head[:4] == b"\xfd7zX":
        return cast(IO[bytes], lzma.LZMAFile(stream))
    if head[:3] == b"BZh":
        return cast(IO[bytes], bz2.BZ2File(stream))
    return stream


def _apply_layer(tree: _Tree, layer: LayerBlob, workdir: Path) -> None:
    """Stream one (maybe compressed) layer into the tree, verifying its digests."""
    with layer.open() as raw:
        head = raw.read(4)
        raw.seek(0)
        if head == _ZSTD_MAGIC:
            _apply_zstd_layer(tree, layer, raw, workdir)
            return
        hashed = _HashingReader(raw)
        plain = _decompressor(head, cast(IO[bytes], hashed))
        diff = _HashingReader(plain)
        _apply_tar(tree, diff)
        diff_digest = diff.drain()
        with archive_errors(layer.name):
            _check_digest(layer, "digest", layer.digest, hashed.drain())
        _check_digest(layer, "diff_id", layer.diff_id, diff_digest)


def _apply_zstd_layer(tree: _Tree, layer: LayerBlob, raw: IO[bytes], workdir: Path) -> None:
    hashed = _HashingReader(raw)
    _check_digest(layer, "digest", layer.digest, hashed.drain())
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src = Path(tmp) / "layer.tar.zst"
        with open(src, "wb") as out:
            raw.seek(0)
            shutil.copyfileobj(raw, out, _COPY_CHUNK)
        decompress_file(src, Path(tmp) / "layer.tar")
        with open(Path(tmp) / "layer.tar", "rb") as plain:
            diff = _HashingReader(plain)
            _apply_tar(tree, diff)
            _check_digest(layer, "diff_id", layer.diff_id, diff.drain())


def flatten_layers(
    layers: Sequence[LayerBlob], staging: Path, *, progress: Progress | None = None
) -> dict[str, Entry]:
    """Apply ``layers`` in order into the empty dir ``staging``; return every final entry."""
    tree = _Tree(staging)
    workdir = staging.parent
    for i, layer in enumerate(layers):
        if progress:
            progress(f"flatten: {layer.name} ({i + 1}/{len(layers)})")
        tree.layer = layer.name
        tree.layer_added = set()
        _apply_layer(tree, layer, workdir)
    return tree.entries


def entries_under(entries: Iterable[Entry], subdir: str) -> list[Entry]:
    """The entries below ``subdir`` re-rooted at it (``subdir`` itself becomes the root)."""
    prefix = subdir + "/"
    out = []
    for e in entries:
        if e.path == subdir:
            out.append(replace(e, path=""))
        elif e.path.startswith(prefix):
            out.append(replace(e, path=e.path[len(prefix):]))
    return out
