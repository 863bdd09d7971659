"""What ``banger system status`` and ``doctor``'s system rows show: the install, its
units, and the versions of the CLI, the daemon and the helper as each reports itself."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import banger.host.install as install
import banger.host.systemd as systemd
from banger.api.client import Client, version_tag
from banger.api.models import CheckStatus, DoctorCheck
from banger.core.errors import BangerError

if TYPE_CHECKING:
    from banger.host.helper_protocol import HelloReply

RESTART = "sudo banger system restart (after upgrading banger, the units run the old code)"


def _helper(path: Path) -> HelloReply | BangerError:
    from banger.host.helper_client import HelperHostOps  # only when a command asks

    try:
        return HelperHostOps(path, timeout=5).hello()
    except BangerError as exc:
        return exc


def status_fields() -> dict[str, Any]:
    record = install.read_install()
    fields: dict[str, Any] = {"install": str(Path("/") / install.INSTALL_TOML)
                              if record else "none (per-user daemon)", "cli": version_tag()}
    if record is None:
        return fields
    fields |= {"owner": f"{record.owner} (uid {record.owner_uid})",
               "installed version": record.version}
    for name in (install.HELPER_UNIT, install.DAEMON_UNIT):
        state = systemd.unit_state(name)
        fields[name] = f"{state.active}" + (f" (pid {state.pid})" if state.pid else "")
    hello = _helper(Path(record.helper_socket))
    fields["helper"] = (f"{hello.version}+{hello.commit[:12]} (pid {hello.pid})"
                        if not isinstance(hello, BangerError) else f"unreachable: {hello.message}")
    fields["helper socket"] = record.helper_socket
    try:
        with Client(Path(record.daemon_socket)) as client:
            ping = client.ping()
        fields["daemon"] = f"{ping.version}+{ping.commit[:12]} (pid {ping.pid})"
    except BangerError as exc:
        fields["daemon"] = f"unreachable: {exc.message}"
    fields["daemon socket"] = record.daemon_socket
    return fields


def _check(name: str, ok: bool, detail: str, hint: str, bad: CheckStatus) -> DoctorCheck:
    if ok:
        return DoctorCheck(name=name, status=CheckStatus.PASS, detail=detail)
    return DoctorCheck(name=name, status=bad, detail=detail, hint=hint)


def _unit_rows() -> list[DoctorCheck]:
    if not systemd.systemd_running():
        return [DoctorCheck(name="system units", status=CheckStatus.WARN,
                            detail=systemd.why_not_systemd(),
                            hint="run bangerd-root and bangerd by hand (docs/privileges.md)")]
    states = [systemd.unit_state(n) for n in (install.HELPER_UNIT, install.DAEMON_UNIT)]
    down = [s.name for s in states if s.active != "active"]
    return [_check("system units", not down, ", ".join(f"{s.name} {s.active}" for s in states),
                   f"sudo systemctl start {' '.join(down)}", CheckStatus.FAIL)]


def system_checks(root: Path = Path("/")) -> list[DoctorCheck]:
    """Install present, units active, helper reachable and accepting us, helper version,
    owner is the caller."""
    try:
        record = install.read_install(root)
    except BangerError as exc:
        return [DoctorCheck(name="system install", status=CheckStatus.FAIL, detail=exc.message,
                            hint=exc.hint or "sudo banger system install")]
    if record is None:
        return [DoctorCheck(name="system install", status=CheckStatus.PASS,
                            detail="none: a per-user daemon (TAP networking needs root or "
                                   "sudo banger system install)")]
    rows = [DoctorCheck(name="system install", status=CheckStatus.PASS,
                        detail=f"{root / install.INSTALL_TOML} for {record.owner}")]
    rows += _unit_rows()
    hello = _helper(Path(record.helper_socket))
    reachable = not isinstance(hello, BangerError)
    rows.append(_check("helper", reachable,
                       f"{record.helper_socket}: " + ("answers and accepts us" if reachable
                                                      else getattr(hello, "message", "")),
                       "sudo systemctl restart bangerd-root (banger system status)",
                       CheckStatus.FAIL))
    if not isinstance(hello, BangerError):
        theirs = f"{hello.version}+{hello.commit[:12]}"
        rows.append(_check("helper version", theirs == version_tag(),
                           f"helper {theirs}, CLI {version_tag()}", RESTART, CheckStatus.WARN))
    mine = os.getuid()
    rows.append(_check("install owner", mine in (record.owner_uid, 0),
                       f"{record.owner} (uid {record.owner_uid}); you are uid {mine}",
                       f"this install serves {record.owner}; run banger as that user, or "
                       "reinstall: sudo banger system install --owner YOU", CheckStatus.WARN))
    return rows
