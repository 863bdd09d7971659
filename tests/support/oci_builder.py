"""Build small OCI images in Python: tar layers from specs, and an OCI layout dir."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


@dataclass
class Member:
    """One tar entry: ``kind`` is file, dir, symlink, hardlink, char, block or fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    link: str = ""
    major: int = 0
    minor: int = 0


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def layer_tar(members: list[Member]) -> bytes:
    """An uncompressed tar of ``members`` in order (PAX, so any name encodes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = _TYPES[m.kind]
            info.mode, info.uid, info.gid = m.mode, m.uid, m.gid
            info.mtime = 1_700_000_000
            info.linkname = m.link
            info.devmajor, info.devminor = m.major, m.minor
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class OciImage:
    layers: list[list[Member]] = field(default_factory=list)
    compress: bool = True

    def write_layout(self, layout: Path, tag: str = "latest") -> str:
        """Write an OCI image layout dir; return the manifest digest."""
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)

        def put(data: bytes) -> str:
            digest = _sha(data)
            (blobs / digest.split(":")[1]).write_bytes(data)
            return digest

        descs, diff_ids = [], []
        for members in self.layers:
            tar = layer_tar(members)
            diff_ids.append(_sha(tar))
            blob = gzip.compress(tar, mtime=0) if self.compress else tar
            media = LAYER_GZIP if self.compress else LAYER_TAR
            descs.append({"mediaType": media, "digest": put(blob), "size": len(blob)})
        config = json.dumps({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }).encode()
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": put(config), "size": len(config)},
            "layers": descs,
        }).encode()
        mdigest = put(manifest)
        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdigest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        }
        (layout / "index.json").write_text(json.dumps(index))
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        return mdigest


def docker_save_files(layers: list[list[Member]]) -> dict[str, bytes]:
    """The members of a ``docker save`` tar of ``layers`` (legacy layout), by name."""
    tars = [layer_tar(m) for m in layers]
    diff_ids = [_sha(t) for t in tars]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    files = {f"{d[7:19]}/layer.tar": t for d, t in zip(diff_ids, tars, strict=True)}
    files["config.json"] = config
    files["manifest.json"] = json.dumps([{"Config": "config.json", "RepoTags": ["t:1"],
                                          "Layers": list(files)[:-1]}]).encode()
    return files


def write_tar(path: Path, files: dict[str, bytes]) -> None:
    """A plain tar of regular files named by ``files``' keys."""
    with tarfile.open(path, "w") as out:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def bootable_base(extra: list[Member] | None = None, *, sshd: bool = True) -> list[Member]:
    """A layer with the placeholders banger's boot check looks for."""
    exe = b"#!/bin/sh\nexit 0\n"
    members = [
        Member("bin", "dir", mode=0o755),
        Member("sbin", "dir", mode=0o755),
        Member("usr", "dir", mode=0o755),
        Member("usr/sbin", "dir", mode=0o755),
        Member("bin/sh", data=exe, mode=0o755),
        Member("sbin/init", data=exe, mode=0o755),
        Member("usr/sbin/ip", data=exe, mode=0o755),
    ]
    if sshd:
        members.append(Member("usr/sbin/sshd", data=exe, mode=0o755))
    return members + (extra or [])
