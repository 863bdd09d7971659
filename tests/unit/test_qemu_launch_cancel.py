"""A QEMU launch cancelled mid-way (daemon shutdown cancels a background snapshot build, a
cancelled ``image warm``) leaves no VMM behind: the daemonized child it may have forked is
found by its pidfile and killed. The "QEMU" is a script that daemonizes like it: it forks,
the child writes the pidfile and runs on, the first process exits once it is "set up"."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from banger.core.vmspec import RootDisk, UserNet
from banger.host import proc_identity as proc
from banger.vmm.qemu import QemuBackend
from tests.unit.test_qemu_vmspec import make_spec

FAKE_QEMU = """#!{python}
import os, sys, time
pidfile = sys.argv[sys.argv.index("-pidfile") + 1]
if os.fork() == 0:
    os.setsid()
    time.sleep({child_delay})
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{{os.getpid()}}\\n")
    os.rename(pidfile + ".tmp", pidfile)
    with open({side!r}, "w") as f:  # where the test finds it whatever happens
        f.write(str(os.getpid()))
    time.sleep(60)
    sys.exit(0)
time.sleep({parent_delay})
sys.exit(0)
"""


@pytest.mark.parametrize("cancel_when", ["before the pidfile", "after the pidfile"])
def test_a_cancelled_launch_kills_the_vmm_it_daemonized(tmp_path: Path, cancel_when: str) -> None:
    side = tmp_path / "child.pid"
    script = tmp_path / "qemu-system-x86_64"
    script.write_text(FAKE_QEMU.format(python=sys.executable, child_delay=0.3,
                                       parent_delay=0.6, side=str(side)))
    script.chmod(0o755)
    run = tmp_path / "run"
    spec = make_spec(run_dir=run, vmm_log=tmp_path / "vmm.log",
                     console_log=tmp_path / "console.log",
                     root=RootDisk(tmp_path / "root.qcow2", "qcow2"),
                     work_disk=tmp_path / "work.ext4",
                     net=UserNet(ssh_host_port=2222, mac="02:00:00:00:00:01"))
    backend = QemuBackend(qemu_binary=str(script))

    async def scenario() -> None:
        task = asyncio.create_task(backend.launch(spec))
        if cancel_when == "before the pidfile":
            await asyncio.sleep(0.1)
        else:
            async with asyncio.timeout(10):
                while not spec.pidfile.exists():
                    await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    deadline = time.monotonic() + 5
    while not side.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # the child writes it 0.3 s in, whatever the launch did
    pid = int(side.read_text())
    try:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)  # SIGKILL lands at once; this only rides out a loaded host
        assert not _alive(pid)
        assert not spec.pidfile.exists()
    finally:
        if _alive(pid):
            os.kill(pid, 9)


def _alive(pid: int) -> bool:
    stat = proc.read_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")
