"""Cancel and SIGKILL during imports, against a real bangerd.

A cancelled operation stops (its worker thread and child programs end), and
leaves no directory, no row, no scratch dir; a SIGKILLed daemon's scratch is
swept at its next start; the name is importable again either way.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from banger.core.wait import poll_until
from banger.host.proc import pid_alive
from tests.conftest import BangerEnv
from tests.support.kernel import ensure_kernel_deb
from tests.support.oci_builder import Member, bootable_base, layer_tar


@pytest.fixture
def api(banger_env: BangerEnv) -> Iterator[httpx.Client]:
    started = banger_env.banger("daemon", "start")
    assert started.returncode == 0, started.stderr
    transport = httpx.HTTPTransport(uds=str(banger_env.socket))
    with httpx.Client(transport=transport, base_url="http://bangerd", timeout=30) as client:
        yield client


def _begin(api: httpx.Client, path: str, body: dict[str, Any]) -> str:
    resp = api.post(path, json=body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def _op(api: httpx.Client, op_id: str) -> dict[str, Any]:
    return dict(api.get(f"/v1/operations/{op_id}").json())


def _wait(what: str, check: Callable[[], object], timeout: float = 60) -> None:
    assert poll_until(check, timeout=timeout), f"timed out waiting for {what}"


def _cancel_and_wait(api: httpx.Client, op_id: str) -> dict[str, Any]:
    assert api.post(f"/v1/operations/{op_id}/cancel").status_code == 200
    _wait("the cancelled operation to end", lambda: _op(api, op_id)["state"] != "running", 15)
    return _op(api, op_id)


def _scratch(env: BangerEnv) -> list[str]:
    tmp = env.state_dir / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cancel_while_a_kernel_import_waits_frees_the_name(
    banger_env: BangerEnv, api: httpx.Client
) -> None:
    lock = banger_env.state_dir / "tmp" / "kernel-k.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another importer of "k" is at work: ours waits
    try:
        op_id = _begin(api, "/v1/kernels/import", {"name": "k", "source": str(ensure_kernel_deb())})
        _wait("the import stage", lambda: any(
            s["name"] == "import" for s in _op(api, op_id)["stages"]))
        op = _cancel_and_wait(api, op_id)
    finally:
        os.close(fd)
    assert op["state"] == "cancelled", op
    assert api.get("/v1/kernels").json()["kernels"] == []
    assert not (banger_env.state_dir / "kernels" / "k").exists()
    _ok(banger_env.banger("kernel", "import", "k", "--from", str(ensure_kernel_deb())))
    assert _scratch(banger_env) == []  # lock files are removed on release


def test_cancel_kills_a_hung_pull_and_leaves_nothing(
    banger_env: BangerEnv, api: httpx.Client
) -> None:
    _ok(banger_env.banger("kernel", "import", "k", "--from", str(ensure_kernel_deb())))
    with socket.socket() as silent:  # a "registry" that accepts and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        op_id = _begin(api, "/v1/images/pull", {"ref": f"127.0.0.1:{port}/x:v1", "name": "x"})
        _wait("skopeo to start", lambda: subprocess.run(
            ["pgrep", "-f", f"127.0.0.1:{port}"], capture_output=True).returncode == 0)
        started = time.monotonic()
        op = _cancel_and_wait(api, op_id)
        assert op["state"] == "cancelled", op
        assert time.monotonic() - started < 5
        assert subprocess.run(["pgrep", "-f", f"127.0.0.1:{port}"]).returncode == 1
    assert api.get("/v1/images").json()["images"] == []
    assert list((banger_env.state_dir / "images").glob("*")) == []
    assert list((banger_env.cache_dir / "oci").glob("tmp-*")) == []
    assert _scratch(banger_env) == []


def _kill_when(env: BangerEnv, what: str, seen: Callable[[], bool]) -> None:
    pid = env.daemon_pid()
    assert pid
    _wait(what, seen, timeout=120)
    os.kill(pid, signal.SIGKILL)
    _wait("the daemon to die", lambda: not pid_alive(pid), 10)


def test_a_sigkilled_daemon_leaves_no_scratch_and_the_names_import_after(
    banger_env: BangerEnv, api: httpx.Client, tmp_path: Path
) -> None:
    deb = str(ensure_kernel_deb())
    _begin(api, "/v1/kernels/import", {"name": "k", "source": deb})
    _kill_when(banger_env, "the kernel extract dir", lambda: any(
        n.startswith("kernel-k.extract-") and any((banger_env.state_dir / "tmp" / n).iterdir())
        for n in _scratch(banger_env)))
    assert _scratch(banger_env) != []  # the kill left work behind...
    _ok(banger_env.banger("daemon", "start"))
    assert _scratch(banger_env) == []  # ...which the next start swept
    _ok(banger_env.banger("kernel", "import", "k", "--from", deb))

    big = tmp_path / "big.tar"
    big.write_bytes(layer_tar(bootable_base([Member("srv/blob", data=os.urandom(48 << 20))])))
    transport = httpx.HTTPTransport(uds=str(banger_env.socket))
    with httpx.Client(transport=transport, base_url="http://bangerd", timeout=30) as again:
        _begin(again, "/v1/images/import", {"path": str(big), "name": "big"})
    _kill_when(banger_env, "the image staging dir",
               lambda: any(n.startswith("import-") for n in _scratch(banger_env)))
    _ok(banger_env.banger("daemon", "start"))
    assert _scratch(banger_env) == []
    assert list((banger_env.state_dir / "images").glob("*")) == []
    _ok(banger_env.banger("image", "import", str(big), "--name", "big"))
    assert _scratch(banger_env) == []
