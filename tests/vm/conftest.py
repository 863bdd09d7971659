"""Real-VM fixtures: a template store with the test kernel and image, and a VM factory.

Each test gets its own state/runtime dirs, bridge name and subnet. The factory
owns every VM the test creates; at the end it deletes them, stops the daemon,
kills any VMM still naming the test's dirs by pid, removes the bridge, and then
fails the test for anything that was left: a VMM process, TAP, VM directory or
row. Console and daemon logs are printed when a test fails.

A host without what real VMs need skips, naming it; a test kernel or image that
cannot be made is an error (``tests/support/hostcheck.py``).
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import BangerEnv
from tests.support.hostcheck import kill_leftover_vmms, require_vm_host
from tests.support.image import ensure_test_image
from tests.support.kernel import ensure_kernel_deb


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state.db that knows the test kernel and image (their files stay where imported)."""
    require_vm_host()
    root = tmp_path_factory.mktemp("template")
    env = BangerEnv(root)
    try:
        _ok(env.banger("kernel", "import", "debian-cloud", "--from", str(ensure_kernel_deb())))
        rootfs = ensure_test_image() / "rootfs.ext4"
        _ok(env.banger("image", "import", str(rootfs), "--name", "test-image"))
    finally:
        env.banger("daemon", "stop")
    return env.state_dir / "state.db"


@dataclass
class VMFactory:
    """One test's banger environment; every VM made through it is cleaned up and checked."""

    env: BangerEnv
    bridge: str
    names: list[str] = field(default_factory=list)

    def banger(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.env.banger(*args, timeout=timeout)

    def ok(self, *args: str, timeout: float = 300) -> str:
        return _ok(self.banger(*args, timeout=timeout))

    def create(self, name: str, *extra: str) -> dict[str, object]:
        self.names.append(name)
        out = self.ok("vm", "create", "--name", name, "--disk", "1G", "--json", *extra)
        return dict(json.loads(out))

    def show(self, name: str) -> dict[str, object]:
        return dict(json.loads(self.ok("vm", "show", name, "--json")))

    def ssh(self, name: str, *command: str) -> subprocess.CompletedProcess[str]:
        return self.banger("vm", "ssh", name, "--", *command)

    def rows(self) -> list[str]:
        db = self.env.state_dir / "state.db"
        with sqlite3.connect(db) as conn:
            return [r[0] for r in conn.execute("SELECT name FROM vms")]

    def dump_logs(self) -> str:
        parts = []
        for log in sorted(self.env.state_dir.glob("vms/*/*.log")) + [
            self.env.state_dir / "bangerd.log"
        ]:
            if log.exists():
                parts.append(f"==== {log}\n{log.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)


def bridge_ports(bridge: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "master", bridge],
                         capture_output=True, text=True).stdout
    return [line.split(":")[1].strip() for line in out.splitlines() if line.strip()]


@pytest.fixture
def vms(tmp_path: Path, template_db: Path, request: pytest.FixtureRequest) -> Iterator[VMFactory]:
    env = BangerEnv(tmp_path)
    env.state_dir.mkdir(parents=True)
    shutil.copy(template_db, env.state_dir / "state.db")
    bridge = f"bgt{secrets.token_hex(3)}"
    subnet = f"172.31.{secrets.randbelow(200) + 10}"
    env.extra_env.update(BANGER_BRIDGE_NAME=bridge, BANGER_BRIDGE_CIDR=f"{subnet}.1/24")
    factory = VMFactory(env, bridge)
    yield factory
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(factory.dump_logs())
    for name in factory.ok("vm", "list", "-q").split():
        factory.banger("vm", "delete", name)
    leftover_rows = factory.rows()
    factory.banger("daemon", "stop")
    leaked_vmms = kill_leftover_vmms(str(tmp_path))
    leftover_taps = bridge_ports(bridge)
    subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
    subprocess.run(["nft", "delete", "table", "ip", f"banger_{bridge}"], capture_output=True)
    leaked = [what for what, found in (
        (f"VMM processes (killed by pid): {leaked_vmms}", leaked_vmms),
        (f"VM rows: {leftover_rows}", leftover_rows),
        (f"TAPs on the bridge: {leftover_taps}", leftover_taps),
        ("VM files", list((env.state_dir / "vms").glob("*"))),
    ) if found]  # fmt: skip
    assert not leaked, f"{request.node.nodeid} left behind: " + "; ".join(leaked)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
