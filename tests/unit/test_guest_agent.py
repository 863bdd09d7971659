"""The guest agent's identity helpers, executed for real under /bin/sh against a fake root."""

from __future__ import annotations

import os
import shutil
import subprocess
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
