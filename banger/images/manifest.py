"""``image.json``: what an image directory holds and how it was made.

Written atomically (temp + fsync + rename) next to ``rootfs.ext4`` and
``work-seed.ext4``; the store keeps a copy in the image row.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from banger.core.errors import StoreError
from banger.core.validate import first_validation_error
from banger.host.files import atomic_write_text

MANIFEST_NAME = "image.json"
ROOTFS_NAME = "rootfs.ext4"
WORK_SEED_NAME = "work-seed.ext4"
FORMAT_VERSION = 1

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
    format: int = FORMAT_VERSION


def write_manifest(image_dir: Path, manifest: ImageManifest) -> Path:
    """Write ``image_dir/image.json`` atomically."""
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    return atomic_write_text(image_dir / MANIFEST_NAME, text)


def read_manifest(image_dir: Path) -> ImageManifest:
    """Read ``image_dir/image.json``; one StoreError naming the file when missing or damaged."""
    path = image_dir / MANIFEST_NAME
    hint = "rebuild or re-import the image"
    try:
        return ImageManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise StoreError(f"{path} is missing", hint=hint) from exc
    except OSError as exc:
        raise StoreError(f"{path} is unreadable: {exc.strerror}", hint=hint) from exc
    except ValidationError as exc:
        raise StoreError(
            f"{path} is not a valid image manifest: {first_validation_error(exc)}", hint=hint
        ) from None

