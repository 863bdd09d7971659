"""Which failed restores say the snapshot's files are bad (``SnapshotDamaged``: it is dropped)
and which do not (``SnapshotUnusable``: that VM boots cold, the snapshot stays)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from banger.core.errors import SnapshotDamaged, SnapshotUnusable
from banger.vmm import qemu_snapshot
from banger.vmm.base import Handle
from banger.vmm.qemu import QemuBackend


class MigrationQmp:
    """A QMP peer whose incoming migration ends in ``status`` (QEMU's ``query-migrate``)."""

    def __init__(self, status: str) -> None:
        self.status = status

    def send_fd_scm(self, fd: int) -> None:
        os.fstat(fd)  # a real descriptor was passed

    async def execute(self, cmd: str, args: Any = None) -> Any:
        if cmd == "query-migrate":
            return {"status": self.status, "error-desc": "Unable to read from socket"}
        return {}


@pytest.mark.parametrize(("status", "raised"), [
    ("failed", SnapshotDamaged),  # QEMU refused the stream
    ("active", SnapshotUnusable),  # still loading at the deadline: a loaded host
])
def test_a_load_is_damaged_only_when_qemu_refused_the_stream(
        tmp_path: Path, status: str, raised: type[Exception]) -> None:
    (tmp_path / "state").write_bytes(b"x")
    with pytest.raises(SnapshotUnusable) as err:
        asyncio.run(qemu_snapshot.load(MigrationQmp(status), tmp_path / "state",  # type: ignore[arg-type]
                                       timeout=0.05))
    assert type(err.value) is raised


@pytest.mark.parametrize(("log", "raised"), [
    ("qemu-system-x86_64: load of migration failed: Invalid argument\n", SnapshotDamaged),
    ("qemu-system-x86_64: terminating on signal 9 from pid 1\n", SnapshotUnusable),
    ("", SnapshotUnusable),
])
def test_a_lost_qmp_connection_is_damaged_only_when_qemu_logged_a_refused_stream(
        tmp_path: Path, log: str, raised: type[Exception]) -> None:
    """QEMU exits on a bad stream (its QMP socket goes with it), and so it does when it is
    killed or the connection times out: only its log's line tells them apart."""
    (tmp_path / "vmm.log").write_text(log)
    (tmp_path / "state").write_bytes(b"x")
    handle = Handle("qemu", "vm1", 1, 0, tmp_path / "qmp.sock", tmp_path / "vmm.pid",
                    tmp_path / "vmm.log", ())
    with pytest.raises(SnapshotUnusable) as err:
        asyncio.run(QemuBackend("/bin/false").restore_state(handle, tmp_path / "state"))
    assert type(err.value) is raised


def test_a_host_out_of_descriptors_does_not_make_a_snapshot_damaged(tmp_path: Path) -> None:
    """EMFILE opening the state is the host's shortage, not a bad file (a child process with
    no descriptor to spare)."""
    (tmp_path / "state").write_bytes(b"x")
    code = f"""
import resource
from pathlib import Path
from banger.core.errors import SnapshotDamaged, SnapshotUnusable
from banger.vmm.base import open_snapshot_file
files = []
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
try:
    while True:
        files.append(open('/dev/null'))
except OSError:
    pass
try:
    open_snapshot_file(Path({str(tmp_path / 'state')!r}), "state")
except SnapshotUnusable as exc:
    print(type(exc).__name__, exc.message)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert out.startswith("SnapshotUnusable cannot open the saved state state: "), out
    assert "Too many open files" in out
