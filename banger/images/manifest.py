"""``image.json``: what an image directory holds and how it was made.

Written atomically (temp + fsync + rename) next to ``rootfs.ext4`` and
``work-seed.ext4``; the store keeps a copy in the image row.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from banger.core.errors import StoreError
from banger.host.files import atomic_write_text

MANIFEST_NAME = "image.json"
ROOTFS_NAME = "rootfs.ext4"
WORK_SEED_NAME = "work-seed.ext4"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ImageManifest:
    """The contents of ``image.json``."""

    id: str
    name: str
    source: str
    kernel_name: str | None
    packages: tuple[str, ...] = ()
    rootfs_bytes: int = 0
    work_seed_bytes: int = 0
    rootfs_sha256: str = ""
    init_profile: str = "lean"
    init: str = "/usr/lib/banger/init"
    built_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    build_seconds: float = 0.0
    format: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["packages"] = list(self.packages)
        data["built_at"] = self.built_at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageManifest:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["packages"] = tuple(values.get("packages") or ())
        if "built_at" in values:
            values["built_at"] = datetime.fromisoformat(values["built_at"])
        return cls(**values)


def write_manifest(image_dir: Path, manifest: ImageManifest) -> Path:
    """Write ``image_dir/image.json`` atomically."""
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
    return atomic_write_text(image_dir / MANIFEST_NAME, text)


def read_manifest(image_dir: Path) -> ImageManifest:
    """Read ``image_dir/image.json``; StoreError when missing or malformed."""
    path = image_dir / MANIFEST_NAME
    try:
        return ImageManifest.from_json(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise StoreError(
            f"{path} is missing", hint="rebuild or re-import the image"
        ) from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(
            f"{path} is not a valid image manifest: {exc}", hint="rebuild or re-import the image"
        ) from exc
