"""The host end of the control channel: one line out, one line back (docs/snapshots.md).

QEMU listens on the VM's ``agent.sock`` (a chardev socket wired to the
virtio-serial port ``banger.agent``); the guest agent
(``banger/guest/files/usr/lib/banger/agent``) answers. A guest is not trusted:
a reply is one line of at most ``MAX_REPLY`` printable ASCII bytes, within a
deadline, or a ``GuestError``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from banger.core.errors import GuestError, HostToolError

MAX_REPLY = 512
CONNECT_TIMEOUT = 5.0


class Channel:
    """A connection to one VM's agent socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, path: Path, *, timeout: float = CONNECT_TIMEOUT) -> Channel:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(
                    os.fspath(path), limit=MAX_REPLY + 1)
        except (OSError, TimeoutError) as exc:
            raise HostToolError(f"cannot reach the VM's control channel {path}: {exc!r}") from exc
        return cls(reader, writer)

    async def request(self, line: str, *, timeout: float) -> str:
        """Send ``line``; return the guest's one-line reply (validated, without the newline)."""
        if "\n" in line or not line.isascii():
            raise ValueError("a request is one ASCII line")
        self._writer.write(line.encode() + b"\n")
        try:
            async with asyncio.timeout(timeout):
                await self._writer.drain()
                raw = await self._reader.readuntil(b"\n")
        except TimeoutError as exc:
            raise GuestError(f"the guest agent did not answer {line.split()[0]!r} "
                             f"within {timeout:.0f} s") from exc
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            raise GuestError(f"the guest agent's answer to {line.split()[0]!r} was cut off or "
                             f"too long: {exc!r}") from exc
        reply = raw[:-1].decode("ascii", "replace")
        if not reply.isprintable() or not reply.isascii():
            raise GuestError("the guest agent answered with unprintable bytes")
        return reply

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass
