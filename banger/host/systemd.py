"""systemd for a system install: is it PID 1, unit states, and ``systemctl`` verbs.

Every unit name passed here is one of the install's two (``host.install``); the
argv is a list, never a shell string.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from banger.host.run import run

SYSTEMD_RUN = Path("/run/systemd/system")  # exists only when systemd is PID 1
TIMEOUT = 90.0


def systemd_running() -> bool:
    return SYSTEMD_RUN.is_dir() and shutil.which("systemctl") is not None


def why_not_systemd() -> str:
    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    return "systemd is not PID 1 on this machine"


def systemctl(*args: str) -> None:
    run(["systemctl", *args], timeout=TIMEOUT)


@dataclass(frozen=True)
class UnitState:
    name: str
    active: str  # active, inactive, failed, ... or "unknown" without systemd
    pid: int | None


def unit_state(name: str) -> UnitState:
    if not systemd_running():
        return UnitState(name, "unknown", None)
    out = run(["systemctl", "show", "-p", "ActiveState", "-p", "MainPID", name],
              timeout=TIMEOUT, check=False).stdout.decode(errors="replace")
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    pid = fields.get("MainPID", "0")
    return UnitState(name, fields.get("ActiveState", "unknown"),
                     int(pid) if pid.isdigit() and pid != "0" else None)


def verify_units(paths: list[Path]) -> str:
    """``systemd-analyze verify`` of unit files: its complaints, '' when there are none."""
    result = run(["systemd-analyze", "verify", *map(str, paths)], timeout=TIMEOUT, check=False)
    text = (result.stdout + result.stderr).decode(errors="replace").strip()
    return text if result.returncode != 0 or text else ""
