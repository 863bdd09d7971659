"""A stored kernel's ``manifest.json``: what it is, where it came from, a sha256 per artifact."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from banger.core.errors import StoreError
from banger.host.files import atomic_write_text, sha256_file

MANIFEST = "manifest.json"
SCHEMA = 1

# Artifact file names inside kernels_dir/<name>/.
VMLINUZ = "vmlinuz"  # bootable bzImage, for QEMU
VMLINUX = "vmlinux"  # uncompressed ELF, for Firecracker
INITRD = "initrd.img"  # banger's initramfs


@dataclass(frozen=True)
class KernelFile:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class KernelManifest:
    """The record of one stored kernel; ``path`` is its directory (not serialised)."""

    name: str
    version: str
    source: str
    created: str
    files: tuple[KernelFile, ...]
    modules: tuple[str, ...]
    path: Path = field(default=Path("."), compare=False)

    def file(self, name: str) -> Path | None:
        """The path of artifact ``name`` (``vmlinuz``, ``vmlinux``, ``initrd.img``), if stored."""
        return self.path / name if any(f.name == name for f in self.files) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "created": self.created,
            "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in self.files],
            "modules": list(self.modules),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> KernelManifest:
        try:
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                source=str(data["source"]),
                created=str(data["created"]),
                files=tuple(
                    KernelFile(str(f["name"]), str(f["sha256"]), int(f["size"]))
                    for f in data["files"]
                ),
                modules=tuple(str(m) for m in data.get("modules", [])),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"kernel manifest {path / MANIFEST} is malformed: missing or bad {exc}",
                hint=f"delete it and pull or import it again: banger kernel delete {path.name}",
            ) from exc


def describe_file(path: Path) -> KernelFile:
    return KernelFile(path.name, sha256_file(path), path.stat().st_size)


def write_manifest(manifest: KernelManifest, directory: Path) -> Path:
    """Write ``directory/manifest.json`` atomically."""
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
    return atomic_write_text(directory / MANIFEST, text)


def load_manifest(directory: Path) -> KernelManifest:
    """Read ``directory/manifest.json``; StoreError when it is missing or unreadable."""
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StoreError(
            f"kernel {directory.name} has no manifest ({path})",
            hint=f"delete it and pull or import it again: banger kernel delete {directory.name}",
        ) from exc
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"kernel manifest {path} is unreadable: {exc}",
            hint=f"delete it and pull or import it again: banger kernel delete {directory.name}",
        ) from exc
    if not isinstance(data, dict):
        raise StoreError(f"kernel manifest {path} is not a JSON object")
    return KernelManifest.from_json(data, directory)


def verify_manifest(manifest: KernelManifest) -> list[str]:
    """Names of artifacts whose size or sha256 no longer match the manifest."""
    bad = []
    for f in manifest.files:
        p = manifest.path / f.name
        if not p.is_file() or p.stat().st_size != f.size or sha256_file(p) != f.sha256:
            bad.append(f.name)
    return bad
