"""What a stored image (``image.json``) and kernel (``manifest.json``) record.

Pure data shared by the store, the daemon and the wire models; reading and
writing the files is host/files.py's ``read_model``/``write_model``, called by
images/ and kernels/.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

IMAGE_FORMAT_VERSION = 1
KERNEL_SCHEMA = 1

# The guest's init goes on the kernel command line: one absolute path, no spaces.
InitPath = Annotated[str, Field(pattern=r"^/[^\s]*$", max_length=255)]


class ImageManifest(BaseModel):
    """The contents of ``image.json`` (written by us; read back as semi-trusted data)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    name: str
    source: str
    kernel_name: str | None
    packages: tuple[str, ...] = ()
    rootfs_bytes: int = Field(default=0, ge=0)
    work_seed_bytes: int = Field(default=0, ge=0)
    rootfs_sha256: str = ""
    init_profile: str = "lean"
    init: InitPath = "/usr/lib/banger/init"
    built_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    build_seconds: float = 0.0
    format: int = IMAGE_FORMAT_VERSION


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

    schema_version: int = Field(default=KERNEL_SCHEMA, alias="schema")
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
