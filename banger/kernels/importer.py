"""Import, pull, list and delete stored kernels under ``kernels_dir/<name>/``.

A stored kernel is ``vmlinuz`` (bootable bzImage, QEMU), ``vmlinux`` (ELF,
Firecracker), ``initrd.img`` (banger's initramfs) and ``manifest.json``. It
is staged in a hidden directory beside its destination and renamed into
place, so a kernel directory is either complete or absent. A per-name lock
file serialises pulls and imports of one name: the first does the work,
the others wait and get its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from banger.core.errors import Conflict, InvalidInput, NotFound, StoreError
from banger.core.validate import validate_name
from banger.host.files import fsync_dir
from banger.host.run import require_tool, run
from banger.kernels.catalog import catalog_entry, fetch_package
from banger.kernels.initramfs import build_initramfs
from banger.kernels.manifest import (
    INITRD,
    VMLINUX,
    VMLINUZ,
    KernelManifest,
    describe_file,
    load_manifest,
    write_manifest,
)
from banger.kernels.vmlinux import ELF_MAGIC, write_vmlinux

Progress = Callable[[str], None]
METADATA = "metadata.json"


@dataclass(frozen=True)
class KernelSource:
    """Where the artifacts of a kernel lie inside an extracted package or staged directory."""

    kernel: Path
    version: str
    modules_dir: Path | None
    initrd: Path | None = None


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.-]", version)]


def _inside(root: Path, rel: object, key: str) -> Path:
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        raise InvalidInput(f"{root / METADATA}: {key!r} must be a relative path, got {rel!r}")
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise InvalidInput(f"{root / METADATA}: {key!r} points outside {root}: {rel!r}")
    if not path.exists():
        raise InvalidInput(f"{root / METADATA}: {key!r} names {rel}, which does not exist")
    return path


def _from_metadata(root: Path) -> KernelSource:
    """Read ``metadata.json``: ``kernel`` (required), ``modules``, ``initrd``, ``version``."""
    try:
        meta = json.loads((root / METADATA).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{root / METADATA} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or "kernel" not in meta:
        raise InvalidInput(
            f"{root / METADATA} must be an object with at least a 'kernel' path",
            hint='e.g. {"kernel": "boot/vmlinuz-6.1.0", "modules": "lib/modules/6.1.0"}',
        )
    kernel = _inside(root, meta["kernel"], "kernel")
    modules = _inside(root, meta["modules"], "modules") if meta.get("modules") else None
    initrd = _inside(root, meta["initrd"], "initrd") if meta.get("initrd") else None
    version = meta.get("version") or (modules.name if modules else _suffix(kernel.name))
    return KernelSource(kernel, str(version), modules, initrd)


def _suffix(filename: str) -> str:
    return filename.split("-", 1)[1] if "-" in filename else filename


def detect_layout(root: Path) -> KernelSource:
    """Find the kernel, modules and initrd in ``root``: metadata.json first, else by name."""
    if (root / METADATA).is_file():
        return _from_metadata(root)
    kernels = sorted(
        (p for p in (root / "boot").glob("vmlinu[xz]-*") if p.is_file()),
        key=lambda p: (_version_key(_suffix(p.name)), p.name.startswith("vmlinuz")),
    )
    if not kernels:
        raise InvalidInput(
            f"no kernel in {root}: expected boot/vmlinuz-VERSION or boot/vmlinux-VERSION",
            hint=f"or describe the layout in {root / METADATA}",
        )
    module_dirs = {
        p.name: p
        for base in ("lib/modules", "usr/lib/modules")
        for p in (root / base).glob("*")
        if p.is_dir()
    }
    # The newest kernel that has modules, else the newest kernel.
    with_modules = [k for k in kernels if _suffix(k.name) in module_dirs]
    kernel = (with_modules or kernels)[-1]
    version = _suffix(kernel.name)
    initrds = sorted((root / "boot").glob(f"initr*-{version}*")) or sorted(
        (root / "boot").glob("initr*")
    )
    return KernelSource(kernel, version, module_dirs.get(version), initrds[-1] if initrds else None)


@contextlib.contextmanager
def name_lock(kernels_dir: Path, name: str) -> Iterator[None]:
    """Hold the exclusive lock for kernel ``name`` (blocks while another holder works)."""
    kernels_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(kernels_dir / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _extract_deb(deb: Path, into: Path) -> None:
    dpkg_deb = require_tool("dpkg-deb", "dpkg")
    run([dpkg_deb, "-x", os.fspath(deb), os.fspath(into)], timeout=600)


def _stage(src: KernelSource, stage: Path, report: Progress) -> KernelManifest:
    """Write the artifacts of ``src`` into ``stage``; return the manifest (without source)."""
    files = []
    if src.kernel.read_bytes()[:4] != ELF_MAGIC:
        shutil.copyfile(src.kernel, stage / VMLINUZ)
        files.append(VMLINUZ)
    report("extracting vmlinux")
    write_vmlinux(src.kernel, stage / VMLINUX)
    files.append(VMLINUX)
    report("building initramfs")
    modules = build_initramfs(src.modules_dir, src.version, stage / INITRD)
    files.append(INITRD)
    report(f"initramfs loads {len(modules)} modules: {' '.join(modules) or '(none)'}")
    return KernelManifest(
        name="",
        version=src.version,
        source="",
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        files=tuple(describe_file(stage / f) for f in files),
        modules=tuple(modules),
    )


def _existing(name: str, dest: Path, source: str) -> KernelManifest | None:
    if not dest.exists():
        return None
    manifest = load_manifest(dest)
    if manifest.source != source:
        raise Conflict(
            f"kernel {name} already exists (from {manifest.source})",
            hint=f"delete it first: banger kernel delete {name}",
        )
    return manifest


def _remove_leftovers(name: str, kernels_dir: Path) -> None:
    """Drop what a crashed import of ``name`` left behind (we hold its lock, so none is live)."""
    for kind in ("staging", "extract", "deleting"):
        for d in kernels_dir.glob(f".{name}.{kind}-*"):
            shutil.rmtree(d, ignore_errors=True)


def _import_locked(
    name: str, source: Path, source_label: str, kernels_dir: Path, report: Progress
) -> KernelManifest:
    dest = kernels_dir / name
    existing = _existing(name, dest, source_label)
    if existing is not None:
        report(f"kernel {name} is already stored")
        return existing
    _remove_leftovers(name, kernels_dir)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=kernels_dir))
    try:
        with tempfile.TemporaryDirectory(prefix=f".{name}.extract-", dir=kernels_dir) as tmp:
            if source.is_dir():
                root = source
            elif source.is_file() and source.suffix == ".deb":
                report(f"extracting {source.name}")
                root = Path(tmp)
                _extract_deb(source, root)
            else:
                raise InvalidInput(
                    f"cannot import {source}: not a directory or a .deb file",
                    hint="pass --from DIR (boot/ and lib/modules/) or --from FILE.deb",
                )
            layout = detect_layout(root)
            report(f"found kernel {layout.version} ({layout.kernel.relative_to(root)})")
            staged = _stage(layout, stage, report)
        manifest = KernelManifest(
            name=name,
            version=staged.version,
            source=source_label,
            created=staged.created,
            files=staged.files,
            modules=staged.modules,
            path=dest,
        )
        write_manifest(manifest, stage)
        os.chmod(stage, 0o755)
        os.rename(stage, dest)
        fsync_dir(kernels_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    report(f"stored kernel {name} ({manifest.version})")
    return manifest


def import_kernel(
    name: str, source: Path, kernels_dir: Path, *, progress: Progress | None = None
) -> KernelManifest:
    """Import the kernel in ``source`` (a directory or a ``.deb``) as ``kernels_dir/name``.

    If ``name`` is already stored from the same source, that kernel is
    returned; from another source, Conflict.
    """
    validate_name(name, "kernel")
    source = source.absolute()
    if not source.exists():
        raise NotFound(f"{source} does not exist", hint="pass --from an existing DIR or FILE.deb")
    with name_lock(kernels_dir, name):
        return _import_locked(name, source, os.fspath(source), kernels_dir, progress or _quiet)


def pull_kernel(
    name: str, kernels_dir: Path, cache_dir: Path, *, progress: Progress | None = None
) -> KernelManifest:
    """Fetch catalog kernel ``name`` (package cached in ``cache_dir``) and import it."""
    validate_name(name, "kernel")
    entry = catalog_entry(name)
    report = progress or _quiet
    label = f"catalog:{entry.name}"
    with name_lock(kernels_dir, name):
        existing = _existing(name, kernels_dir / name, label)
        if existing is not None:
            report(f"kernel {name} is already stored")
            return existing
        deb = fetch_package(entry, cache_dir, progress=report)
        return _import_locked(name, deb, label, kernels_dir, report)


def _quiet(_msg: str) -> None:
    pass


def list_kernels(kernels_dir: Path) -> list[KernelManifest]:
    """Every stored kernel, by name; skips staging directories and unreadable entries."""
    if not kernels_dir.is_dir():
        return []
    out = []
    for d in sorted(kernels_dir.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        try:
            out.append(load_manifest(d))
        except StoreError:
            continue
    return out


def get_kernel(name: str, kernels_dir: Path) -> KernelManifest:
    """The manifest of stored kernel ``name``, or NotFound."""
    validate_name(name, "kernel")
    dest = kernels_dir / name
    if not dest.is_dir():
        raise NotFound(
            f"kernel {name} not found",
            hint=f"see banger kernel list, or pull it: banger kernel pull {name}",
        )
    return load_manifest(dest)


def delete_kernel(name: str, kernels_dir: Path) -> None:
    """Remove stored kernel ``name`` (the caller checks that no image refers to it)."""
    validate_name(name, "kernel")
    with name_lock(kernels_dir, name):
        dest = kernels_dir / name
        if not dest.is_dir():
            raise NotFound(f"kernel {name} not found", hint="see banger kernel list")
        # Rename first so the kernel vanishes at once, even if removal is slow or fails.
        doomed = Path(tempfile.mkdtemp(prefix=f".{name}.deleting-", dir=kernels_dir))
        os.rename(dest, doomed / name)
        fsync_dir(kernels_dir)
        shutil.rmtree(doomed, ignore_errors=True)
