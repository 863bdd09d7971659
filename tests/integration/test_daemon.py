"""bangerd as a user meets it: start, stop, status, auto-start, peers, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from banger.core.errors import NotFound
from banger.core.wait import poll_until
from banger.host.proc import pid_alive
from tests.conftest import BangerEnv


def _gone(pid: int) -> bool:
    return bool(poll_until(lambda: not pid_alive(pid), timeout=10))


def test_start_is_idempotent_and_status_reports_the_daemon(banger_env: BangerEnv) -> None:
    first = banger_env.banger("daemon", "start")
    assert first.returncode == 0, first.stderr
    assert "started" in first.stdout
    second = banger_env.banger("daemon", "start")
    assert second.returncode == 0
    assert "already running" in second.stdout
    status = banger_env.banger("daemon", "status", "--json")
    data = json.loads(status.stdout)
    assert data["running"] is True
    assert data["pid"] == banger_env.daemon_pid()
    assert data["socket"] == str(banger_env.socket)
    assert oct(banger_env.socket.stat().st_mode & 0o777) == "0o600"


def test_status_exits_non_zero_when_daemon_is_not_running(banger_env: BangerEnv) -> None:
    result = banger_env.banger("daemon", "status")
    assert result.returncode != 0
    assert result.stderr.startswith("banger: bangerd is not running")


def test_stop_waits_for_exit_and_removes_the_socket(banger_env: BangerEnv) -> None:
    banger_env.banger("daemon", "start")
    pid = banger_env.daemon_pid()
    assert pid
    result = banger_env.banger("daemon", "stop")
    assert result.returncode == 0
    assert f"pid {pid}" in result.stdout
    assert not pid_alive(pid)
    assert not banger_env.socket.exists()
    again = banger_env.banger("daemon", "stop")
    assert again.returncode == 0 and "not running" in again.stdout


def test_any_command_brings_back_a_sigkilled_daemon(banger_env: BangerEnv) -> None:
    banger_env.banger("daemon", "start")
    pid = banger_env.daemon_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    assert _gone(pid)
    assert banger_env.socket.exists(), "a killed daemon leaves its socket behind"
    result = banger_env.banger("doctor", "--json")
    assert result.returncode in (0, 1), result.stderr
    assert json.loads(result.stdout)["checks"]
    new_pid = banger_env.daemon_pid()
    assert new_pid and new_pid != pid and pid_alive(new_pid)


def test_second_daemon_for_the_same_user_refuses_to_start(banger_env: BangerEnv) -> None:
    banger_env.banger("daemon", "start")
    result = subprocess.run(
        [sys.executable, "-m", "banger.daemon.main"],
        env=banger_env.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "another bangerd" in result.stderr
    assert banger_env.banger("daemon", "status").returncode == 0


def test_two_clis_at_once_both_get_answers(banger_env: BangerEnv) -> None:
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: banger_env.banger("daemon", "status", "--json"), [0, 1]))
    # Neither CLI started the daemon: status never does. Now the racing auto-start:
    assert all(r.returncode != 0 for r in results)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: banger_env.banger("doctor", "--json"), [0, 1]))
    for r in results:
        assert r.returncode in (0, 1), r.stderr
        assert json.loads(r.stdout)["checks"]
    pids = {banger_env.daemon_pid()}
    assert len(pids) == 1


_FOREIGN_CLIENT = """
import httpx, sys
t = httpx.HTTPTransport(uds=sys.argv[1])
r = httpx.Client(transport=t, base_url="http://bangerd").get("/v1/ping")
print(r.status_code); print(r.text)
"""


def test_a_foreign_uid_is_refused_with_403(
    banger_env: BangerEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A runtime dir others can traverse, so that only the credential check stands in the way.
    public = Path(tempfile.mkdtemp(prefix="banger-peer-", dir="/tmp"))
    public.chmod(0o755)
    banger_env.runtime_override = public / "run"
    banger_env.banger("daemon", "start")
    assert oct(banger_env.socket.stat().st_mode & 0o777) == "0o600"
    os.chmod(banger_env.socket, 0o666)
    os.chmod(banger_env.runtime_dir, 0o755)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", _FOREIGN_CLIENT, str(banger_env.socket)],
        capture_output=True, text=True, timeout=30,
    )
    status, body = result.stdout.split("\n", 1)
    assert status == "403", result.stderr
    error = json.loads(body)
    assert error["code"] == "forbidden" and "65534" in error["message"] and error["op_id"]
    log = (banger_env.state_dir / "bangerd.log").read_text()
    assert any(
        json.loads(line).get("event") == "refused peer" and json.loads(line)["peer_uid"] == 65534
        for line in log.splitlines()
    )
    banger_env.banger("daemon", "stop")
    shutil.rmtree(public)


def test_errors_carry_code_message_op_id_and_hint(banger_env: BangerEnv) -> None:
    banger_env.banger("daemon", "start")
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(banger_env.socket)),
                          base_url="http://bangerd")
    resp = client.get("/v1/operations/nope")
    assert resp.status_code == 404
    body = resp.json()
    assert body["code"] == "not_found" and body["hint"]
    assert body["op_id"] == resp.headers["X-Banger-Op-Id"]
    log_text = (banger_env.state_dir / "bangerd.log").read_text()
    log_lines = [json.loads(x) for x in log_text.splitlines()]
    assert any(line.get("op_id") == body["op_id"] for line in log_lines)


def test_ping_reports_version_pid_and_uptime(banger_env: BangerEnv) -> None:
    banger_env.banger("daemon", "start")
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(banger_env.socket)),
                          base_url="http://bangerd")
    first = client.get("/v1/ping").json()
    time.sleep(0.05)
    second = client.get("/v1/ping").json()
    assert first["pid"] == banger_env.daemon_pid()
    assert second["uptime_seconds"] > first["uptime_seconds"]
    assert first["version"] and first["commit"] and first["api_version"] == "v1"


def test_corrupt_store_stops_the_daemon_with_a_clear_error_and_is_left_untouched(
    banger_env: BangerEnv,
) -> None:
    banger_env.state_dir.mkdir(parents=True)
    db = banger_env.state_dir / "state.db"
    garbage = b"this is not an sqlite database\n" * 100
    db.write_bytes(garbage)
    result = banger_env.banger("daemon", "start")
    assert result.returncode != 0
    assert "bangerd failed to start" in result.stderr and "state.db" in result.stderr
    assert db.read_bytes() == garbage


def test_operations_from_a_killed_daemon_are_marked_interrupted(banger_env: BangerEnv) -> None:
    from banger.store.db import Store
    from banger.store.records import OperationRecord, OperationState

    banger_env.state_dir.mkdir(parents=True)
    with Store.open(banger_env.state_dir / "state.db") as store:
        store.operations.add(OperationRecord(id="abc", kind="kernel.pull",
                                             state=OperationState.RUNNING))
    assert banger_env.banger("daemon", "start").returncode == 0
    banger_env.banger("daemon", "stop")
    with Store.open(banger_env.state_dir / "state.db") as store:
        record = store.operations.get("abc")
    assert record.state is OperationState.FAILED
    assert record.error and "interrupted" in record.error["message"]


def test_client_reports_version_drift_once(
    banger_env: BangerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from banger.api import client as client_module

    banger_env.banger("daemon", "start")
    seen: list[str] = []
    monkeypatch.setattr(client_module, "version_tag", lambda: "0.0.0+someotherbuild")
    with client_module.Client(banger_env.socket, on_version_drift=seen.append) as client:
        client.ping()
        with pytest.raises(NotFound):
            client.request("GET", "/operations/missing")
    assert len(seen) == 1 and seen[0] != "0.0.0+someotherbuild"


def test_client_reconnects_after_a_daemon_restart(banger_env: BangerEnv) -> None:
    from banger.api.client import Client

    banger_env.banger("daemon", "start")
    with Client(banger_env.socket) as client:
        first = client.ping().pid
        banger_env.banger("daemon", "stop")
        banger_env.banger("daemon", "start")
        assert client.ping().pid != first


IGNORED_BY_A_SCRIPT = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)  # `&` in sh; nohup


def _ignored_mask(pid: int) -> int:
    """The signals ``pid`` ignores (``SigIgn`` in /proc/<pid>/status), as a bit mask."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("SigIgn:")), 16)


def test_a_daemon_started_with_signals_ignored_does_not_hand_that_to_its_vmms(
    banger_env: BangerEnv,
) -> None:
    """Started from a script's background job (SIGINT, SIGQUIT ignored) or under nohup
    (SIGHUP), bangerd would pass those on to every VMM it starts (an ignored signal stays
    ignored across exec): `vm kill --signal INT` would do nothing. It sets them back."""

    def ignore() -> None:
        for sig in IGNORED_BY_A_SCRIPT:
            signal.signal(sig, signal.SIG_IGN)

    started = subprocess.run([*banger_env.banger_argv(), "daemon", "start"],
                             env=banger_env.env(), capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, preexec_fn=ignore)
    assert started.returncode == 0, started.stderr
    pid = banger_env.daemon_pid()
    assert pid is not None
    ignored = _ignored_mask(pid)
    assert not [sig for sig in IGNORED_BY_A_SCRIPT if ignored & (1 << (sig - 1))]
    log = (banger_env.state_dir / "bangerd.log").read_text()
    assert "signals inherited ignored set back to their defaults" in log
    assert all(sig.name in log for sig in IGNORED_BY_A_SCRIPT)
