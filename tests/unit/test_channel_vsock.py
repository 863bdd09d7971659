"""The control channel's hybrid vsock handshake (vmm/channel.py) against a fake Firecracker
vsock on a real Unix socket (tests/support/fake_firecracker.py), hostile answers included."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.core.errors import BangerError, GuestError, HostToolError
from banger.vmm.channel import Channel
from tests.support.fake_firecracker import FakeHybridVsock


@pytest.fixture
def sock() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bvs") as d:  # a short path for the socket
        yield Path(d) / "agent.sock"


async def _ask(path: Path, *lines: str, timeout: float = 5.0) -> list[str]:
    channel = Channel.vsock(path, 52)
    try:
        return [await channel.request(line, timeout=timeout) for line in lines]
    finally:
        await channel.close()


def test_the_channel_connects_at_its_first_request_then_speaks_the_agents_lines(
        sock: Path) -> None:
    fake = FakeHybridVsock(sock)

    async def scenario() -> list[str]:
        channel = Channel.vsock(sock, 52)
        await asyncio.sleep(0.1)
        assert fake.connects == 0  # nothing before the guest is asked (it may be paused)
        try:
            return [await channel.request(r, timeout=5) for r in ("ping", "quiesce")]
        finally:
            await channel.close()

    assert asyncio.run(scenario()) == ["pong", "quiesced"]
    assert fake.connects == 1


def test_connections_closed_unanswered_are_tried_again_until_the_agent_listens(
        sock: Path) -> None:
    fake = FakeHybridVsock(sock, refusals=3)  # a template's agent still starting
    assert asyncio.run(_ask(sock, "ping")) == ["pong"]
    assert fake.connects == 4


def test_connections_reset_unanswered_are_tried_again_too(sock: Path) -> None:
    fake = FakeHybridVsock(sock, refusals=2, resets=2)
    assert asyncio.run(_ask(sock, "ping")) == ["pong"]
    assert fake.connects == 3


def test_an_agent_that_never_accepts_is_a_guest_error_within_the_deadline(sock: Path) -> None:
    FakeHybridVsock(sock, refusals=10**6)
    with pytest.raises(GuestError, match="accepted no connection on vsock port 52") as err:
        asyncio.run(_ask(sock, "ping", timeout=0.5))
    assert "'ping'" in err.value.message


def test_a_paused_guest_that_never_accepts_times_out(sock: Path) -> None:
    FakeHybridVsock(sock, running=threading.Event())  # never resumed
    with pytest.raises(GuestError, match="did not answer 'identity'"):
        asyncio.run(_ask(sock, "identity banger.hostname=a", timeout=0.5))


@pytest.mark.parametrize(("answer", "message"), [
    (b"NOPE\n", "with 'NOPE', not OK <port>"),
    (b"OK\n", "not OK <port>"),
    (b"OK 99999999999\n", "not OK <port>"),  # eleven digits: no port
    (b"OK 5 extra\n", "not OK <port>"),
    (b"\x1b[2J\xffOK 1\x07\n", "not OK <port>"),  # terminal escapes, a high byte
    (b"OK " + b"9" * 700 + b"\n", "over-long"),
    (b"X" * 5000, "over-long"),  # no newline at all
    (b"OK 12", "cut off after 'OK 12'"),  # closed mid-line
])
def test_a_hostile_handshake_answer_is_one_printable_line_and_no_retry(
        sock: Path, answer: bytes, message: str) -> None:
    fake = FakeHybridVsock(sock, answer=answer)
    with pytest.raises(GuestError) as err:
        asyncio.run(_ask(sock, "ping"))
    text = err.value.message
    assert message in text, text
    assert "\n" not in text and text.isprintable() and text.isascii() and len(text) < 300
    assert "vmm.log" in (err.value.hint or "")
    assert fake.connects == 1


def test_a_missing_vsock_socket_is_a_host_tool_error_naming_it(sock: Path) -> None:
    with pytest.raises(HostToolError, match="control channel") as err:
        asyncio.run(_ask(sock, "ping"))
    assert str(sock) in err.value.message


def test_a_closed_channel_to_a_chardev_is_not_reopened(sock: Path) -> None:
    FakeHybridVsock(sock)

    async def scenario() -> None:
        channel = await Channel.open(sock)
        await channel.close()
        await channel.request("ping", timeout=1)

    with pytest.raises(BangerError, match="is closed"):
        asyncio.run(scenario())
