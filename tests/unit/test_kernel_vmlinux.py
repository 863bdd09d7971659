"""vmlinux extraction from bzImage-shaped files, on synthetic payloads of every compression."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
from collections.abc import Callable
from pathlib import Path

import lz4.block
import pytest
import zstandard

from banger.core.errors import InvalidInput
from banger.kernels.vmlinux import extract_vmlinux, write_vmlinux

# An ELF-looking blob, big enough to span several 64 KiB lz4 test blocks.
FAKE_ELF = b"\x7fELF\x02\x01\x01" + os.urandom(64) + b"kernel text " * 20000


def lz4_legacy(data: bytes, block: int = 1 << 16) -> bytes:
    out = bytearray(b"\x02\x21\x4c\x18")
    for i in range(0, len(data), block):
        chunk = lz4.block.compress(data[i : i + block], store_size=False)
        out += struct.pack("<I", len(chunk)) + chunk
    return bytes(out)


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "bzip2": bz2.compress,
    # The kernel's lzma magic (5d 00 00 00) implies a dictionary of a multiple of 16 MiB.
    "lzma": lambda d: lzma.compress(
        d, format=lzma.FORMAT_ALONE, filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 24}]
    ),
    "lz4": lz4_legacy,
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
}


def bzimage(payload: bytes, *, header: bool = True, setup_sects: int = 4) -> bytes:
    """A minimal bzImage: setup sectors with a boot header naming the payload, then it."""
    setup = bytearray((setup_sects + 1) * 512)
    prefix = b"decompressor code \x1f\x8b\x08 not really gzip " * 4  # a false magic hit
    if header:
        setup[0x1F1] = setup_sects
        setup[0x202:0x206] = b"HdrS"
        struct.pack_into("<II", setup, 0x248, len(prefix), len(payload))
    # Like the kernel, append the uncompressed size after the payload.
    return bytes(setup) + prefix + payload + struct.pack("<I", len(FAKE_ELF)) + b"\0" * 100


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_payload_named_by_the_boot_header_is_decompressed_to_the_elf(kind: str) -> None:
    assert extract_vmlinux(bzimage(COMPRESSORS[kind](FAKE_ELF))) == FAKE_ELF


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_without_a_boot_header_the_payload_is_found_by_scanning_for_magics(kind: str) -> None:
    assert extract_vmlinux(bzimage(COMPRESSORS[kind](FAKE_ELF), header=False)) == FAKE_ELF


def test_a_payload_that_decompresses_to_something_other_than_elf_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="no vmlinux found"):
        extract_vmlinux(bzimage(gzip.compress(b"not an elf" * 100)))


def test_an_uncompressed_elf_is_returned_as_is() -> None:
    assert extract_vmlinux(FAKE_ELF) == FAKE_ELF


def test_write_vmlinux_writes_the_elf_and_returns_its_size(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(bzimage(COMPRESSORS["xz"](FAKE_ELF)))
    assert write_vmlinux(kernel.read_bytes(), tmp_path / "vmlinux") == len(FAKE_ELF)
    assert (tmp_path / "vmlinux").read_bytes() == FAKE_ELF
