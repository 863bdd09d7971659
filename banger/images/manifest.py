"""``image.json``: what an image directory holds and how it was made.

Written atomically (temp + fsync + rename) next to ``rootfs.ext4`` and
``work-seed.ext4``; it documents the image on disk, and the store keeps a copy
in the image row (the daemon reads that, never the file). The model is
core/manifests.py's ``ImageManifest``.
"""

from __future__ import annotations

from pathlib import Path

from banger.core.manifests import ImageManifest
from banger.host.files import write_model

MANIFEST_NAME = "image.json"
ROOTFS_NAME = "rootfs.ext4"
WORK_SEED_NAME = "work-seed.ext4"


def write_manifest(image_dir: Path, manifest: ImageManifest) -> Path:
    """Write ``image_dir/image.json`` atomically."""
    return write_model(image_dir / MANIFEST_NAME, manifest)
