"""Reading back the newc cpio archives banger writes (initramfs), for tests to inspect."""

from __future__ import annotations

import gzip

from banger.kernels.initramfs import CpioEntry


def read_newc(data: bytes) -> list[CpioEntry]:
    """Parse a (possibly gzip-compressed) newc archive; the inverse of ``newc_archive``."""
    if data.startswith(b"\x1f\x8b"):
        data = gzip.decompress(data)
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != b"070701":
            raise ValueError(f"not a newc cpio archive at offset {pos}")
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize + (-(110 + namesize) % 4)
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append(CpioEntry(name, mode, body, (f[9], f[10])))
