"""``bangerd-root``: the published matrix of hostile requests (docs/privileges.md), each
refused with a typed error before anything reaches the host, through the real socket.

The helper runs in a thread on a temporary socket with a recording transport in
place of the in-process operations (so a refusal provably changed nothing), except
where a real process is signalled: there the real ``InProcessHostOps`` runs and the
target must still be alive afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.core.errors import BangerError, Forbidden, InvalidInput
from banger.helper.guard import Owner
from banger.host import net
from banger.host import proc_identity as proc
from banger.host.helper_client import HelperHostOps
from banger.host.privileged import InProcessHostOps
from tests.support.fake_host_ops import RecordingHostOps
from tests.support.helper_server import serve_helper
from tests.support.processes import spawn

SLEEPER = "import time, sys; time.sleep(60)"


@pytest.fixture
def owner_dirs() -> Iterator[tuple[Path, Path]]:
    base = Path(tempfile.mkdtemp(prefix="bgh-"))
    base.chmod(0o755)  # the setpriv client (uid 65534) must reach the socket
    state, runtime = base / "state", base / "run"
    (runtime / "vms" / "v1").mkdir(parents=True)
    state.mkdir()
    yield state, runtime
    shutil.rmtree(base)


@pytest.fixture
def owner(owner_dirs: tuple[Path, Path]) -> Owner:
    return Owner("root", os.getuid(), os.getgid(), owner_dirs)


@pytest.fixture
def fake() -> Iterator[RecordingHostOps]:
    fake = RecordingHostOps()
    yield fake


@pytest.fixture
def helper(owner: Owner, fake: RecordingHostOps) -> Iterator[HelperHostOps]:
    yield from serve_helper(owner, fake, owner.dirs[1] / "h.sock")
    # Whatever the test threw at the helper, nothing reached the host.
    assert [m for m in fake.methods() if m != "can_manage_network"] == []


@pytest.fixture
def real_helper(owner: Owner) -> Iterator[HelperHostOps]:
    yield from serve_helper(owner, InProcessHostOps(), owner.dirs[1] / "h.sock")


def raw(path: Path, payload: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(payload + b"\n")
        s.shutdown(socket.SHUT_WR)
        return dict(json.loads(s.makefile("rb").read()))


MALFORMED = [
    b"not json", b"[]", b"{}", b'{"op":"rm_rf","op_id":"a"}', b'{"op":"hello"}',
    b'{"op":"hello","op_id":"a b"}', b'{"op":"hello","op_id":"a","argv":["sh"]}',
    b'{"op":"create_tap","op_id":"a","name":"bgt1","bridge":"b","owner_uid":"0"}',
    b'{"op":"claim_bridge","op_id":"a","name":"b","cidr":"172.16.0.1/24",'
    b'"owner":"banger:0:0123456789ab","create":1}',
    b'{"op":"signal_vmm","op_id":"a","pid":"5","start_time":1,"markers":[],"signal":"KILL"}',
    b'{"op":"nat_add","op_id":"a","bridge":"b","guest":["1.2.3.4"]}',
]  # fmt: skip


@pytest.mark.parametrize("payload", MALFORMED)
def test_a_malformed_request_is_refused_with_a_typed_error(
    helper: HelperHostOps, payload: bytes
) -> None:
    reply = raw(helper.path, payload)
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_input"
    assert reply["error"]["hint"]


@pytest.mark.parametrize("call", [
    lambda h: h.create_tap("eth0", "banger0"),            # wrong prefix
    lambda h: h.create_tap("bgt" + "a" * 13, "banger0"),  # too long for IFNAMSIZ
    lambda h: h.delete_tap("../bgt01"),
    lambda h: h.claim_bridge("br/0", "172.16.0.1/24", net.owner_alias(0, "/s")),
    lambda h: h.nat_add("banger0", "172.16.0.2; flush ruleset"),
    lambda h: h.route_vm_domain("banger0", "172.16.0.1 --help"),
    lambda h: h.signal_vmm(1, 1, ("/run/x/vmm.pid",), signal.SIGKILL),  # init
])  # fmt: skip
def test_the_shape_checks_run_again_on_the_helper_side(helper: HelperHostOps, call: Any) -> None:
    with pytest.raises(InvalidInput):
        call(helper)


@pytest.mark.parametrize("name", ["STOP", "CONT", "9", "SIGSTOP", "RTMIN", "-9", "kill -9"])
def test_stop_cont_and_numeric_signals_are_refused(helper: HelperHostOps, name: str) -> None:
    reply = raw(helper.path, json.dumps({
        "op": "signal_vmm", "op_id": "t", "pid": os.getpid(), "start_time": 1,
        "markers": ["/run/x/vmm.pid"], "signal": name}).encode())  # fmt: skip
    assert reply["error"]["code"] == "invalid_input"


def test_a_bridge_or_tap_of_another_uid_is_refused(helper: HelperHostOps) -> None:
    other = net.owner_alias(4242, "/home/other/.local/state/banger")
    with pytest.raises(Forbidden, match="not the helper's owner"):
        helper.claim_bridge("banger0", "172.16.0.1/24", other)
    with pytest.raises(Forbidden):
        helper.taps_on_our_bridge("banger0", other)
    with pytest.raises(Forbidden, match="uid 4242"):
        helper.create_tap("bgt01", "banger0", 4242)


def _pidfile(path: Path, pid: int) -> str:
    path.write_text(f"{pid}\n")
    return str(path)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = spawn([sys.executable, "-c", SLEEPER])
    yield child
    child.kill()
    child.wait()


def _refused_alive(helper: HelperHostOps, child: subprocess.Popen[bytes],
                   markers: tuple[str, ...], error: type[BangerError] = Forbidden) -> None:
    started = proc.start_time(child.pid)
    assert started is not None
    with pytest.raises(error):
        helper.signal_vmm(child.pid, started, markers, signal.SIGKILL)
    assert child.poll() is None, "a refused signal must not reach the process"


def test_a_marker_outside_the_owner_dirs_is_refused(
    real_helper: HelperHostOps, sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    _refused_alive(real_helper, sleeper, (_pidfile(tmp_path / "vmm.pid", sleeper.pid),))


def test_a_dotdot_marker_is_refused(
    real_helper: HelperHostOps, sleeper: subprocess.Popen[bytes], owner: Owner
) -> None:
    escaping = f"{owner.dirs[1]}/vms/../../../etc/vmm.pid"
    _refused_alive(real_helper, sleeper, (escaping,), InvalidInput)


def test_a_too_long_marker_is_refused(
    real_helper: HelperHostOps, sleeper: subprocess.Popen[bytes], owner: Owner
) -> None:
    _refused_alive(real_helper, sleeper, (f"{owner.dirs[1]}/{'a' * 5000}",), InvalidInput)


def test_a_symlink_at_the_leaf_is_refused(
    real_helper: HelperHostOps, sleeper: subprocess.Popen[bytes], owner: Owner, tmp_path: Path
) -> None:
    target = _pidfile(tmp_path / "real.pid", sleeper.pid)
    leaf = owner.dirs[1] / "vms" / "v1" / "vmm.pid"
    leaf.symlink_to(target)
    _refused_alive(real_helper, sleeper, (str(leaf),))


def test_a_symlink_in_a_middle_component_is_refused(
    real_helper: HelperHostOps, sleeper: subprocess.Popen[bytes], owner: Owner, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    _pidfile(tmp_path / "elsewhere" / "vmm.pid", sleeper.pid)
    (owner.dirs[1] / "vms" / "v2").symlink_to(tmp_path / "elsewhere")
    _refused_alive(real_helper, sleeper, (str(owner.dirs[1] / "vms" / "v2" / "vmm.pid"),))


def test_a_pid_that_is_not_a_vmm_is_refused(
    real_helper: HelperHostOps, sleeper: subprocess.Popen[bytes], owner: Owner
) -> None:
    # Its pidfile is the owner's and names it, but its argv does not carry the markers.
    pidfile = _pidfile(owner.dirs[1] / "vms" / "v1" / "vmm.pid", sleeper.pid)
    _refused_alive(real_helper, sleeper, (pidfile, "path=/nowhere/qmp.sock,"))


def test_a_pidfile_naming_another_pid_is_refused(
    real_helper: HelperHostOps, sleeper: subprocess.Popen[bytes], owner: Owner
) -> None:
    pidfile = _pidfile(owner.dirs[1] / "vms" / "v1" / "vmm.pid", os.getpid())
    _refused_alive(real_helper, sleeper, (pidfile,))


def test_a_process_of_another_user_is_refused(
    real_helper: HelperHostOps, owner: Owner, tmp_path: Path
) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    pidfile = owner.dirs[1] / "vms" / "v1" / "vmm.pid"
    argv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
            sys.executable, "-c", SLEEPER, str(pidfile)]
    child = subprocess.Popen(argv)
    try:
        for _ in range(500):
            if (proc.cmdline(child.pid) or [""])[0] == sys.executable:
                break
            threading.Event().wait(0.01)
        _pidfile(pidfile, child.pid)
        _refused_alive(real_helper, child, (str(pidfile),))
    finally:
        child.kill()
        child.wait()


def test_a_vmm_of_the_owner_with_its_pidfile_is_signalled(
    real_helper: HelperHostOps, owner: Owner
) -> None:
    pidfile = owner.dirs[1] / "vms" / "v1" / "vmm.pid"
    child = spawn([sys.executable, "-c", SLEEPER, str(pidfile)])
    _pidfile(pidfile, child.pid)
    started = proc.start_time(child.pid)
    assert started is not None
    assert real_helper.signal_vmm(child.pid, started, (str(pidfile),), signal.SIGTERM)
    assert child.wait(5) == -signal.SIGTERM


def test_a_uid_that_is_neither_root_nor_the_owner_is_refused_on_the_socket(
    helper: HelperHostOps,
) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    helper.path.chmod(0o666)  # as if the socket's mode had been loosened: SO_PEERCRED still holds
    probe = ("import json,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
             "s.sendall(b'{\"op\":\"create_tap\",\"op_id\":\"x\",\"name\":\"bgt01\","
             "\"bridge\":\"banger0\"}\\n'); s.shutdown(1); print(s.makefile().read())")
    out = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                          sys.executable, "-c", probe, str(helper.path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["error"]["code"] == "forbidden" and "uid 65534" in reply["error"]["message"]


def test_hello_names_the_owner_and_the_socket_is_the_owners(
    helper: HelperHostOps, owner: Owner
) -> None:
    hello = helper.hello()
    assert hello.owner_uid == owner.uid and hello.pid == os.getpid()
    st = os.lstat(helper.path)
    assert st.st_uid == owner.uid and st.st_mode & 0o777 == 0o600


def test_an_unreachable_helper_is_unavailable_naming_the_fix(tmp_path: Path) -> None:
    from banger.core.errors import Unavailable

    with pytest.raises(Unavailable, match="not reachable") as err:
        HelperHostOps(tmp_path / "none.sock").create_tap("bgt01", "banger0")
    assert "bangerd-root" in (err.value.hint or "")


def test_host_ops_for_picks_the_helper_only_when_it_serves_us(
    helper: HelperHostOps, owner: Owner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from banger.host import privileged

    monkeypatch.setattr(net, "have_net_admin", lambda: False)  # as the owner's daemon
    monkeypatch.setattr(privileged, "HELLO_ATTEMPTS", 1)
    picked = privileged.host_ops_for(helper.path)
    assert isinstance(picked, privileged.CheckedHostOps)
    assert isinstance(picked.transport, HelperHostOps) and picked.can_manage_network()
    for missing in (None, tmp_path / "none.sock"):
        fallback = privileged.host_ops_for(missing)
        assert isinstance(fallback, privileged.CheckedHostOps)
        assert isinstance(fallback.transport, InProcessHostOps)
    monkeypatch.setattr(os, "getuid", lambda: owner.uid + 1)  # a helper serving someone else
    assert isinstance(privileged.host_ops_for(helper.path).transport, InProcessHostOps)


def test_the_test_hold_hook_is_read_once_and_never_honoured_under_systemd(
    owner: Owner, fake: RecordingHostOps, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    from banger.helper import server

    monkeypatch.setenv(server.TEST_HOLD_ENV, "delete_tap")
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")  # started by systemd
    assert server.test_hold_op() is None
    assert "ignoring BANGER_HELPER_TEST_HOLD" in caplog.text
    monkeypatch.delenv("INVOCATION_ID")
    assert server.test_hold_op() == "delete_tap"
    assert "TEST HOOK ON" in caplog.text
    monkeypatch.delenv(server.TEST_HOLD_ENV)
    for client in serve_helper(owner, fake, owner.dirs[1] / "h.sock"):
        monkeypatch.setenv(server.TEST_HOLD_ENV, "enable_ip_forward")  # after the start
        client.enable_ip_forward()  # answered: the hook was read once, at start
    assert fake.methods() == ["enable_ip_forward"]
