"""An isolated banger environment for the benchmark: its own dirs, daemon, bridge and subnet.

Everything the benchmark makes lives under one short temp dir (``/tmp/bb-XXXX``:
socket paths must stay under 107 bytes) and one bridge; ``teardown`` removes
all of it and is safe to call after a partial setup or a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from banger.api.client import Client
from banger.api.models import Operation, OperationState
from tests.support.hostcheck import processes_naming

BRIDGE_NAME = "bgbench0"
BRIDGE_CIDR = "172.31.99.1/24"
OP_TIMEOUT_S = 300.0
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Timed:
    """One CLI run: its result and wall-clock seconds."""

    result: subprocess.CompletedProcess[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.result.returncode == 0


def banger_argv() -> list[str]:
    """The CLI as a user runs it: the venv's ``banger`` entry point."""
    script = Path(sys.executable).parent / "banger"
    return [str(script)] if script.exists() else [sys.executable, "-m", "banger.cli"]


def wall(ts: datetime | None) -> float:
    """A daemon timestamp as seconds since the epoch (same clock as ``time.time()``)."""
    assert ts is not None, "timestamp missing: the stage never finished"
    return ts.timestamp()


@dataclass
class BenchEnv:
    root: Path
    bridge: str = BRIDGE_NAME
    bridge_cidr: str = BRIDGE_CIDR
    _client: Client | None = field(default=None, repr=False)

    @classmethod
    def make(cls) -> BenchEnv:
        return cls(Path(tempfile.mkdtemp(prefix="bb-", dir="/tmp")))

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def runtime_dir(self) -> Path:
        return self.root / "run"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "bangerd.sock"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BANGER_")}
        env.update(
            BANGER_STATE_DIR=str(self.state_dir),
            BANGER_RUNTIME_DIR=str(self.runtime_dir),
            BANGER_CACHE_DIR=str(self.root / "cache"),
            BANGER_CONFIG=str(self.root / "config.toml"),
            BANGER_BRIDGE_NAME=self.bridge,
            BANGER_BRIDGE_CIDR=self.bridge_cidr,
            # cold figures must not share the CPUs with a background template boot;
            # section 7 makes its snapshot with `image warm`
            BANGER_SNAPSHOT_ON_COLD_CREATE="false",
            NO_COLOR="1",
        )
        return env

    # -- the CLI ----------------------------------------------------------------------

    def cli_popen(self, *args: str, output: Path) -> subprocess.Popen[bytes]:
        """Start ``banger ARGS`` in the background, its stdout and stderr going to ``output``."""
        with open(output, "wb") as out:
            return subprocess.Popen(
                [*banger_argv(), *args], env=self.env(),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def cli(self, *args: str, timeout: float = 300, stdin: Path | None = None) -> Timed:
        """Run ``banger ARGS`` and time it (wall clock of the whole process); ``stdin`` fed in."""
        with open(stdin or os.devnull, "rb") as feed:
            started = time.perf_counter()
            result = subprocess.run(
                [*banger_argv(), *args], env=self.env(), text=True, capture_output=True,
                stdin=feed, timeout=timeout, check=False,
            )  # fmt: skip
            return Timed(result, time.perf_counter() - started)

    def bare_python(self) -> float:
        """Seconds of ``python -c pass`` with the CLI's interpreter and environment."""
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=self.env(), stdin=subprocess.DEVNULL,
                       capture_output=True, check=True, timeout=60)
        return time.perf_counter() - started

    def cli_ok(self, *args: str, timeout: float = 300, stdin: Path | None = None) -> Timed:
        timed = self.cli(*args, timeout=timeout, stdin=stdin)
        if not timed.ok:
            raise RuntimeError(
                f"banger {' '.join(args)} failed ({timed.result.returncode}): "
                f"{timed.result.stderr.strip()[-2000:]}"
            )
        return timed

    def restart_daemon(self, config: str) -> None:
        """Stop the daemon and start one reading ``config`` (TOML text)."""
        self.cli_ok("daemon", "stop", timeout=60)
        if self._client is not None:
            self._client.close()
            self._client = None
        (self.root / "config.toml").write_text(config)
        self.cli_ok("daemon", "start", timeout=60)

    # -- the API ----------------------------------------------------------------------

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.socket, timeout=60.0)
        return self._client

    def wait(self, op: Operation, timeout: float = OP_TIMEOUT_S) -> Operation:
        """Follow ``op`` with the long poll until it finished."""
        deadline = time.monotonic() + timeout
        while not op.state.finished:
            if time.monotonic() > deadline:
                raise TimeoutError(f"operation {op.id} ({op.kind}) still running after {timeout}s")
            op = self.client.operation(op.id, wait=10, revision=op.revision)
        return op

    def wait_ok(self, op: Operation) -> Operation:
        op = self.wait(op)
        if op.state is not OperationState.SUCCEEDED:
            raise RuntimeError(f"{op.kind} {op.target} {op.state}: {op.error}")
        return op

    def create_vm(self, name: str) -> tuple[float, Operation]:
        """POST /v1/vms with the defaults; (wall time the request was sent, finished op)."""
        sent = time.time()
        op = Operation.model_validate(self.client.request("POST", "/vms", json_body={"name": name}))
        return sent, self.wait_ok(op)

    def delete_vm(self, name: str) -> Operation:
        return self.wait_ok(Operation.model_validate(self.client.request("DELETE", f"/vms/{name}")))

    def operations(self) -> list[Operation]:
        return [
            Operation.model_validate(o)
            for o in self.client.request("GET", "/operations")["operations"]
        ]

    def vm_names(self) -> list[str]:
        return [vm["name"] for vm in self.client.request("GET", "/vms")["vms"]]

    # -- setup and teardown -----------------------------------------------------------

    def setup(self, kernel_deb: Path, rootfs: Path, progress: Progress) -> dict[str, float]:
        """Daemon, kernel and image; seconds each took."""
        times = {}
        progress(f"banger state in {self.root}, bridge {self.bridge} {self.bridge_cidr}")
        times["daemon_start"] = self.cli_ok("daemon", "start").seconds
        times["kernel_import"] = self.cli_ok(
            "kernel", "import", "debian-cloud", "--from", str(kernel_deb)
        ).seconds
        times["image_import"] = self.cli_ok(
            "image", "import", str(rootfs), "--name", "bench"
        ).seconds
        return times

    def kernel_dir(self) -> Path:
        return Path(self.client.request("GET", "/kernels/debian-cloud")["path"])

    def image(self) -> dict[str, Any]:
        return dict(self.client.request("GET", "/images/bench"))

    def teardown(self, progress: Progress) -> None:
        """Delete every VM, stop the daemon, kill leftovers, drop the bridge and the dirs."""
        with contextlib.suppress(Exception):
            for name in self.vm_names():
                progress(f"cleanup: deleting VM {name}")
                with contextlib.suppress(Exception):
                    self.delete_vm(name)
        if self._client is not None:
            self._client.close()
        with contextlib.suppress(Exception):
            self.cli("daemon", "stop", timeout=60)
        for pid in self._our_processes():
            progress(f"cleanup: killing leftover process {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _our_processes(self) -> list[int]:
        """Processes whose command line names this environment's private dir (VMMs, daemon)."""
        return list(processes_naming(str(self.root)))
