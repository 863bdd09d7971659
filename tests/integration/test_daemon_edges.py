"""The daemon's edges against hostile refs, bodies, sizes and faults: every answer is one clear
JSON error with an op_id, and nothing is changed by a refused request."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from banger.core.wait import poll_until
from banger.store.db import Store
from banger.store.records import (
    ImageRecord,
    KernelRecord,
    OperationRecord,
    OperationState,
    VMRecord,
    VMState,
)
from tests.conftest import BangerEnv

ALPHA_ID = "a1b2c3d4e5f6"
IMPOSTOR_ID = "0f0f0f0f0f0f"
SEED_BYTES = 64 << 20


def seed(env: BangerEnv) -> None:
    """A kernel, an image with a 64M work seed, VM 'alpha', and (as an older banger could
    write) VM IMPOSTOR_ID's row named exactly like alpha's id."""
    env.state_dir.mkdir(parents=True, exist_ok=True)
    image_dir = env.state_dir / "images" / "img0000000001"
    image_dir.mkdir(parents=True)
    with open(image_dir / "work-seed.ext4", "wb") as f:
        f.truncate(SEED_BYTES)
    with Store.open(env.state_dir / "state.db") as store:
        store.kernels.add(KernelRecord("catalog", "6.1", "test", env.state_dir / "kernels" / "k"))
        store.images.add(ImageRecord("img0000000001", "img", "test", image_dir,
                                     kernel_name="catalog", is_default=True))
        for vm_id, name in ((ALPHA_ID, "alpha"), (IMPOSTOR_ID, ALPHA_ID),
                            ("0123456789ab", ALPHA_ID[:8])):
            store.vms.add(VMRecord(vm_id, name, "qemu", 1, 256, SEED_BYTES,
                                   image_id="img0000000001", kernel_name="catalog",
                                   state=VMState.STOPPED))


def rows(env: BangerEnv) -> dict[str, tuple[str, int, int, int]]:
    with sqlite3.connect(env.state_dir / "state.db") as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(
            "SELECT id, name, vcpu, memory_mib, disk_bytes FROM vms")}


@pytest.fixture
def seeded(banger_env: BangerEnv) -> BangerEnv:
    seed(banger_env)
    assert banger_env.banger("daemon", "start").returncode == 0
    return banger_env


@pytest.fixture
def api(seeded: BangerEnv) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds=str(seeded.socket))
    with httpx.Client(transport=transport, base_url="http://bangerd/v1", timeout=30) as client:
        yield client


def error_of(resp: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = dict(resp.json())
    assert body["code"] == code and body["op_id"] == resp.headers["X-Banger-Op-Id"], body
    return body


# -- names and ids ---------------------------------------------------------------------------

def test_a_ref_that_is_one_vms_id_and_anothers_name_is_refused_and_nothing_is_deleted(
    seeded: BangerEnv,
) -> None:
    before = rows(seeded)
    for verb in ("show", "delete"):
        result = seeded.banger("vm", verb, ALPHA_ID)
        assert result.returncode == 4, result.stderr
        assert "ambiguous" in result.stderr and "'alpha'" in result.stderr, result.stderr
        assert IMPOSTOR_ID in result.stderr
    assert rows(seeded) == before
    # Each is still reachable by its other, unambiguous ref.
    assert json.loads(seeded.banger("vm", "show", "alpha", "--json").stdout)["id"] == ALPHA_ID
    assert seeded.banger("vm", "delete", IMPOSTOR_ID).returncode == 0
    assert IMPOSTOR_ID not in rows(seeded) and ALPHA_ID in rows(seeded)


def test_ids_are_matched_exactly_never_by_prefix(seeded: BangerEnv) -> None:
    shown = json.loads(seeded.banger("vm", "show", ALPHA_ID[:8], "--json").stdout)
    assert shown["id"] == "0123456789ab" and shown["name"] == ALPHA_ID[:8]


@pytest.mark.parametrize("argv", [
    ("vm", "create", "--name", "deadbeef0000", "--no-start"),
    ("image", "import", "/etc/hostname", "--name", "0123456789ab"),
    ("kernel", "import", "abcdefabcdef", "--from", "/etc/hostname"),
])
def test_a_new_name_shaped_like_an_id_is_refused(seeded: BangerEnv, argv: tuple[str, ...]) -> None:
    result = seeded.banger(*argv)
    assert result.returncode == 2, result.stderr
    assert "shape of an id" in result.stderr
    assert len(rows(seeded)) == 3


def test_an_image_ref_that_is_ambiguous_is_refused(seeded: BangerEnv) -> None:
    with Store.open(seeded.state_dir / "state.db") as store:
        store.images.add(ImageRecord("ffffffffffff", "img0000000001", "test", Path("/nonexistent"),
                                     kernel_name="catalog"))
    result = seeded.banger("image", "delete", "img0000000001")
    assert result.returncode == 4 and "ambiguous" in result.stderr, result.stderr
    assert seeded.banger("image", "show", "img").returncode == 0


def test_a_kernel_named_catalog_is_showable_and_the_catalog_still_lists(seeded: BangerEnv) -> None:
    shown = json.loads(seeded.banger("kernel", "show", "catalog", "--json").stdout)
    assert shown["name"] == "catalog" and shown["version"] == "6.1"
    listed = json.loads(seeded.banger("kernel", "catalog", "--json").stdout)
    assert listed["kernels"]


# -- sizes and types -------------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (("--vcpu", "64"), "CPUs"),
    (("--memory", "999999"), "MiB this host has free"),
    (("--disk", "100T"), "free under"),
])
def test_vm_set_applies_the_host_checks_of_create(
    seeded: BangerEnv, flags: tuple[str, ...], words: str
) -> None:
    if flags[0] == "--vcpu" and (os.cpu_count() or 1) >= 64:
        pytest.skip("needs a host with fewer than 64 CPUs")
    before = rows(seeded)
    result = seeded.banger("vm", "set", "alpha", *flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("banger: --") and words in result.stderr
    assert rows(seeded) == before


def test_disk_below_the_work_seed_is_refused_before_anything_is_reserved(
    seeded: BangerEnv,
) -> None:
    result = seeded.banger("vm", "create", "--name", "small", "--image", "img", "--disk", "32M",
                           "--no-start")
    assert result.returncode == 2, result.stderr
    assert "smaller than the work seed of image 'img' (64M)" in result.stderr
    assert "small" not in {r[0] for r in rows(seeded).values()}
    assert not (seeded.state_dir / "vms").exists()


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/vms", {"name": "t", "vcpu": True}),
    ("POST", "/vms", {"name": "t", "vcpu": "2"}),
    ("POST", "/vms", {"name": "t", "memory_mib": 512.0}),
    ("PATCH", "/vms/alpha", {"disk": ""}),
    ("PATCH", "/vms/alpha", {"vcpu": False}),
])
def test_request_bodies_have_strict_types(
    api: httpx.Client, seeded: BangerEnv, method: str, path: str, body: dict[str, object]
) -> None:
    before = rows(seeded)
    error_of(api.request(method, path, json=body), 400, "invalid_input")
    assert rows(seeded) == before


# -- errors are total ------------------------------------------------------------------------

def test_an_unexpected_exception_in_a_route_answers_json_with_op_id_and_the_log_path(
    seeded: BangerEnv, api: httpx.Client
) -> None:
    with sqlite3.connect(seeded.state_dir / "state.db") as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute("UPDATE vms SET spec = '{broken' WHERE name = 'alpha'")
    body = error_of(api.get("/vms/alpha"), 500, "internal")
    assert body["message"].startswith("internal error: JSONDecodeError: ")
    assert str(seeded.state_dir / "bangerd.log") in body["hint"]
    log = [json.loads(x) for x in (seeded.state_dir / "bangerd.log").read_text().splitlines()]
    crash = [x for x in log if x.get("event") == "request crashed"]
    assert crash and crash[-1]["op_id"] == body["op_id"] and "Traceback" in crash[-1]["exception"]
    cli = seeded.banger("vm", "show", "alpha")
    assert cli.returncode != 0 and "internal error: JSONDecodeError" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_an_operation_interrupted_by_a_restart_says_so_when_queried(
    banger_env: BangerEnv,
) -> None:
    banger_env.state_dir.mkdir(parents=True)
    with Store.open(banger_env.state_dir / "state.db") as store:
        store.operations.add(OperationRecord(id="abc", kind="kernel.pull",
                                             state=OperationState.RUNNING))
    assert banger_env.banger("daemon", "start").returncode == 0
    transport = httpx.HTTPTransport(uds=str(banger_env.socket))
    with httpx.Client(transport=transport, base_url="http://bangerd/v1") as client:
        for query in ("", "?wait=5&revision=0"):
            op = client.get(f"/operations/abc{query}").json()
            assert op["state"] == "failed", op
            assert op["error"]["message"] == "interrupted by a daemon restart"
            assert op["error"]["op_id"] == "abc"


def test_a_planted_console_log_symlink_is_refused_and_its_target_untouched(
    seeded: BangerEnv, tmp_path: Path
) -> None:
    target = tmp_path / "secret"
    target.write_text("not for the console\n")
    vm_dir = seeded.state_dir / "vms" / ALPHA_ID
    vm_dir.mkdir(parents=True)
    (vm_dir / "console.log").symlink_to(target)
    result = seeded.banger("vm", "logs", "alpha")
    assert result.returncode == 5, result.stderr
    assert "symbolic link" in result.stderr and "not for the console" not in result.stdout
    assert target.read_text() == "not for the console\n"


# -- the state database turns read-only or full --------------------------------------------

def _in_mount_ns(env: BangerEnv, setup: str) -> list[str]:
    """argv that runs bangerd in a private mount namespace after ``setup`` (sh, $0 = state)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace (unshare -m)")
    return ["unshare", "-m", "--propagation", "private", "sh", "-ec",
            setup + '\nexec "$@"', str(env.state_dir), *env.banger_argv()[:1],
            "-m", "banger.daemon.main"]


def test_a_read_only_state_db_stops_the_daemon_with_one_clear_line(
    banger_env: BangerEnv,
) -> None:
    seed(banger_env)
    db = banger_env.state_dir / "state.db"
    argv = _in_mount_ns(banger_env, 'mount --bind "$0/state.db" "$0/state.db"\n'
                                    'mount -o remount,bind,ro "$0/state.db"')
    result = subprocess.run(argv, env=banger_env.env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 9, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"bangerd: cannot write the state database {db}: attempt to write")
    assert "read-only" in last and "Traceback" not in result.stderr


def test_a_full_disk_under_a_running_daemon_answers_json_with_op_id(
    banger_env: BangerEnv,
) -> None:
    seed(banger_env)
    argv = _in_mount_ns(banger_env, 'cp -a "$0" "$0.seed"\n'
                                    'mount -t tmpfs -o size=8m tmpfs "$0"\n'
                                    'cp -a "$0.seed/." "$0"')
    daemon = subprocess.Popen(argv, env=banger_env.env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert poll_until(lambda: banger_env.socket.exists(), timeout=30)
        subprocess.run(["nsenter", "-t", str(daemon.pid), "-m", "--", "sh", "-c",
                        f"cat /dev/zero > {banger_env.state_dir}/filler"], capture_output=True)
        transport = httpx.HTTPTransport(uds=str(banger_env.socket))
        with httpx.Client(transport=transport, base_url="http://bangerd/v1") as client:
            body = error_of(client.patch("/vms/alpha", json={"vcpu": 1}), 500, "store_error")
            assert "database or disk is full" in body["message"]
            assert "free some space" in (body["hint"] or "")
            # Its history cannot be written either, yet the operation still ends.
            op = client.post("/kernels/import", json={"name": "k", "source": "/nonexistent"})
            op_id = op.json()["id"]
            done = poll_until(
                lambda: (o := client.get(f"/operations/{op_id}").json())["finished_at"] and o,
                timeout=30,
            )
            assert done and done["state"] == "failed" and done["error"]["code"] == "not_found"
        cli = banger_env.banger("vm", "set", "alpha", "--vcpu", "1")
        assert cli.returncode == 9 and "database or disk is full" in cli.stderr, cli.stderr
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def test_an_unwritable_state_dir_stops_the_daemon_with_one_clear_line() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run bangerd as another uid (setpriv)")
    root = Path(tempfile.mkdtemp(prefix="banger-unwritable-", dir="/tmp"))
    root.chmod(0o755)  # traversable by uid 65534, writable by root only
    env = BangerEnv(root)
    env.state_dir.mkdir(mode=0o500)  # 65534's own, private, but not writable
    os.chown(env.state_dir, 65534, 65534)
    for own in (env.runtime_dir, env.cache_dir):
        own.mkdir(mode=0o700)
        os.chown(own, 65534, 65534)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         *env.banger_argv()[:1], "-m", "banger.daemon.main"],
        env=env.env(HOME=str(env.runtime_dir)), capture_output=True, text=True, timeout=60,
        cwd="/",
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        f"bangerd: the state directory {env.state_dir} is not writable by uid 65534 ("
    ), result.stderr
    assert "state_dir in" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(env.state_dir.iterdir()) == []
    shutil.rmtree(root)
