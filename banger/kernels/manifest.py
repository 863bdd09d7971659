"""A stored kernel's ``manifest.json``: what it is, where it came from, a sha256 per artifact."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from banger.core.errors import StoreError
from banger.core.validate import first_validation_error
from banger.host.files import atomic_write_text, sha256_file

MANIFEST = "manifest.json"
SCHEMA = 1

# Artifact file names inside kernels_dir/<name>/.
VMLINUZ = "vmlinuz"  # bootable bzImage, for QEMU
VMLINUX = "vmlinux"  # uncompressed ELF, for Firecracker
INITRD = "initrd.img"  # banger's initramfs


class KernelFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class KernelManifest(BaseModel):
    """The record of one stored kernel; ``path`` is its directory (not serialised)."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", validate_by_name=True, serialize_by_alias=True
    )

    schema_version: int = Field(default=SCHEMA, alias="schema")
    name: str
    version: str
    source: str
    created: str
    files: tuple[KernelFile, ...]
    modules: tuple[str, ...] = ()
    path: Path = Field(default=Path("."), exclude=True)

    def file(self, name: str) -> Path | None:
        """The path of artifact ``name`` (``vmlinuz``, ``vmlinux``, ``initrd.img``), if stored."""
        return self.path / name if any(f.name == name for f in self.files) else None


def describe_file(path: Path) -> KernelFile:
    return KernelFile(name=path.name, sha256=sha256_file(path), size=path.stat().st_size)


def write_manifest(manifest: KernelManifest, directory: Path) -> Path:
    """Write ``directory/manifest.json`` atomically."""
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    return atomic_write_text(directory / MANIFEST, text)


def load_manifest(directory: Path) -> KernelManifest:
    """Read ``directory/manifest.json``; one StoreError naming the file when missing or damaged."""
    path = directory / MANIFEST
    hint = f"delete it and pull or import it again: banger kernel delete {directory.name}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise StoreError(f"kernel {directory.name} has no manifest ({path})", hint=hint) from exc
    except OSError as exc:
        raise StoreError(
            f"kernel manifest {path} is unreadable: {exc.strerror}", hint=hint
        ) from exc
    try:
        return KernelManifest.model_validate_json(raw).model_copy(update={"path": directory})
    except ValidationError as exc:
        raise StoreError(
            f"kernel manifest {path} is malformed: {first_validation_error(exc)}", hint=hint
        ) from None

