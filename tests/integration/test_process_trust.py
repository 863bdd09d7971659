"""Hostile neighbours: a working directory with its own ``banger/``, a squatted runtime dir,
a foreign socket, a non-owner's CLI. Each test builds the hostile input itself.

The squatter is uid 65534 (``setpriv``), so these tests need root.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.api.client import Client, api_path
from banger.core.errors import InvalidInput
from banger.images.build import finish_hook_command
from tests.conftest import BangerEnv

NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to act as another user (uid 65534)",
)
BANGER = Path(sys.executable).with_name("banger")


def _as_nobody(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=60,
                          check=False, **kwargs)  # type: ignore[call-overload]


def _hostile_package(root: Path, marker: Path, *modules: str) -> None:
    """``root/banger/...``: packages whose every module writes ``marker`` when imported."""
    payload = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for module in modules:
        parts = module.split(".")
        for depth in range(1, len(parts)):
            pkg = root.joinpath(*parts[:depth])
            pkg.mkdir(exist_ok=True)
            (pkg / "__init__.py").write_text(payload)
        root.joinpath(*parts[:-1], parts[-1] + ".py").write_text(payload)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A world-writable sticky directory, like /tmp, that this test owns and removes."""
    path = Path(tempfile.mkdtemp(prefix="banger-squat-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_banger_package_in_the_working_directory_never_runs(
    banger_env: BangerEnv, tmp_path: Path
) -> None:
    hostile, marker = tmp_path / "clone", tmp_path / "pwned"
    hostile.mkdir()
    _hostile_package(hostile, marker, "banger.daemon.main", "banger.cli.main")
    result = subprocess.run([str(BANGER), "daemon", "start"], cwd=hostile, env=banger_env.env(),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), f"ran the working directory's {marker.read_text()}"
    status = json.loads(banger_env.banger("daemon", "status", "--json").stdout)
    assert status["running"] is True
    assert os.readlink(f"/proc/{status['pid']}/cwd") == "/"


def test_the_image_build_hook_never_imports_the_working_directory(tmp_path: Path) -> None:
    hostile, marker = tmp_path / "clone", tmp_path / "pwned"
    hostile.mkdir()
    _hostile_package(hostile, marker, "banger.images.build")
    staging = tmp_path / "no-staging"
    hook = finish_hook_command(staging)
    assert " -I -m banger.images.build " in hook
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(hostile)}
    result = subprocess.run(["sh", "-c", hook, "sh", str(tmp_path / "no-root")], cwd=hostile,
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert not marker.exists(), f"ran the working directory's {marker.read_text()}"
    assert str(staging / "tree") in result.stderr, "the real module ran (and found no staging)"


def test_a_fresh_start_makes_every_dir_private(banger_env: BangerEnv) -> None:
    banger_env.state_dir.mkdir(mode=0o755)  # what an older banger's CLI left behind
    banger_env.state_dir.chmod(0o755)
    result = banger_env.banger("daemon", "start")
    assert result.returncode == 0, result.stderr
    for directory in (banger_env.state_dir, banger_env.cache_dir, banger_env.runtime_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    log = banger_env.state_dir / "bangerd.stderr.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


@needs_root
def test_a_squatted_runtime_dir_is_refused_and_its_planted_pidfile_untouched(
    banger_env: BangerEnv, shared_tmp: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "precious"
    victim.write_text("keep me\n")
    squat = shared_tmp / "banger-0"
    runtime = squat / "banger"
    prepared = _as_nobody(["sh", "-c", 'mkdir -m 777 "$1" "$1/banger" && ln -s "$2" '
                           '"$1/banger/bangerd.pid"', "sh", str(squat), str(victim)])
    assert prepared.returncode == 0, prepared.stderr
    env = banger_env.env(BANGER_RUNTIME_DIR=str(runtime))
    cli = banger_env.banger("daemon", "start", env=env)
    assert cli.returncode == 5, cli.stderr
    assert cli.stderr.startswith(f"banger: refusing to use {runtime}")
    assert "XDG_RUNTIME_DIR" in cli.stderr and "remove it" in cli.stderr
    daemon = subprocess.run([sys.executable, "-I", "-m", "banger.daemon.main"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert daemon.returncode == 5
    assert daemon.stderr.startswith(f"bangerd: refusing to use {runtime}")
    assert victim.read_text() == "keep me\n"
    assert not (runtime / "bangerd.sock").exists()


@needs_root
def test_the_cli_never_talks_to_a_socket_another_user_planted(
    banger_env: BangerEnv, shared_tmp: Path
) -> None:
    fake_sock, marker = shared_tmp / "fake.sock", shared_tmp / "contacted"
    server = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)\n"
        "print('ready', flush=True)\n"
        "c, _ = s.accept(); open(sys.argv[2], 'w').write('contacted')\n"
    )
    prefix = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
    fake = subprocess.Popen([*prefix, sys.executable, "-I", "-c", server, str(fake_sock),
                             str(marker)], stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout is not None and fake.stdout.readline().strip() == "ready"
        banger_env.runtime_dir.mkdir(mode=0o700)
        # A root-owned, private dir: only the socket in it is foreign.
        os.rename(fake_sock, banger_env.socket)
        result = banger_env.banger("vm", "list")
        assert result.returncode == 5, result.stderr
        assert result.stderr.startswith(f"banger: refusing to use {banger_env.socket}")
        time.sleep(0.2)
        assert not marker.exists(), "the CLI connected to the foreign socket"
    finally:
        fake.kill()
        fake.wait()
        banger_env.socket.unlink(missing_ok=True)


@needs_root
def test_a_non_owner_gets_permission_denied_not_a_traceback(
    banger_env: BangerEnv, shared_tmp: Path
) -> None:
    assert banger_env.banger("daemon", "start").returncode == 0
    own = shared_tmp / "nobody"
    env = {
        "PATH": os.environ["PATH"], "NO_COLOR": "1", "HOME": str(own),
        "BANGER_RUNTIME_DIR": str(banger_env.runtime_dir), "BANGER_STATE_DIR": str(own / "state"),
        "BANGER_CACHE_DIR": str(own / "cache"), "BANGER_CONFIG": str(own / "config.toml"),
    }
    result = _as_nobody([str(BANGER), "vm", "list"], env=env, cwd="/")
    assert result.returncode == 5, result.stderr
    assert result.stderr.splitlines()[0] == f"banger: permission denied on {banger_env.socket}"
    assert "Traceback" not in result.stderr


def test_quoted_refs_reach_the_daemon_whole(banger_env: BangerEnv) -> None:
    # A quoted "/" (%2F) is decoded before the daemon routes it, so "/" is kept out
    # by the CLI's name check (test_cli_edges), not by quoting.
    assert banger_env.banger("daemon", "start").returncode == 0
    with Client(banger_env.socket) as client:
        for ref in ("box?x", "box#x", "%2F", "my box", "bøx"):
            with pytest.raises(InvalidInput):
                client.request("DELETE", api_path("vms", ref))
