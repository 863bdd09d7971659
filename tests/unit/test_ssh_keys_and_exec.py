"""The managed key, per-VM host keys, and SSH to a real (asyncssh) sshd on loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from banger.core.errors import GuestError, StoreError
from banger.core.sshcmd import ssh_argv
from banger.host.ssh import (
    close_master,
    control_path_for,
    ensure_ssh_key,
    fresh_host_key,
    open_master,
    ssh_exec,
    wait_for_ssh,
    write_known_hosts,
)


def test_key_is_generated_on_first_use_and_then_reused(tmp_path: Path) -> None:
    key = tmp_path / "ssh" / "id_ed25519"
    pub = ensure_ssh_key(key)
    assert pub.startswith(b"ssh-ed25519 ")
    assert (key.stat().st_mode & 0o777) == 0o600
    assert (key.parent.stat().st_mode & 0o777) == 0o700
    before = key.read_bytes()
    assert ensure_ssh_key(key) == pub and key.read_bytes() == before


def test_a_lost_public_half_is_rebuilt_from_the_private_key(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    pub = ensure_ssh_key(key)
    key.with_name("id_ed25519.pub").unlink()
    assert ensure_ssh_key(key).split()[:2] == pub.split()[:2]


@pytest.mark.parametrize(
    "content", [b"garbage", b"", b"-----BEGIN OPENSSH PRIVATE KEY-----\nbad\n"]
)
def test_a_corrupt_key_is_never_regenerated_over(tmp_path: Path, content: bytes) -> None:
    key = tmp_path / "id_ed25519"
    key.write_bytes(content)
    with pytest.raises(StoreError) as err:
        ensure_ssh_key(key)
    assert key.read_bytes() == content
    assert err.value.hint and "move it away" in err.value.hint


def test_a_host_key_is_fresh_each_time_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # re-read TMPDIR
    try:
        a_priv, a_pub = fresh_host_key("banger-image")
        b_priv, b_pub = fresh_host_key("banger-image")
    finally:
        tempfile.tempdir = None
    assert a_pub != b_pub and a_pub.startswith(b"ssh-ed25519 ")
    assert a_pub.endswith(b"banger-image\n")
    assert a_priv.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert list(tmp_path.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run_in_shell(process: asyncssh.SSHServerProcess[bytes]) -> None:
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", process.command or "true",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    process.stdout.write(out)
    process.stderr.write(err)
    process.exit(proc.returncode or 0)


@asynccontextmanager
async def fake_guest_sshd(
    port: int, host_key: Path, authorized: Path, delay: float = 0.0
) -> AsyncIterator[None]:
    """A guest's sshd stand-in that starts after ``delay`` and runs commands with /bin/sh."""

    async def start() -> asyncssh.SSHAcceptor:
        await asyncio.sleep(delay)
        return await asyncssh.listen(
            "127.0.0.1", port, server_host_keys=[str(host_key)],
            authorized_client_keys=str(authorized), process_factory=_run_in_shell,
            encoding=None,
        )  # fmt: skip

    task = asyncio.create_task(start())
    try:
        yield
    finally:
        server = await task
        server.close()
        await server.wait_closed()


@dataclass(frozen=True)
class Keys:
    client: Path
    authorized: Path
    host_key: Path
    known_hosts: Path
    port: int


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    client = tmp_path / "id_ed25519"
    (tmp_path / "authorized_keys").write_bytes(ensure_ssh_key(client))
    host_priv, host_pub = fresh_host_key("banger-vm")
    (tmp_path / "vm").mkdir()
    host_key = tmp_path / "vm" / "ssh_host_ed25519_key"
    host_key.write_bytes(host_priv)
    host_key.chmod(0o600)  # sshd refuses a host key others can read
    port = _free_port()
    write_known_hosts(tmp_path / "vm" / "known_hosts", "127.0.0.1", port, host_pub)
    return Keys(
        client=client,
        authorized=tmp_path / "authorized_keys",
        host_key=host_key,
        known_hosts=tmp_path / "vm" / "known_hosts",
        port=port,
    )


def test_wait_for_ssh_returns_once_a_late_sshd_accepts_our_key(keys: Keys) -> None:
    port = keys.port

    async def scenario() -> float:
        async with fake_guest_sshd(port, keys.host_key, keys.authorized, delay=0.4):
            start = time.monotonic()
            await wait_for_ssh(
                "127.0.0.1", port, keys.client,
                deadline=time.monotonic() + 10, known_hosts=keys.known_hosts,
            )  # fmt: skip
            return time.monotonic() - start

    waited = asyncio.run(scenario())
    assert 0.3 < waited < 3


def test_wait_for_ssh_gives_up_at_the_deadline_when_the_host_key_is_wrong(
    keys: Keys, tmp_path: Path
) -> None:
    port = keys.port
    _, other_pub = fresh_host_key("banger-vm")
    write_known_hosts(keys.known_hosts, "127.0.0.1", port, other_pub)

    async def scenario() -> None:
        async with fake_guest_sshd(port, keys.host_key, keys.authorized):
            await wait_for_ssh(
                "127.0.0.1", port, keys.client,
                deadline=time.monotonic() + 1.0, known_hosts=keys.known_hosts,
            )  # fmt: skip

    start = time.monotonic()
    with pytest.raises(GuestError, match="did not accept"):
        asyncio.run(scenario())
    assert time.monotonic() - start < 3


def test_wait_for_ssh_stops_early_when_the_vm_died(keys: Keys) -> None:
    with pytest.raises(GuestError, match="exited"):
        asyncio.run(
            wait_for_ssh(
                "127.0.0.1",
                keys.port,
                keys.client,
                deadline=time.monotonic() + 30,
                alive=lambda: False,
            )  # fmt: skip
        )


def test_exec_returns_the_exit_status_and_output_of_the_remote_command(
    keys: Keys,
) -> None:
    port = keys.port

    async def scenario() -> tuple[int, bytes, bytes]:
        async with fake_guest_sshd(port, keys.host_key, keys.authorized):
            await wait_for_ssh(
                "127.0.0.1", port, keys.client,
                deadline=time.monotonic() + 10, known_hosts=keys.known_hosts,
            )  # fmt: skip
            res = await ssh_exec(
                "127.0.0.1", port, keys.client,
                ["sh", "-c", "echo 'out put'; echo err >&2; exit 42"],
                known_hosts=keys.known_hosts,
            )  # fmt: skip
            return res.exit_status, res.stdout, res.stderr

    assert asyncio.run(scenario()) == (42, b"out put\n", b"err\n")


def test_system_ssh_with_our_argv_propagates_exit_42_without_prompting(
    keys: Keys,
) -> None:
    port = keys.port
    argv = ssh_argv(
        "127.0.0.1", port, keys.client, keys.known_hosts, command=["sh", "-c", "exit 42"]
    )

    async def scenario() -> int:
        async with fake_guest_sshd(port, keys.host_key, keys.authorized):
            await wait_for_ssh(
                "127.0.0.1", port, keys.client,
                deadline=time.monotonic() + 10, known_hosts=keys.known_hosts,
            )  # fmt: skip
            proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL)
            return await asyncio.wait_for(proc.wait(), 20)

    assert asyncio.run(scenario()) == 42


def test_open_master_leaves_one_shared_connection_that_later_ssh_reuses(
    keys: Keys, tmp_path: Path
) -> None:
    port = keys.port
    control = tmp_path / "ctl"
    connections: list[object] = []
    commands: list[str | None] = []

    class CountingServer(asyncssh.SSHServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            connections.append(conn)

    async def run(process: asyncssh.SSHServerProcess[bytes]) -> None:
        commands.append(process.command)
        await _run_in_shell(process)

    async def scenario() -> int:
        server = await asyncssh.listen(
            "127.0.0.1", port, server_host_keys=[str(keys.host_key)],
            authorized_client_keys=str(keys.authorized), process_factory=run,
            encoding=None, server_factory=CountingServer,
        )  # fmt: skip
        try:
            for _ in range(2):  # again, as a reboot does: a new master, still no session
                await open_master(
                    "127.0.0.1", port, keys.client, keys.known_hosts, control,
                    deadline=time.monotonic() + 20, log_path=tmp_path / "ssh.log",
                )  # fmt: skip
                assert control.exists()
            assert commands == []  # readiness is the key accepted: no session, no shell
            argv = ssh_argv("127.0.0.1", port, keys.client, keys.known_hosts,
                            command=["sh", "-c", "exit 42"], control_path=control)
            proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL)
            code = await asyncio.wait_for(proc.wait(), 20)
            await close_master(control)
            return code
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(scenario()) == 42
    assert len(connections) == 2
    assert commands == ["sh -c 'exit 42'"]
    assert not control.exists()


def test_open_master_gives_up_at_the_deadline_when_nothing_listens(
    keys: Keys, tmp_path: Path
) -> None:
    start = time.monotonic()
    with pytest.raises(GuestError, match="did not accept") as err:
        asyncio.run(open_master(
            "127.0.0.1", keys.port, keys.client, keys.known_hosts, tmp_path / "ctl",
            deadline=time.monotonic() + 1.0, log_path=tmp_path / "ssh.log",
        ))  # fmt: skip
    assert time.monotonic() - start < 5
    # why ssh gave up is in the error itself: the log goes with a failed create's VM
    assert "ssh said: " in err.value.message and "Connection refused" in err.value.message


def test_control_path_is_dropped_when_too_long_for_a_socket(tmp_path: Path) -> None:
    assert control_path_for(Path("/run/user/1000/banger/vms/abc")) is not None
    assert control_path_for(Path("/" + "x" * 95)) is None


async def _greeting_delayed(port: int, target: int, delay: float) -> asyncio.Server:
    """A TCP relay on ``port`` to ``target`` that holds each connection ``delay`` seconds
    before anything passes: an sshd too loaded to greet in time (a busy TCG guest)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    return await asyncio.start_server(relay, "127.0.0.1", port)


def test_open_master_waits_longer_for_an_sshd_too_slow_to_greet(
    keys: Keys, tmp_path: Path
) -> None:
    """An sshd that takes the connection but greets after the 2 s ConnectTimeout: each
    abandoned try would cost the guest another sshd start, so the next try waits longer
    (without it, every try times out until the deadline)."""
    relay_port = _free_port()
    line = keys.known_hosts.read_text()  # the VM's key, as reached through the relay
    keys.known_hosts.write_text(line.replace(f"]:{keys.port} ", f"]:{relay_port} "))

    async def scenario() -> None:
        server = await asyncssh.listen(
            "127.0.0.1", keys.port, server_host_keys=[str(keys.host_key)],
            authorized_client_keys=str(keys.authorized))
        relay = await _greeting_delayed(relay_port, keys.port, delay=2.6)
        try:
            await open_master("127.0.0.1", relay_port, keys.client, keys.known_hosts,
                              tmp_path / "ctl", deadline=time.monotonic() + 14,
                              log_path=tmp_path / "ssh.log")
            await close_master(tmp_path / "ctl")
        finally:
            relay.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert "banner exchange" in (tmp_path / "ssh.log").read_text()  # the first try gave up
