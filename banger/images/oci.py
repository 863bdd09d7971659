"""OCI registry pulls through skopeo, the digest-addressed blob cache, and OCI layouts.

Blobs live in ``<cache_dir>/oci/blobs/sha256/<hex>`` (skopeo's shared blob dir
format) so repeated pulls reuse them. A pull holds a shared ``flock`` on the
cache while it copies and while its blobs are read; a prune holds it exclusive.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from banger.core.errors import Conflict, InvalidInput, NotFound
from banger.host import skopeo
from banger.host.files import flock_wait, open_nofollow
from banger.images.oci_schema import (
    Descriptor,
    ImageConfig,
    M,
    ManifestKind,
    OciIndex,
    OciManifest,
    Platform,
    parse,
)

Progress = Callable[[str], None]

DEFAULT_REGISTRY = "docker.io"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
PULL_TIMEOUT_S = 3600

# The docker reference grammar (distribution/reference), anchored pieces.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE_RE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_NAME_MAX = 255


@dataclass(frozen=True)
class OciRef:
    """A parsed, normalised image reference (``docker.io/library/debian:bookworm``)."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def host(self) -> str:
        """The registry host without its port (``[::1]`` keeps its brackets)."""
        if self.registry.startswith("["):
            return self.registry[: self.registry.index("]") + 1]
        return self.registry.rsplit(":", 1)[0]

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


@dataclass(frozen=True)
class PulledImage:
    ref: OciRef
    layout_dir: Path
    manifest_digest: str


def parse_reference(ref: str) -> OciRef:
    """Parse ``ref`` by the docker reference grammar; raise ``InvalidInput`` if malformed."""
    text = ref.removeprefix("docker://")
    match = _REFERENCE_RE.fullmatch(text)
    if match is None or len(match["path"]) + len(match["domain"] or "") + 1 > _NAME_MAX:
        raise InvalidInput(
            f"invalid image reference {ref!r}",
            hint="use [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST], lower-case repository,"
            " e.g. docker.io/library/debian:bookworm",
        )
    domain, path = match["domain"], match["path"]
    # Like docker: a first component is a registry only if it looks like a host.
    if domain is not None and not ("." in domain or ":" in domain or domain == "localhost"):
        path = f"{domain}/{path}"
        if not re.fullmatch(_PATH_COMPONENT, domain):
            raise InvalidInput(
                f"invalid image reference {ref!r}: repository must be lower-case",
                hint="write the repository name in lower case",
            )
        domain = None
    registry = domain or DEFAULT_REGISTRY
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        registry = DEFAULT_REGISTRY
        if "/" not in path:
            path = f"library/{path}"
    tag = match["tag"]
    if tag is None and match["digest"] is None:
        tag = "latest"
    return OciRef(registry, path, tag, match["digest"])


def blob_dir(cache_dir: Path) -> Path:
    """The shared blob directory under the banger cache dir (``<cache>/oci/blobs``)."""
    return cache_dir / "oci" / "blobs"


def blob_path(blobs: Path, digest: str) -> Path:
    """The file of ``digest`` (``sha256:<hex>``) inside a blob directory."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise InvalidInput(
            f"unsupported or malformed digest {digest!r}", hint="only sha256 digests are supported"
        )
    return blobs / algo / hexpart


@contextlib.contextmanager
def blob_cache_lock(
    cache_dir: Path, *, exclusive: bool = False, wait_s: float = 30.0
) -> Iterator[None]:
    """Hold the blob cache lock: shared for pulls and readers, exclusive for prune."""
    lock_file = cache_dir / "oci" / "cache.lock"
    lock_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = open_nofollow(lock_file, os.O_RDWR | os.O_CREAT)
    try:
        if not flock_wait(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, wait_s=wait_s):
            raise Conflict(
                "the OCI blob cache is busy ("
                + ("an image pull is running" if exclusive else "a prune is running")
                + ")",
                hint="retry when it has finished",
            )
        yield
    finally:
        os.close(fd)


def host_oci_arch() -> str:
    """The OCI architecture name of this host (``amd64`` on x86-64)."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "amd64")


def skopeo_source(ref: OciRef) -> skopeo.Source:
    """What skopeo copies for ``ref``: this host's architecture, TLS off only on loopback."""
    # Plain HTTP and self-signed certificates only on this machine's loopback.
    return skopeo.Source(str(ref), ref.registry, ref.repository, host_oci_arch(),
                         tls_verify=not ref.is_loopback)


def pull_oci(
    ref: str, dest_layout_dir: Path, cache_dir: Path, *, progress: Progress | None = None
) -> PulledImage:
    """Copy ``ref`` from its registry into an OCI layout whose blobs live in the cache."""
    parsed = parse_reference(ref)
    skopeo.require_skopeo()
    if ":" in os.fspath(dest_layout_dir):
        raise InvalidInput(
            f"layout directory {dest_layout_dir} contains ':'",
            hint="choose a cache directory without ':' in its path",
        )
    blobs = blob_dir(cache_dir)
    blobs.mkdir(parents=True, exist_ok=True)
    dest_layout_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(f"pull: fetching {parsed}")
    with (
        blob_cache_lock(cache_dir),
        tempfile.TemporaryDirectory(dir=cache_dir / "oci", prefix="tmp-") as tmp,
    ):
        digest = skopeo.copy_to_layout(skopeo_source(parsed), dest_layout_dir, blobs=blobs,
                                       tmpdir=Path(tmp), timeout=PULL_TIMEOUT_S)
    if progress:
        progress(f"pull: fetched {parsed} ({digest[:19]})")
    return PulledImage(parsed, dest_layout_dir, digest)


# --- OCI layouts -------------------------------------------------------------

_LAYOUT_HINT = "pull the image again, or export it again with `skopeo copy ... oci:DIR`"


@dataclass(frozen=True)
class LayerBlob:
    """One layer of an image: how to open its bytes and what they must hash to."""

    name: str
    open: Callable[[], IO[bytes]]
    digest: str | None = None  # sha256 of the bytes as stored (maybe compressed)
    diff_id: str | None = None  # sha256 of the uncompressed tar


def _find_blob(blob_dirs: Sequence[Path], digest: str) -> Path:
    for d in blob_dirs:
        p = blob_path(d, digest)
        if p.is_file():
            return p
    raise NotFound(
        f"OCI blob {digest} is missing", hint="the layout is incomplete: pull or export it again"
    )


def _read_blob(blob_dirs: Sequence[Path], digest: str) -> bytes:
    data = _find_blob(blob_dirs, digest).read_bytes()
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise InvalidInput(f"OCI blob {digest} is corrupt", hint="pull or export the image again")
    return data


def _parse_blob(model: type[M], data: bytes, digest: str) -> M:
    return parse(model, data, f"blob {digest}", hint=_LAYOUT_HINT)


def _pick_manifest(descriptors: Sequence[Descriptor]) -> Descriptor:
    arch = host_oci_arch()
    for d in descriptors:
        plat = d.platform or Platform()
        if plat.os == "linux" and plat.architecture in (None, arch):
            return d
    raise NotFound(
        f"the OCI layout has no linux/{arch} image",
        hint="export or pull the image for this architecture",
    )


def _resolve_manifest(blob_dirs: Sequence[Path], desc: Descriptor) -> OciManifest:
    """Follow nested indexes (a manifest list inside the layout's index) to an image manifest."""
    for _ in range(4):
        data = _read_blob(blob_dirs, desc.digest)
        if not _parse_blob(ManifestKind, data, desc.digest).is_index:
            return _parse_blob(OciManifest, data, desc.digest)
        desc = _pick_manifest(_parse_blob(OciIndex, data, desc.digest).manifests)
    raise InvalidInput("OCI index nesting is too deep", hint="export the image again")


def read_oci_layout(layout_dir: Path, blob_dirs: Sequence[Path] = ()) -> tuple[LayerBlob, ...]:
    """Resolve ``index.json`` -> manifest -> config to the ordered layers of an OCI layout."""
    dirs = [layout_dir / "blobs", *blob_dirs]
    try:
        index_json = (layout_dir / "index.json").read_bytes()
    except OSError as exc:
        raise InvalidInput(
            f"{layout_dir} is not an OCI layout: unreadable index.json",
            hint="give a directory written by `skopeo copy ... oci:DIR` or `docker save`",
        ) from exc
    index = parse(OciIndex, index_json, f"{layout_dir}/index.json", hint=_LAYOUT_HINT)
    manifest = _resolve_manifest(dirs, _pick_manifest(index.manifests))
    cfg = manifest.config.digest
    config = _parse_blob(ImageConfig, _read_blob(dirs, cfg), cfg)
    layers = []
    for i, layer in enumerate(manifest.layers):
        path = _find_blob(dirs, layer.digest)
        layers.append(
            LayerBlob(
                name=f"layer {i + 1} ({layer.digest[:19]})",
                open=lambda p=path: open(p, "rb"),  # type: ignore[misc]
                digest=layer.digest,
                diff_id=config.diff_id(i),
            )
        )
    return tuple(layers)


# --- cache prune -------------------------------------------------------------


def prune_blob_cache(cache_dir: Path, *, dry_run: bool, wait_s: float = 30.0) -> tuple[int, int]:
    """Delete every cached blob; return (bytes, blobs) freed or that would be.

    Stored images are flattened ext4 files: no cached blob is needed after a pull.
    """
    blobs = blob_dir(cache_dir)
    if not blobs.exists():
        return 0, 0
    lock = contextlib.nullcontext() if dry_run else blob_cache_lock(
        cache_dir, exclusive=True, wait_s=wait_s
    )
    freed_bytes = freed_blobs = 0
    with lock:
        for algo_dir in sorted(p for p in blobs.iterdir() if p.is_dir()):
            for blob in sorted(algo_dir.iterdir()):
                if not blob.is_file():
                    continue
                freed_bytes += blob.stat().st_size
                freed_blobs += 1
                if not dry_run:
                    blob.unlink(missing_ok=True)
        if not dry_run:
            # Leftovers of interrupted pulls; no pull is running while we hold the lock.
            for tmp in (cache_dir / "oci").glob("tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
    return freed_bytes, freed_blobs
