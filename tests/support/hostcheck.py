"""What the real-VM tests need from the host, and how their helpers fail.

A missing host capability (not root, no ``/dev/net/tun``, no QEMU) is a skip
that names it. Anything else going wrong while making the test kernel or image
is an error of the test run, never a skip: a broken builder must not turn the
real-VM suite into a row of "skipped".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import NoReturn

PREPARE = ".venv/bin/python -m tests.support.prepare"


class ArtifactError(RuntimeError):
    """The test kernel or image is not cached and could not be made."""


def artifact_failed(what: str, exc: BaseException) -> NoReturn:
    hint = getattr(exc, "hint", None)
    detail = f"{exc} ({hint})" if hint else str(exc)
    raise ArtifactError(
        f"{what} is not cached and could not be made: {detail}; "
        f"with network, run: {PREPARE}"
    ) from exc


def missing_vm_capabilities() -> list[str]:
    """The host capabilities a real VM test needs and this host lacks, by name."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (TAP networking)")
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    for tool in ("qemu-system-x86_64", "ssh", "ip"):
        if shutil.which(tool) is None:
            missing.append(tool)
    return missing


def require_vm_host() -> None:
    """Skip, naming what is missing, on a host that cannot run real VMs."""
    import pytest  # not at the top: bench/ uses this module without pytest

    missing = missing_vm_capabilities()
    if missing:
        pytest.skip("needs " + ", ".join(missing))


def processes_naming(marker: str, *, program: str = "") -> dict[int, str]:
    """Processes (other than this one) whose command line names ``marker`` (and ``program``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker in args and program in args:
                found[int(entry.name)] = args.strip()
    return found


def kill_leftover_vmms(marker: str, timeout: float = 5.0) -> dict[int, str]:
    """SIGKILL every VMM naming ``marker`` by pid, wait for them to go; return what was found."""
    leftovers = processes_naming(marker, program="qemu-system")
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in leftovers) and time.monotonic() < deadline:
        time.sleep(0.05)
    return leftovers


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed child its parent has not reaped yet is gone enough)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
