"""Import, pull, list and delete stored kernels under ``kernels_dir/<name>/``.

A stored kernel is ``vmlinuz`` (bootable bzImage, QEMU), ``vmlinux`` (ELF,
Firecracker), ``initrd.img`` (banger's initramfs) and ``manifest.json``. It
is staged in the state dir's scratch dir (``tmp/``, same filesystem) and
renamed into place, so a kernel directory is either complete or absent. A
per-name lock file serialises pulls and imports of one name: the first does
the work, the others wait and get its result.

Every path taken from a package or directory (the kernel, the modules tree,
``modules.dep`` entries) resolves inside it or is refused
(``host.files.resolve_inside``); what is stored is owner-only (0700/0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from banger.core.cancel import checkpoint
from banger.core.errors import Conflict, InvalidInput, NotFound
from banger.core.manifests import KernelManifest
from banger.core.validate import safe_relative_path, validate_kernel_version, validate_name
from banger.host.dpkg import data_tar
from banger.host.files import (
    fsync_dir,
    make_scratch,
    name_lock,
    read_inside,
    remove_tree,
    resolve_inside,
    scratch_root,
    write_private,
)
from banger.kernels.catalog import catalog_entry, fetch_package
from banger.kernels.initramfs import build_initramfs
from banger.kernels.manifest import (
    INITRD,
    VMLINUX,
    VMLINUZ,
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
    system_map: Path | None = None

    def __post_init__(self) -> None:
        # From metadata.json or a file name: it becomes lib/modules/<version> and depmod's argument.
        validate_kernel_version(self.version, where=f"kernel {self.kernel.name}")


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.-]", version)]


def _inside(root: Path, rel: object, key: str) -> Path:
    if not isinstance(rel, str):
        raise InvalidInput(f"{root / METADATA}: {key!r} must be a relative path, got {rel!r}")
    path = resolve_inside(root, rel.strip("/") if rel.startswith("./") else rel,
                          where=f"{root / METADATA} {key!r}")
    if not path.exists():
        raise InvalidInput(f"{root / METADATA}: {key!r} names {rel}, which does not exist")
    return path


def _from_metadata(root: Path) -> KernelSource:
    """Read ``metadata.json``: ``kernel`` (required), ``modules``, ``initrd``, ``version``."""
    try:
        meta = json.loads(read_inside(root, METADATA, where=METADATA))
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
    system_map = root / "boot" / f"System.map-{version}"
    found = [kernel, module_dirs.get(version), initrds[-1] if initrds else None,
             system_map if os.path.lexists(system_map) else None]
    kernel_, modules, initrd, sysmap = (_within(root, p) for p in found)
    assert kernel_ is not None
    return KernelSource(kernel_, version, modules, initrd, sysmap)


def _within(root: Path, found: Path | None) -> Path | None:
    """``found`` (a path under ``root``) resolved, refused if a symlink takes it outside."""
    if found is None:
        return None
    return resolve_inside(root, found.relative_to(root).as_posix(), where=f"kernel source {root}")


def _name_lock(kernels_dir: Path, name: str) -> contextlib.AbstractContextManager[None]:
    """The exclusive lock for kernel ``name`` (waits while another holder works)."""
    return name_lock(scratch_root(kernels_dir) / f"kernel-{name}.lock")


def _extract_deb(deb: Path, into: Path) -> None:
    """Unpack the files of ``deb`` into ``into``, every member name checked first.

    The data tar streams from ``dpkg-deb --fsys-tarfile`` and is written here
    (not by a forked ``dpkg-deb -x`` that could outlive a killed daemon), with
    tarfile's "tar" filter on top, and hard links only to members before them:
    nothing lands outside ``into`` and nothing outside it is linked in.
    """
    where = f"package {deb.name}"
    with data_tar(deb) as data:
        try:
            with tarfile.open(fileobj=data, mode="r|") as tar:
                for member in tar:
                    checkpoint()
                    rel = member.name.removeprefix("./").rstrip("/")
                    if rel in ("", "."):
                        continue
                    member.name = safe_relative_path(rel, where=where)
                    if member.islnk():  # the "tar" filter leaves a hard link's target unchecked
                        member.linkname = safe_relative_path(
                            member.linkname.removeprefix("./"), where=f"{where}: hard link {rel}"
                        )
                    tar.extract(member, into, filter="tar")
        except (tarfile.TarError, EOFError, KeyError) as exc:
            raise InvalidInput(f"{where}: truncated or corrupt archive ({exc})",
                               hint="download the package again") from exc


def _stage(src: KernelSource, stage: Path, report: Progress) -> KernelManifest:
    """Write the artifacts of ``src`` into ``stage``; return the manifest (without source)."""
    files = []
    kernel = read_inside(src.kernel.parent, src.kernel.name, where="kernel")
    if kernel[:4] != ELF_MAGIC:
        write_private(stage / VMLINUZ, kernel)
        files.append(VMLINUZ)
    checkpoint()
    report("extracting vmlinux")
    write_vmlinux(kernel, stage / VMLINUX)
    files.append(VMLINUX)
    checkpoint()
    report("building initramfs")
    modules = build_initramfs(src.modules_dir, src.version, stage / INITRD, src.system_map)
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


def _source_root(source: Path, extract: Path, report: Progress) -> Path:
    """The tree to import from: ``source`` itself, or a .deb unpacked into ``extract``."""
    if source.is_dir():
        return source
    if source.is_file() and source.suffix == ".deb":
        report(f"extracting {source.name}")
        _extract_deb(source, extract)
        return extract
    raise InvalidInput(
        f"cannot import {source}: not a directory or a .deb file",
        hint="pass --from DIR (boot/ and lib/modules/) or --from FILE.deb",
    )


def _import_locked(
    name: str, source: Path, source_label: str, kernels_dir: Path, report: Progress
) -> KernelManifest:
    dest = kernels_dir / name
    existing = _existing(name, dest, source_label)
    if existing is not None:
        report(f"kernel {name} is already stored")
        return existing
    stage = make_scratch(kernels_dir, f"kernel-{name}.staging-")
    extract = make_scratch(kernels_dir, f"kernel-{name}.extract-")
    try:
        root = _source_root(source, extract, report)
        checkpoint()
        layout = detect_layout(root)
        report(f"found kernel {layout.version} ({layout.kernel.name})")
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
        write_manifest(stage, manifest)
        checkpoint()  # the last one: past the rename the kernel is stored
        os.rename(stage, dest)
        fsync_dir(kernels_dir)
    finally:
        remove_tree(extract)
        remove_tree(stage)
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
    kernels_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not source.exists():
        raise NotFound(f"{source} does not exist", hint="pass --from an existing DIR or FILE.deb")
    with _name_lock(kernels_dir, name):
        return _import_locked(name, source, os.fspath(source), kernels_dir, progress or _quiet)


def pull_kernel(
    name: str, kernels_dir: Path, cache_dir: Path, *, progress: Progress | None = None
) -> KernelManifest:
    """Fetch catalog kernel ``name`` (package cached in ``cache_dir``) and import it."""
    validate_name(name, "kernel")
    entry = catalog_entry(name)
    report = progress or _quiet
    label = f"catalog:{entry.name}"
    kernels_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _name_lock(kernels_dir, name):
        existing = _existing(name, kernels_dir / name, label)
        if existing is not None:
            report(f"kernel {name} is already stored")
            return existing
        deb = fetch_package(entry, cache_dir, progress=report)
        return _import_locked(name, deb, label, kernels_dir, report)


def _quiet(_msg: str) -> None:
    pass


def delete_kernel(name: str, kernels_dir: Path) -> None:
    """Remove stored kernel ``name`` (the caller checks that no image refers to it)."""
    validate_name(name, "kernel")
    with _name_lock(kernels_dir, name):
        dest = kernels_dir / name
        if not dest.is_dir():
            raise NotFound(f"kernel {name} not found", hint="see banger kernel list")
        # Rename first so the kernel vanishes at once, even if removal is slow or fails.
        doomed = make_scratch(kernels_dir, f"kernel-{name}.deleting-")
        os.rename(dest, doomed / name)
        fsync_dir(kernels_dir)
        remove_tree(doomed)
