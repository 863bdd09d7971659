"""The QEMU backend for real, without a guest OS: a 6 KiB stand-in kernel that halts.

launch -> running -> QMP -> adopt from the pidfile -> kill -> gone, plus the
failure paths. The stand-in is a Linux boot-protocol header whose setup code
is `cli; hlt`, so QEMU loads it like a bzImage and the vCPU idles.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

from banger.core.errors import Conflict, HostToolError
from banger.core.vmspec import RootDisk, UserNet, VMSpec
from banger.host import proc_identity as proc
from banger.vmm.base import Backend, Handle, StopOutcome
from banger.vmm.qemu import QemuBackend

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"
)


def halting_kernel(path: Path) -> Path:
    """A minimal bzImage (boot protocol 2.12) whose real-mode entry is `cli; hlt; jmp hlt`."""
    setup_sects = 4
    image = bytearray((setup_sects + 1) * 512 + 4096)
    image[0x1F1] = setup_sects
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x200:0x202] = bytes([0xEB, 0x280 - 0x202])  # jmp to the code below the header
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020C)
    image[0x211] = 0x01  # LOADED_HIGH
    struct.pack_into("<I", image, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<I", image, 0x238, 2047)  # cmdline_size
    image[0x280:0x284] = bytes([0xFA, 0xF4, 0xEB, 0xFD])
    path.write_bytes(image)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def spec(tmp_path: Path) -> Iterator[VMSpec]:
    vm = tmp_path / "vm"
    vm.mkdir()
    for name, size in (("root.ext4", 16 << 20), ("work.ext4", 16 << 20)):
        with open(vm / name, "wb") as f:
            f.truncate(size)
    spec = VMSpec(
        vm_id="qtest" + os.urandom(3).hex(),
        name="qtest",
        vcpu=1,
        memory_mib=128,
        kernel=halting_kernel(tmp_path / "bzImage"),
        root=RootDisk(vm / "root.ext4", "raw"),
        work_disk=vm / "work.ext4",
        console_log=vm / "console.log",
        vmm_log=vm / "vmm.log",
        run_dir=tmp_path / "run",
        net=UserNet(ssh_host_port=free_port(), mac="02:00:00:00:00:01"),
    )
    yield spec
    # Safety net: no QEMU of this test may outlive it, whatever the test did.
    pid = proc.read_pidfile(spec.pidfile)
    argv = proc.cmdline(pid) if pid is not None else None
    if pid is not None and argv and str(spec.pidfile) in argv:
        os.kill(pid, signal.SIGKILL)


def qemu_processes_naming(path: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


async def qmp_status(handle: Handle) -> str:
    """QEMU's run state (``running``, ``paused``, ``prelaunch``...) asked over its QMP socket."""
    client = QMPClient("banger-test")
    async with asyncio.timeout(10):
        await client.connect(os.fspath(handle.control_socket))
        try:
            reply = await client.execute("query-status")
        finally:
            await client.disconnect()
    assert isinstance(reply, dict)
    return str(reply["status"])


def test_backend_satisfies_the_protocol() -> None:
    assert isinstance(QemuBackend(), Backend)


def test_launch_query_adopt_kill_leaves_no_process(spec: VMSpec) -> None:
    backend = QemuBackend()

    async def scenario() -> tuple[Handle, str, Handle | None, bool, bool]:
        handle = await backend.launch(spec)
        status = await qmp_status(handle)
        adopted = backend.adopt(spec.pidfile, spec)
        sent = backend.kill(handle, signal.SIGKILL)
        gone = await backend.wait_exit(handle, timeout=10)
        return handle, status, adopted, sent, gone

    handle, status, adopted, sent, gone = asyncio.run(scenario())
    assert handle.backend == "qemu" and handle.vm_id == spec.vm_id
    assert handle.control_socket == spec.qmp_socket
    assert status == "running"
    assert adopted == handle
    assert sent and gone
    assert not handle.running()
    assert backend.kill(handle) is False  # kill twice is fine and signals nothing
    assert qemu_processes_naming(spec.pidfile) == []


def test_vmm_is_detached_from_the_launching_process(spec: VMSpec) -> None:
    backend = QemuBackend()
    handle = asyncio.run(backend.launch(spec))
    try:
        stat = Path(f"/proc/{handle.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid, sid = int(fields[1]), int(fields[3])
        assert ppid != os.getpid()  # not our child: our exit or crash cannot take it down
        assert sid != os.getsid(0)  # another session: our terminal's signals never reach it
    finally:
        asyncio.run(backend.shutdown(handle, graceful=False))


def test_adopt_refuses_a_live_process_that_is_not_this_vms(spec: VMSpec, tmp_path: Path) -> None:
    backend = QemuBackend()
    handle = asyncio.run(backend.launch(spec))
    try:
        other = replace(spec, vm_id="other", run_dir=tmp_path / "other-run")
        assert backend.adopt(spec.pidfile, other) is None
        # A pidfile naming an unrelated live process (ourselves) is not adopted either.
        fake = tmp_path / "fake.pid"
        fake.write_text(f"{os.getpid()}\n")
        assert backend.adopt(fake, spec) is None
    finally:
        asyncio.run(backend.shutdown(handle, graceful=False))


def test_a_reused_pid_is_never_signalled(spec: VMSpec) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        started = proc.start_time(sleeper.pid)
        assert started is not None
        stale = Handle("qemu", spec.vm_id, sleeper.pid, started + 1, spec.qmp_socket,
                       spec.pidfile, spec.vmm_log, (str(spec.pidfile),))  # fmt: skip
        assert stale.running() is False
        assert QemuBackend().kill(stale) is False
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_launching_a_vm_twice_is_a_conflict(spec: VMSpec) -> None:
    backend = QemuBackend()
    handle = asyncio.run(backend.launch(spec))
    try:
        with pytest.raises(Conflict):
            asyncio.run(backend.launch(spec))
        assert handle.running()
    finally:
        asyncio.run(backend.shutdown(handle, graceful=False))


def test_graceful_shutdown_of_a_guest_that_ignores_acpi_ends_in_sigkill(spec: VMSpec) -> None:
    backend = QemuBackend()

    async def scenario() -> tuple[StopOutcome, StopOutcome, Handle]:
        handle = await backend.launch(spec)
        first = await backend.shutdown(handle, graceful=True, timeout=0.5)
        again = await backend.shutdown(handle, graceful=True, timeout=0.5)
        return first, again, handle

    first, again, handle = asyncio.run(scenario())
    assert (first, again) == (StopOutcome.KILLED, StopOutcome.GONE)
    assert not spec.qmp_socket.exists() and not spec.pidfile.exists()
    assert not handle.running()


def test_launch_failure_is_fast_names_the_cause_and_leaves_nothing(spec: VMSpec) -> None:
    spec.work_disk.unlink()
    with pytest.raises(HostToolError) as err:
        asyncio.run(QemuBackend().launch(spec))
    assert "work.ext4" in str(err.value) and "No such file" in str(err.value)
    assert err.value.hint and str(spec.vmm_log) in err.value.hint
    assert not spec.pidfile.exists() and not spec.qmp_socket.exists()
    assert qemu_processes_naming(spec.pidfile) == []


def test_vmm_log_keeps_qemu_messages_written_after_it_daemonized(spec: VMSpec) -> None:
    backend = QemuBackend()

    async def scenario() -> None:
        handle = await backend.launch(spec)
        backend.kill(handle, signal.SIGTERM)
        assert await backend.wait_exit(handle, timeout=10)

    asyncio.run(scenario())
    assert "terminating on signal 15" in spec.vmm_log.read_text()
