"""The privileged-operations seam: every argument validated before any transport sees it,
and a VMM signalled only when it is provably ours."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.core.errors import Forbidden, InvalidInput
from banger.core.signals import parse_vmm_signal
from banger.host import net
from banger.host import proc_identity as proc
from banger.host.privileged import CheckedHostOps, HostOps, InProcessHostOps, host_ops_for
from tests.support.fake_host_ops import RecordingHostOps
from tests.support.processes import seem_exiting, spawn

OWNER = net.owner_alias(1000, "/home/u/.local/state/banger")
SLEEPER = "import time; time.sleep(30)"

HOSTILE_TAPS = [
    "eth0", "lo", "tap0", "../bgt01", "bgt01/../eth0", "bgt/..", "bgt", "BGT01", "bgt0g",
    "bgt" + "a" * 13, "bgt01\n", " bgt01", "", None, b"bgt01", 7,
]  # fmt: skip
HOSTILE_BRIDGES = ["", "a" * 16, "br 0", "br/0", "../x", "br0\n", "br\0", None, 3]
HOSTILE_CIDRS = ["172.16.0.1", "300.1.1.1/24", "172.16.0.1/33", "::1/64", "", "x/24", None]
HOSTILE_OWNERS = [
    "", "banger:", "banger:../../x", "banger:0:xyz", "banger:0:" + "a" * 13, "lab uplink",
    "banger:-1:0123456789ab", "banger:0:0123456789AB", "banger:0:0123456789ab\n", None,
]  # fmt: skip
HOSTILE_UIDS = [-1, 1 << 32, (1 << 32) - 1, True, "0", 1.0]
HOSTILE_PIDS = [1, 0, -1, -1000, True, "1234", 1.5, (1 << 22) + 1, None]
HOSTILE_MARKERS: list[Any] = [
    (), ("",), ("/",), ("/run",), ("relative/vmm.pid",), ("/run/../etc/passwd",),
    ("/run//x",), ("/run/x/",), ("/run/x\0",), ("/r/" + "a" * 5000,), ["/run/x/vmm.pid"],
    "/run/x/vmm.pid", (b"/run/x/vmm.pid",), ("path=/run/x/qmp.sock,",), None,
]  # fmt: skip
HOSTILE_SIGNALS: list[Any] = [
    9, 15, -9, 0, "KILL", "SIGKILL", signal.SIGSTOP, signal.SIGCONT, signal.SIGSEGV, None,
    signal.SIGKILL.value,
]  # fmt: skip


def refused(call: Callable[[], object]) -> InvalidInput:
    with pytest.raises(InvalidInput) as err:
        call()
    assert err.value.hint, "every refusal names the fix"
    assert "\n" not in err.value.message and len(err.value.message) < 200
    return err.value


@pytest.fixture
def fake() -> RecordingHostOps:
    return RecordingHostOps()


@pytest.fixture
def checked(fake: RecordingHostOps) -> Iterator[CheckedHostOps]:
    ops = CheckedHostOps(fake)
    yield ops
    # Whatever a test threw at it, nothing hostile reached the transport.
    assert [m for m in fake.methods() if m != "can_manage_network"] == []


def test_every_transport_satisfies_the_protocol(fake: RecordingHostOps) -> None:
    for ops in (InProcessHostOps(), CheckedHostOps(fake), host_ops_for(), fake):
        assert isinstance(ops, HostOps)
    assert isinstance(host_ops_for(), CheckedHostOps)


@pytest.mark.parametrize("name", HOSTILE_TAPS)
def test_a_tap_name_not_ours_is_refused_for_create_and_delete(
    checked: CheckedHostOps, name: Any
) -> None:
    assert "TAP name" in str(refused(lambda: checked.create_tap(name, "banger0")))
    assert "TAP name" in str(refused(lambda: checked.delete_tap(name)))


@pytest.mark.parametrize("name", HOSTILE_BRIDGES)
def test_a_bridge_name_outside_the_grammar_is_refused_everywhere(
    checked: CheckedHostOps, name: Any
) -> None:
    refused(lambda: checked.claim_bridge(name, "172.16.0.1/24", OWNER))
    refused(lambda: checked.create_tap("bgt01", name))
    refused(lambda: checked.taps_on_our_bridge(name, OWNER))


@pytest.mark.parametrize("cidr", HOSTILE_CIDRS)
def test_a_cidr_that_is_not_an_ipv4_interface_is_refused(
    checked: CheckedHostOps, cidr: Any
) -> None:
    assert "bridge_cidr" in str(refused(lambda: checked.claim_bridge("banger0", cidr, OWNER)))


@pytest.mark.parametrize("owner", HOSTILE_OWNERS)
def test_an_owner_alias_outside_its_grammar_is_refused(checked: CheckedHostOps, owner: Any) -> None:
    refused(lambda: checked.claim_bridge("banger0", "172.16.0.1/24", owner))
    refused(lambda: checked.taps_on_our_bridge("banger0", owner))


@pytest.mark.parametrize("uid", HOSTILE_UIDS)
def test_a_tap_owner_uid_out_of_range_is_refused(checked: CheckedHostOps, uid: Any) -> None:
    assert "uid" in str(refused(lambda: checked.create_tap("bgt01", "banger0", uid)))


@pytest.mark.parametrize("pid", HOSTILE_PIDS)
def test_pid_1_0_negative_or_not_an_int_is_never_signalled(
    checked: CheckedHostOps, pid: Any
) -> None:
    refused(lambda: checked.signal_vmm(pid, 100, ("/run/b/vmm.pid",), signal.SIGKILL))


@pytest.mark.parametrize("start", [-1, "100", None, True])
def test_a_start_time_that_is_not_a_tick_count_is_refused(
    checked: CheckedHostOps, start: Any
) -> None:
    refused(lambda: checked.signal_vmm(4242, start, ("/run/b/vmm.pid",), signal.SIGKILL))


@pytest.mark.parametrize("markers", HOSTILE_MARKERS)
def test_markers_that_cannot_prove_a_process_ours_are_refused(
    checked: CheckedHostOps, markers: Any
) -> None:
    refused(lambda: checked.signal_vmm(4242, 100, markers, signal.SIGKILL))


@pytest.mark.parametrize("sig", HOSTILE_SIGNALS)
def test_a_signal_outside_the_allowlist_or_numeric_is_refused(
    checked: CheckedHostOps, sig: Any
) -> None:
    err = refused(lambda: checked.signal_vmm(4242, 100, ("/run/b/vmm.pid",), sig))
    assert "TERM KILL INT HUP QUIT USR1 USR2 ABRT" in (err.hint or "")


@pytest.mark.parametrize("name", ["STOP", "SIGCONT", "9", "-9", "kill -9", "", "SIGSIGKILL"])
def test_a_signal_name_outside_the_allowlist_is_refused_at_the_edge(name: str) -> None:
    refused(lambda: parse_vmm_signal(name))


def test_allowlisted_names_parse_in_any_case_with_or_without_sig() -> None:
    assert parse_vmm_signal("kill") is parse_vmm_signal("SIGKILL") is signal.SIGKILL
    assert parse_vmm_signal("Usr1") is signal.SIGUSR1


def test_valid_arguments_cross_to_the_transport_unchanged(fake: RecordingHostOps) -> None:
    ops = CheckedHostOps(fake)
    assert ops.claim_bridge("banger0", "172.16.0.1/24", OWNER) is True
    ops.create_tap("bgt0a1b2c3d4e5f", "banger0", 1000)
    assert ops.taps_on_our_bridge("banger0", OWNER) == ["bgt0a1b2c3d4e5f"]
    assert ops.delete_tap("bgt0a1b2c3d4e5f") is True
    assert ops.signal_vmm(4242, 100, ("path=/r/q.sock,", "/r/vmm.pid"), signal.SIGTERM)
    assert fake.calls == [
        ("claim_bridge", ("banger0", "172.16.0.1/24", OWNER, True)),
        ("create_tap", ("bgt0a1b2c3d4e5f", "banger0", 1000)),
        ("taps_on_our_bridge", ("banger0", OWNER)),
        ("delete_tap", ("bgt0a1b2c3d4e5f",)),
        ("signal_vmm", (4242, 100, ("path=/r/q.sock,", "/r/vmm.pid"), signal.SIGTERM)),
    ]


def test_a_transport_that_answers_with_a_foreign_tap_is_not_believed(
    fake: RecordingHostOps,
) -> None:
    fake.bridges["banger0"] = OWNER
    fake.taps["eth0"] = "banger0"
    refused(lambda: CheckedHostOps(fake).taps_on_our_bridge("banger0", OWNER))


# -- signalling for real, through the in-process transport -------------------------------


def state_letter(child: subprocess.Popen[bytes]) -> str | None:
    stat = proc.read_stat(child.pid)
    return None if stat is None else stat[0]


@pytest.fixture
def vmm_like(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A process shaped like a VMM of ours: its argv names its pidfile, which names it."""
    pidfile = tmp_path / "run" / "vmm.pid"
    pidfile.parent.mkdir()
    child = spawn([sys.executable, "-c", SLEEPER, str(pidfile)])
    pidfile.write_text(f"{child.pid}\n")
    yield child, pidfile
    child.kill()
    child.wait()


def identity(child: subprocess.Popen[bytes]) -> tuple[int, int]:
    started = proc.start_time(child.pid)
    assert started is not None
    return child.pid, started


def test_a_provable_vmm_is_signalled_and_exits(
    vmm_like: tuple[subprocess.Popen[bytes], Path],
) -> None:
    child, pidfile = vmm_like
    pid, started = identity(child)
    assert host_ops_for().signal_vmm(pid, started, (str(pidfile),), signal.SIGTERM) is True
    assert child.wait(timeout=10) == -signal.SIGTERM


def test_a_sleep_we_spawned_is_refused_by_its_own_binary_path_and_left_alive(
    tmp_path: Path,
) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    child = spawn([sleep, "30"])  # its argv holds a path: the argv check alone would pass
    try:
        pid, started = identity(child)
        with pytest.raises(Forbidden) as err:
            host_ops_for().signal_vmm(pid, started, (sleep,), signal.SIGKILL)
        assert f"refusing to signal pid {pid}: it is not a VMM of this daemon" in err.value.message
        assert err.value.hint and "banger vm stop" in err.value.hint
        assert state_letter(child) in ("S", "R")
    finally:
        child.kill()
        child.wait()


def test_a_pidfile_naming_a_process_whose_argv_lacks_it_is_no_proof(tmp_path: Path) -> None:
    child = spawn(["sleep", "30"])
    try:
        pid, started = identity(child)
        pidfile = tmp_path / "vmm.pid"
        pidfile.write_text(f"{pid}\n")
        with pytest.raises(Forbidden):
            host_ops_for().signal_vmm(pid, started, (str(pidfile),), signal.SIGKILL)
        assert state_letter(child) in ("S", "R")
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("plant", ["symlink", "other pid", "fifo", "missing"])
def test_a_pidfile_that_does_not_name_the_process_is_no_proof(
    vmm_like: tuple[subprocess.Popen[bytes], Path], tmp_path: Path, plant: str
) -> None:
    child, pidfile = vmm_like
    pid, started = identity(child)
    pidfile.unlink()
    if plant == "symlink":
        (tmp_path / "elsewhere").write_text(f"{pid}\n")
        pidfile.symlink_to(tmp_path / "elsewhere")
    elif plant == "other pid":
        pidfile.write_text(f"{pid + 1}\n")
    elif plant == "fifo":
        os.mkfifo(pidfile)
    with pytest.raises(Forbidden):
        host_ops_for().signal_vmm(pid, started, (str(pidfile),), signal.SIGKILL)
    assert state_letter(child) in ("S", "R")


def test_a_reused_pid_or_a_gone_one_is_not_signalled_and_says_so(
    vmm_like: tuple[subprocess.Popen[bytes], Path],
) -> None:
    child, pidfile = vmm_like
    pid, started = identity(child)
    ops = host_ops_for()
    assert ops.signal_vmm(pid, started + 1, (str(pidfile),), signal.SIGKILL) is False
    assert state_letter(child) in ("S", "R")
    child.kill()
    child.wait()
    assert ops.signal_vmm(pid, started, (str(pidfile),), signal.SIGKILL) is False


def test_a_vmm_already_inside_its_exit_is_gone_not_a_stranger(
    vmm_like: tuple[subprocess.Popen[bytes], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed VMM still shows state R for a moment after its memory (and so its
    cmdline) is gone: kill it twice and the second finds it exiting (CI once raised
    Forbidden here). Simulated: the kernel's PF_EXITING flag and the empty cmdline."""
    child, pidfile = vmm_like
    pid, started = identity(child)
    seem_exiting(monkeypatch, pid)
    assert host_ops_for().signal_vmm(pid, started, (str(pidfile),), signal.SIGKILL) is False
    assert not proc.is_running(pid, started, ())
    monkeypatch.undo()
    assert state_letter(child) in ("S", "R")  # it was sent nothing


@pytest.mark.parametrize("sig", [signal.SIGSTOP, 19])
def test_a_provable_vmm_is_never_sent_a_signal_outside_the_allowlist(
    vmm_like: tuple[subprocess.Popen[bytes], Path], sig: Any
) -> None:
    child, pidfile = vmm_like
    pid, started = identity(child)
    refused(lambda: host_ops_for().signal_vmm(pid, started, (str(pidfile),), sig))
    assert state_letter(child) in ("S", "R")  # not stopped (T)


def test_init_is_refused_before_any_proof_is_attempted() -> None:
    err = refused(lambda: host_ops_for().signal_vmm(1, 0, ("/sbin/init",), signal.SIGKILL))
    assert "invalid pid 1" in err.message
