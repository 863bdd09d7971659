"""Extract the uncompressed ELF ``vmlinux`` from a bzImage, for Firecracker.

The same idea as the kernel's ``scripts/extract-vmlinux``: find the
compressed payload, decompress it, and keep the result if it is an ELF. The
x86 boot header names the payload's offset and length (boot protocol 2.08+),
so that is tried first; otherwise every compression magic in the file is.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from banger.core.errors import InvalidInput
from banger.host.files import write_private

ELF_MAGIC = b"\x7fELF"
_LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
_LZ4_LEGACY_BLOCK = 8 << 20  # the legacy format's fixed uncompressed block size
_SETUP_SECTS = 0x1F1
_HDR_MAGIC_AT = 0x202
_PAYLOAD_AT = 0x248


def _gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(data)


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)


def _unlzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data)


def _bunzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


def _unzstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _unlz4_legacy(data: bytes) -> bytes:
    """Decode LZ4's legacy frame (what the kernel uses): magic, then size-prefixed blocks."""
    import lz4.block

    out = bytearray()
    pos = len(_LZ4_LEGACY_MAGIC)
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if data[pos : pos + 4] == _LZ4_LEGACY_MAGIC:
            pos += 4  # concatenated legacy streams
            continue
        if size == 0 or pos + 4 + size > len(data):
            break  # trailing bytes (the kernel appends the uncompressed size)
        try:
            out += lz4.block.decompress(
                data[pos + 4 : pos + 4 + size], uncompressed_size=_LZ4_LEGACY_BLOCK
            )
        except lz4.block.LZ4BlockError:
            if not out:
                raise
            break
        pos += 4 + size
    return bytes(out)


# Magic -> decoder, in the order extract-vmlinux tries them.
DECODERS: tuple[tuple[str, bytes, Callable[[bytes], bytes]], ...] = (
    ("gzip", b"\x1f\x8b\x08", _gunzip),
    ("xz", b"\xfd7zXZ\x00", _unxz),
    ("bzip2", b"BZh", _bunzip2),
    ("lzma", b"\x5d\x00\x00\x00", _unlzma),
    ("lz4", _LZ4_LEGACY_MAGIC, _unlz4_legacy),
    ("zstd", b"\x28\xb5\x2f\xfd", _unzstd),
)


def _try_decode(data: bytes) -> bytes | None:
    """Decode ``data`` if it starts with a known magic and yields an ELF, else None."""
    for _name, magic, decode in DECODERS:
        if not data.startswith(magic):
            continue
        try:
            out = decode(data)
        except Exception:  # noqa: BLE001 - a false magic hit fails in codec-specific ways
            continue
        if out.startswith(ELF_MAGIC):
            return out
    return None


def _header_payload(image: bytes) -> bytes | None:
    """The compressed payload named by the x86 boot header, or None if there is none."""
    if len(image) < _PAYLOAD_AT + 8 or image[_HDR_MAGIC_AT : _HDR_MAGIC_AT + 4] != b"HdrS":
        return None
    setup_sects = image[_SETUP_SECTS] or 4
    offset, length = struct.unpack_from("<II", image, _PAYLOAD_AT)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(image):
        return None
    return image[start : start + length]


def _magic_offsets(image: bytes) -> Iterator[int]:
    hits: set[int] = set()
    for _name, magic, _decode in DECODERS:
        pos = image.find(magic)
        while pos != -1:
            hits.add(pos)
            pos = image.find(magic, pos + 1)
    yield from sorted(hits)


def extract_vmlinux(image: bytes) -> bytes:
    """Return the ELF vmlinux inside ``image`` (a bzImage, or already an ELF)."""
    if image.startswith(ELF_MAGIC):
        return image
    payload = _header_payload(image)
    if payload is not None:
        out = _try_decode(payload)
        if out is not None:
            return out
    for pos in _magic_offsets(image):
        out = _try_decode(image[pos:])
        if out is not None:
            return out
    raise InvalidInput(
        "no vmlinux found in the kernel image: no compressed ELF payload "
        "(gzip, xz, bzip2, lzma, lz4, zstd) inside it",
        hint="import a bzImage (boot/vmlinuz-*) or an uncompressed vmlinux",
    )


def write_vmlinux(kernel: bytes, out: Path) -> int:
    """Extract the vmlinux of the kernel image ``kernel`` into ``out`` (0600); return its size."""
    elf = extract_vmlinux(kernel)
    write_private(out, elf)
    return len(elf)
