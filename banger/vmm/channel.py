"""The host end of the control channel: one line out, one line back (docs/snapshots.md).

Two transports reach the guest agent (``banger/guest/files/usr/lib/banger/agent``)
through the VM's ``agent.sock``:

- QEMU listens there (a chardev socket wired to the virtio-serial port
  ``banger.agent``): ``Channel.open`` connects at once, before a state loads.
- Firecracker's hybrid vsock listens there (``uds_path`` of ``PUT /vsock``): a
  connection says ``CONNECT <port>`` and gets ``OK <host port>`` once the guest
  accepted it. Only a running guest accepts, and a snapshot load resets every
  vsock connection, so ``Channel.vsock`` connects at its first request, after
  the clone resumed; until the agent listens (a template still booting) the VMM
  closes the connection unanswered, and the channel tries again within that
  request's deadline.

A guest is not trusted, nor is the handshake's answer: a reply is one line of
at most ``MAX_REPLY`` printable ASCII bytes, within a deadline, or a
``GuestError``.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from banger.core.errors import GuestError, HostToolError

MAX_REPLY = 512
CONNECT_TIMEOUT = 5.0
RETRY_PAUSE = 0.05  # between vsock connections the guest did not accept
_HANDSHAKE_HINT = "see the VMM's log (vmm.log in the VM's dir); a restored VM boots cold instead"
_HANDSHAKE_OK = re.compile(r"OK [0-9]{1,10}")


def _shown(raw: bytes) -> str:
    """A hostile line as one short printable string for a message."""
    text = raw.decode("ascii", "replace")
    return repr("".join(c if c.isprintable() and c.isascii() else "?" for c in text)[:60])


class Channel:
    """A connection to one VM's agent socket (made at once, or at the first request)."""

    def __init__(self, path: Path, *, vsock_port: int | None = None) -> None:
        self.path = path
        self.vsock_port = vsock_port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    async def open(cls, path: Path, *, timeout: float = CONNECT_TIMEOUT) -> Channel:
        """A channel connected now to the VMM's own listener (no handshake)."""
        channel = cls(path)
        try:
            async with asyncio.timeout(timeout):
                channel._reader, channel._writer = await channel._connect()
        except TimeoutError as exc:
            raise HostToolError(f"cannot reach the VM's control channel {path}: {exc!r}") from exc
        return channel

    @classmethod
    def vsock(cls, path: Path, port: int) -> Channel:
        """A channel to the guest's vsock ``port`` through the hybrid vsock socket ``path``,
        connected (``CONNECT port``) at its first request."""
        return cls(path, vsock_port=port)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(os.fspath(self.path), limit=MAX_REPLY + 1)
        except OSError as exc:
            raise HostToolError(
                f"cannot reach the VM's control channel {self.path}: {exc!r}") from exc

    async def _handshake(self) -> None:
        """Connect until the guest accepts ``CONNECT port`` (no answer: not listening yet,
        try again); any answer but ``OK <number>`` is a ``GuestError``."""
        request = f"CONNECT {self.vsock_port}\n".encode()
        while True:
            reader, writer = await self._connect()
            try:
                writer.write(request)
                await writer.drain()
                raw = await reader.readuntil(b"\n")
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                writer.close()
                partial = getattr(exc, "partial", b"")
                if partial:
                    raise GuestError(f"the vsock handshake on {self.path.name} was cut off "
                                     f"after {_shown(partial)}",
                                     hint=_HANDSHAKE_HINT) from exc
                await asyncio.sleep(RETRY_PAUSE)  # closed or reset unanswered: nobody listens yet
                continue
            except (asyncio.LimitOverrunError, OSError) as exc:
                writer.close()
                raise GuestError(f"the vsock handshake on {self.path.name} failed: "
                                 f"{type(exc).__name__} (an over-long or lost answer)",
                                 hint=_HANDSHAKE_HINT) from exc
            except BaseException:  # the request's deadline (or a cancel): nothing left open
                writer.close()
                raise
            if not _HANDSHAKE_OK.fullmatch(raw[:-1].decode("ascii", "replace")):
                writer.close()
                raise GuestError(f"the VM's vsock answered CONNECT {self.vsock_port} with "
                                 f"{_shown(raw[:-1])}, not OK <port>", hint=_HANDSHAKE_HINT)
            self._reader, self._writer = reader, writer
            return

    async def request(self, line: str, *, timeout: float) -> str:
        """Send ``line``; return the guest's one-line reply (validated, without the newline)."""
        if "\n" in line or not line.isascii():
            raise ValueError("a request is one ASCII line")
        verb = line.split()[0]
        try:
            async with asyncio.timeout(timeout):
                if self._writer is None:
                    if self.vsock_port is None:
                        raise HostToolError(f"the control channel {self.path} is closed")
                    await self._handshake()
                assert self._reader is not None and self._writer is not None
                self._writer.write(line.encode() + b"\n")
                await self._writer.drain()
                raw = await self._reader.readuntil(b"\n")
        except TimeoutError as exc:
            how = "" if self._writer is not None else \
                f" (it accepted no connection on vsock port {self.vsock_port})"
            raise GuestError(f"the guest agent did not answer {verb!r} "
                             f"within {timeout:.0f} s{how}") from exc
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            raise GuestError(f"the guest agent's answer to {verb!r} was cut off or "
                             f"too long: {exc!r}") from exc
        reply = raw[:-1].decode("ascii", "replace")
        if not reply.isprintable() or not reply.isascii():
            raise GuestError("the guest agent answered with unprintable bytes")
        return reply

    async def close(self) -> None:
        """Close the connection (when one was made); idempotent."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
