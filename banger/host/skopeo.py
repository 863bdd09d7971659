"""Copying OCI images from registries with skopeo, and what its failures mean.

``copy_to_layout`` fetches an image into an OCI layout whose blobs live in a
shared blob directory; skopeo's stderr is mapped to banger's typed errors
(``NotFound``, ``Unavailable``) so a user sees why, not skopeo's words.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import BangerError, NotFound, Unavailable
from banger.host.run import CommandError, require_tool, run

LAYOUT_TAG = "banger"
_NETWORK_ERRORS = ("connection refused", "no such host", "i/o timeout", "network is unreachable",
                   "tls handshake", "x509:", "dial tcp", "timeout exceeded", "server gave http")


@dataclass(frozen=True)
class Source:
    """What to copy: a normalised reference and its parts, for argv and error messages."""

    ref: str  # registry/repository[:tag][@digest]
    registry: str
    repository: str
    arch: str  # the OCI architecture to pick from a multi-arch index
    tls_verify: bool = True


def require_skopeo() -> str:
    return require_tool("skopeo", "skopeo")


def copy_argv(
    skopeo: str, src: Source, layout: Path, *, blobs: Path, tmpdir: Path, digestfile: Path
) -> list[str]:
    """The skopeo command that copies ``src`` into the OCI layout ``layout`` sharing ``blobs``."""
    argv = [
        skopeo,
        "--override-arch", src.arch,
        "--override-os", "linux",
        "--tmpdir", os.fspath(tmpdir),
        "copy",
        "--retry-times", "2",
        "--dest-shared-blob-dir", os.fspath(blobs),
        "--digestfile", os.fspath(digestfile),
    ]  # fmt: skip
    if not src.tls_verify:
        argv.append("--src-tls-verify=false")
    return [*argv, f"docker://{src.ref}", f"oci:{os.fspath(layout)}:{LAYOUT_TAG}"]


def classify_error(src: Source, stderr: str) -> BangerError | None:
    """Map skopeo's stderr to a typed error, or ``None`` when it is not recognised."""
    text = stderr.lower()
    if "no image found in" in text and ("manifest list" in text or "image index" in text):
        return NotFound(
            f"{src.ref} has no linux/{src.arch} image",
            hint="pick a tag published for this architecture",
        )
    if any(s in text for s in ("manifest unknown", "name unknown", "not found", "404")):
        return NotFound(
            f"image {src.ref} not found in {src.registry}",
            hint=f"check the tag: skopeo list-tags docker://{src.registry}/{src.repository}",
        )
    if any(s in text for s in ("unauthorized", "authentication required", "denied", "401")):
        return NotFound(
            f"image {src.ref} not found or access denied by {src.registry}",
            hint=f"check the name, or log in: skopeo login {src.registry}",
        )
    if any(s in text for s in _NETWORK_ERRORS):
        return Unavailable(
            f"cannot reach registry {src.registry}",
            hint="check the network, proxy and registry address, then retry",
        )
    return None


def copy_to_layout(
    src: Source, layout: Path, *, blobs: Path, tmpdir: Path, timeout: float
) -> str:
    """Copy ``src`` into ``layout`` (blobs in ``blobs``); return the manifest digest."""
    digestfile = tmpdir / "digest"
    argv = copy_argv(require_skopeo(), src, layout, blobs=blobs, tmpdir=tmpdir,
                     digestfile=digestfile)
    try:
        run(argv, timeout=timeout)
    except CommandError as exc:
        typed = classify_error(src, exc.stderr_tail)
        if typed is not None:
            raise typed from exc
        raise
    return digestfile.read_text().strip()
