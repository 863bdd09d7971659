"""The guest agent's identity helpers, executed for real under /bin/sh against a fake root."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from banger.images.guest_bits import guest_files

AGENT = next(f for f in guest_files() if f.path == "/usr/lib/banger/agent").content
BOOTSTRAP = next(f for f in guest_files() if f.path == "/usr/lib/banger/bootstrap").content

SHELLS = [argv for argv in (["/bin/sh"], ["busybox", "sh"], ["bash", "--posix"])
          if shutil.which(argv[0])]

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
          "   uid  timeout inode\n")


def tcp_line(n: int, local: str, remote: str, state: str, inode: int) -> str:
    return (f"   {n}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000"
            f"     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n")


@pytest.fixture(params=SHELLS, ids=lambda argv: argv[0].rsplit("/", 1)[-1])
def root(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    root = tmp_path / "root"
    (root / "proc/net").mkdir(parents=True)
    (root / "agent").write_bytes(AGENT)
    (root / "bootstrap").write_bytes(BOOTSTRAP)
    (root / ".shell").write_text("\n".join(request.param))
    return root


def agent(root: Path, call: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "BANGER_ROOT": str(root), "BANGER_AGENT_LIB": "1",
           "BANGER_BOOTSTRAP": str(root / "bootstrap"), "BANGER_CMDLINE": str(root / "identity")}
    shell = (root / ".shell").read_text().splitlines()
    return subprocess.run([*shell, "-c", f'. "$0"; {call}', str(root / "agent")], env=env,
                          capture_output=True, text=True, timeout=20, check=check)


def test_the_identity_words_are_read_in_one_pass_and_never_globbed(root: Path) -> None:
    (root / "banger.time=globbed").write_text("")  # what the word would glob to
    (root / "identity").write_text(
        "banger.hostname=a banger.time=1.5 banger.seed=ab banger.time=* "
        "banger.work_sectors=2048 banger.seedling=zz\n")
    out = agent(root, f'cd {root}; agent_words; echo "$_time|$_seed|$_sectors|$_hostname|$_hold"'
                ).stdout
    assert out == "*|ab|2048|a|\n"
    (root / "identity").write_text("banger.hostname=box banger.hold=1\n")  # a warm pool member
    assert agent(root, 'agent_words; echo "$_hostname|$_hold"').stdout == "box|1\n"


def test_the_listener_is_the_port_22_socket_in_listen_state_only(root: Path) -> None:
    tcp = root / "proc/net/tcp"
    tcp.write_text(HEADER
                   + tcp_line(0, "00000000:08AE", "00000000:0000", "0A", 111)   # port 2222
                   + tcp_line(1, "0F02000A:0016", "0202000A:B5E2", "01", 222)   # a session
                   + tcp_line(2, "00000000:0016", "00000000:0000", "0A", 333))
    assert agent(root, 'agent_listener; echo "[$_listener]"').stdout == "[333]\n"
    tcp.write_text(HEADER + tcp_line(0, "0F02000A:0016", "0202000A:B5E2", "01", 222))
    assert agent(root, 'agent_listener; echo "[$_listener]"').stdout == "[]\n"


def test_waiting_for_sshd_ends_at_a_new_listening_socket(root: Path) -> None:
    tcp = root / "proc/net/tcp"
    tcp.write_text(HEADER)  # sshd between close and bind: nothing listens
    new = HEADER + tcp_line(0, "00000000:0016", "00000000:0000", "0A", 444)
    call = f"(sleep 0.3; printf '%s' '{new}' > {tcp}) & agent_wait_listener 333 && echo up"
    assert agent(root, call).stdout == "up\n"


def test_waiting_for_sshd_gives_up_when_only_the_old_socket_listens(root: Path) -> None:
    (root / "proc/net/tcp").write_text(
        HEADER + tcp_line(0, "00000000:0016", "00000000:0000", "0A", 333))
    proc = agent(root, "agent_wait_listener 333 5", check=False)
    assert proc.returncode == 1


def test_the_kernel_helper_compiles(root: Path) -> None:
    """Only a parse: running it with a clock would set this host's clock."""
    proc = agent(root, 'perl -c -e "$AGENT_HELPER_PL"', check=False)
    assert proc.returncode == 0 and "syntax OK" in proc.stderr, proc.stderr


@pytest.mark.parametrize("seed, when", [
    ("ab;cd", ""), ("$(touch x)", ""), ("AB", ""), ("a" * 300, ""),
    ("00ff", "1e9"), ("00ff", "-5"), ("00ff", "1.2.3"), ("00ff", "1234567890123"),
    ("00ff", "1;touch x"), ("00ff", "1 1.5"), ("00ff", "1 12"), ("00ff", "1 1.50 2"),
])
def test_the_kernel_helper_refuses_a_malformed_seed_or_clock(root: Path, seed: str,
                                                              when: str) -> None:
    (root / "run/banger").mkdir(parents=True)
    proc = agent(root, f"cd {root}; agent_start_helper; agent_kernel '{seed}' '{when}'; "
                       'echo "$?"', check=False)
    assert proc.stdout.strip() not in ("", "0")
    assert "bad request" in proc.stderr
    assert not (root / "x").exists()
    assert not (root / "run/banger/helper").exists()  # the fifo is never left on disk


@pytest.mark.skipif(os.geteuid() != 0, reason="RNDRESEEDCRNG needs CAP_SYS_ADMIN (root)")
def test_the_template_started_helper_takes_one_line_then_a_new_perl_does(root: Path) -> None:
    (root / "run/banger").mkdir(parents=True)
    out = agent(root, 'agent_start_helper; agent_kernel 00ff; echo "$? [$AGENT_HELPER]"; '
                      "agent_kernel 00ff; echo $?").stdout
    assert out == "0 []\n0\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="RNDRESEEDCRNG needs CAP_SYS_ADMIN (root)")
def test_a_helper_gone_before_its_line_is_replaced_by_a_new_perl(root: Path) -> None:
    (root / "run/banger").mkdir(parents=True)
    out = agent(root, 'agent_start_helper; kill -9 "$AGENT_HELPER"; wait "$AGENT_HELPER"; '
                      "agent_kernel 00ff; echo $?").stdout
    assert out == "0\n"


def test_without_perl_the_identity_fails_at_once_instead_of_hanging(root: Path,
                                                                   tmp_path: Path) -> None:
    (root / "run/banger").mkdir(parents=True)
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("mkfifo", "rm", "cat"):
        (bare / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    proc = agent(root, f'PATH={bare}; agent_start_helper; echo "[$AGENT_HELPER]"; '
                       "agent_kernel 00ff; echo $?", check=False)
    lines = proc.stdout.splitlines()
    assert lines[0] == "[]" and lines[-1] not in ("", "0")


def serve(root: Path, sock: socket.socket, **env: str) -> subprocess.Popen[bytes]:
    """The agent run as the vsock listener runs it for one connection: ``sock`` as fd 3."""
    shell = (root / ".shell").read_text().splitlines()
    full = {"PATH": "/usr/bin:/bin", "BANGER_ROOT": str(root), "AGENT_SERVE": "1",
            "BANGER_BOOTSTRAP": str(root / "bootstrap"), **env}
    fd = sock.fileno()  # fd 3 in the agent, as perl's dup2 leaves it (dash has no fd > 9)
    as_fd3 = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.execvp(sys.argv[2], sys.argv[2:])"
    return subprocess.Popen([sys.executable, "-c", as_fd3, str(fd), *shell, str(root / "agent")],
                            env=full, pass_fds=(fd,), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_a_vsock_connection_is_served_with_the_same_lines_and_a_hangup_ends_it(
        root: Path) -> None:
    host, guest = socket.socketpair()
    proc = serve(root, guest)
    guest.close()
    with host, host.makefile("rwb", buffering=0) as f:
        for request, expected in ((b"ping", b"pong"), (b"bogus", b"error unknown request"),
                                  (b"ping", b"pong")):
            f.write(request + b"\n")
            assert f.readline() == expected + b"\n"
    assert proc.wait(timeout=10) == 3  # the host hung up: the listener accepts the next
    assert proc.stderr is not None and proc.stderr.read() == b""


def test_the_agent_takes_vsock_only_where_a_virtio_vsock_device_is(root: Path) -> None:
    devices = root / "sys/bus/virtio/devices"
    for n, kind in enumerate(("0x0003", "0x0002")):  # a console, a block device
        (devices / f"virtio{n}").mkdir(parents=True)
        (devices / f"virtio{n}/device").write_text(kind + "\n")
    assert agent(root, "agent_find_vsock", check=False).returncode == 1
    (devices / "virtio5").mkdir()
    (devices / "virtio5/device").write_text("0x0013\n")
    assert agent(root, "agent_find_vsock", check=False).returncode == 0


def test_the_vsock_listener_is_perl_on_port_52_with_the_agent_and_its_settings(
        root: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "perl").write_text('#!/bin/sh\nshift 2\necho "$* $AGENT_SERVE $AGENT_SSHD_RESTART"\n')
    (fake / "perl").chmod(0o755)
    out = agent(root, f"PATH={fake}; AGENT_SSHD_RESTART=1; agent_listen_vsock; echo returned")
    assert out.stdout == f"{root / 'agent'} 52 1 1\n"  # exec'd: nothing after it runs


def vsock_free_port() -> int:
    try:
        probe = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except (AttributeError, OSError) as exc:
        pytest.skip(f"no AF_VSOCK on this host: {exc}")
    with probe:
        probe.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("port", ["", "52;x", "-1", "99999999999"])
def test_the_vsock_listener_refuses_a_malformed_port(root: Path, port: str) -> None:
    proc = agent(root, f'perl -e "$AGENT_VSOCK_PL" agent "{port}"', check=False)
    assert proc.returncode != 0 and "usage: AGENT PORT" in proc.stderr


def test_the_vsock_listener_binds_its_port_for_any_cid(root: Path) -> None:
    """The sockaddr_vm packing, checked by the kernel: the port is taken (no vsock loopback
    here, so nothing can connect to it)."""
    port = vsock_free_port()
    proc = subprocess.Popen(
        ["sh", "-c", f'. "$0"; exec perl -e "$AGENT_VSOCK_PL" "$1" {port}', str(root / "agent"),
         str(root / "agent")],
        env={"PATH": "/usr/bin:/bin", "BANGER_AGENT_LIB": "1", "BANGER_ROOT": str(root),
             "BANGER_BOOTSTRAP": str(root / "bootstrap")},
        stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline() == f"banger-agent: listening on vsock port {port}\n".encode()
        with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as other:
            with pytest.raises(OSError) as err:
                other.bind((socket.VMADDR_CID_ANY, port))
            assert err.value.errno == errno.EADDRINUSE
        assert proc.poll() is None  # waiting in accept
    finally:
        proc.kill()
        proc.wait()


def _listener_over_unix(path: Path) -> str:
    """The agent's vsock listener with only its socket and bind swapped for a Unix socket at
    ``path`` (no vsock loopback here): its accept loop, fd 3 handoff and exits as they are."""
    text = AGENT.decode()
    start = text.index("AGENT_VSOCK_PL='") + len("AGENT_VSOCK_PL='")
    perl = text[start:text.index("'\n", start)]
    vsock_socket = "socket(my $l, 40, 1, 0)"
    vsock_bind = 'bind($l, pack("S S L L C x3", 40, 0, $port, 0xFFFFFFFF, 0))'
    assert vsock_socket in perl and vsock_bind in perl, "the listener changed: update this test"
    return perl.replace(vsock_socket, "socket(my $l, 1, 1, 0)").replace(
        vsock_bind, f'bind($l, pack("S a108", 1, "{path}"))')


def test_the_listener_serves_one_connection_at_a_time_and_ends_when_the_agent_is_done(
        root: Path, tmp_path: Path) -> None:
    if shutil.which("perl") is None:
        pytest.skip("no perl on this host")
    path = tmp_path / "l.sock"
    shell = (root / ".shell").read_text().splitlines()
    env = {"PATH": "/usr/bin:/bin", "BANGER_ROOT": str(root), "AGENT_SERVE": "1",
           "BANGER_BOOTSTRAP": str(root / "bootstrap"), "BANGER_CMDLINE": str(root / "id")}
    for d in ("run/banger", "proc/sys/kernel", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    agent_sh = tmp_path / "agent.sh"  # perl runs `/bin/sh AGENT`: this shell, this agent
    agent_sh.write_text(f'exec {" ".join(shell)} {root / "agent"}\n')
    proc = subprocess.Popen(["perl", "-e", _listener_over_unix(path), str(agent_sh), "52"],
                            env=env, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith(b"banger-agent: listening")
        for _ in range(2):  # a host that hangs up (a template's ping) is served again
            with socket.socket(socket.AF_UNIX) as c, c.makefile("rwb", buffering=0) as f:
                c.connect(os.fspath(path))
                f.write(b"ping\n")
                assert f.readline() == b"pong\n"
        with socket.socket(socket.AF_UNIX) as c, c.makefile("rwb", buffering=0) as f:
            c.connect(os.fspath(path))
            f.write(b"name banger.hostname=box\n")  # a held clone's last request
            assert f.readline() == b"ok\n"
        assert proc.wait(timeout=10) == 0  # the agent is done: so is the listener
        assert (root / "etc/hostname").read_text() == "box\n"
    finally:
        proc.kill()
        proc.wait()
