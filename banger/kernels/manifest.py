"""A stored kernel's ``manifest.json``: what it is, where it came from, a sha256 per artifact.

The models are core/manifests.py's ``KernelManifest`` and ``KernelFile``.
"""

from __future__ import annotations

from pathlib import Path

from banger.core.manifests import KernelFile, KernelManifest
from banger.host.files import read_model, sha256_file, write_model

MANIFEST = "manifest.json"

# Artifact file names inside kernels_dir/<name>/.
VMLINUZ = "vmlinuz"  # bootable bzImage, for QEMU
VMLINUX = "vmlinux"  # uncompressed ELF, for Firecracker
INITRD = "initrd.img"  # banger's initramfs


def describe_file(path: Path) -> KernelFile:
    return KernelFile(name=path.name, sha256=sha256_file(path), size=path.stat().st_size)


def write_manifest(directory: Path, manifest: KernelManifest) -> Path:
    """Write ``directory/manifest.json`` atomically."""
    return write_model(directory / MANIFEST, manifest)


def load_manifest(directory: Path) -> KernelManifest:
    """Read ``directory/manifest.json``; one StoreError naming the file when missing or damaged."""
    hint = f"delete it and pull or import it again: banger kernel delete {directory.name}"
    manifest = read_model(directory / MANIFEST, KernelManifest, "kernel manifest", hint=hint)
    return manifest.model_copy(update={"path": directory})
