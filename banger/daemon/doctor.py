"""``banger doctor``: one small check per host requirement, each PASS, WARN or FAIL.

Checks reuse the predicates of ``host.probes`` (the same ones that pick
fallbacks at run time), so doctor and the code that launches VMs agree. Every
non-PASS row names its fix. The CLI appends its own daemon-vs-CLI version row.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from banger.api.models import CheckStatus
from banger.config import Settings
from banger.core.errors import HostToolError
from banger.host import probes, resolved
from banger.host.probes import KvmStatus, Version
from banger.vmm.factory import HostFacts

if TYPE_CHECKING:
    from banger.daemon.dns_service import DnsStatus
    from banger.daemon.vm_nat import NatStatus

log = logging.getLogger("banger.daemon.doctor")

FIRECRACKER_MIN: Version = (1, 5, 0)
FIRECRACKER_MAX_TESTED: Version = (1, 16, 1)
QEMU_MIN_TESTED: Version = (6, 0, 0)
FIRECRACKER_RELEASES = "https://github.com/firecracker-microvm/firecracker/releases"


@dataclass(frozen=True)
class CheckResult:
    """One doctor row; every non-PASS row carries a hint naming the fix."""

    name: str
    status: CheckStatus
    detail: str
    hint: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", CheckStatus(self.status))  # accept "PASS" etc. too
        if self.status is not CheckStatus.PASS and not self.hint:
            raise ValueError(f"doctor check {self.name!r}: a {self.status} row needs a hint")


def _running_python() -> Version:
    return sys.version_info.major, sys.version_info.minor, sys.version_info.micro


@dataclass(frozen=True)
class HostView:
    """Where doctor looks: real roots by default, fake trees in tests."""

    sys_root: Path = probes.SYS_ROOT
    dev_root: Path = probes.DEV_ROOT
    search_path: str | None = None  # a PATH string; None means the PATH run() uses
    busybox_candidates: tuple[Path, ...] = probes.BUSYBOX_CANDIDATES
    python_version: Version = field(default_factory=_running_python)
    resolved_dir: Path = resolved.RESOLVED_RUN_DIR
    proc_root: Path = Path("/proc")


class DoctorContext:
    """Settings plus host answers, each probed at most once per doctor run."""

    def __init__(self, settings: Settings, host: HostView, dns: DnsStatus | None = None,
                 nat: NatStatus | None = None) -> None:
        self.settings = settings
        self.host = host
        self.dns = dns  # the running daemon's DNS service (None: its rows are left out)
        self.nat = nat  # the running daemon's NAT table (None: its row is left out)

    @cached_property
    def kvm(self) -> KvmStatus:
        return probes.kvm_status(self.host.sys_root, self.host.dev_root)

    @cached_property
    def qemu(self) -> Path | None:
        return probes.qemu_binary(self.host.search_path)

    @cached_property
    def qemu_version(self) -> Version | None:
        return probes.qemu_version(self.qemu) if self.qemu else None

    @cached_property
    def firecracker(self) -> Path | None:
        return probes.find_tool("firecracker", self.host.search_path)

    @cached_property
    def firecracker_version(self) -> Version | None:
        return probes.firecracker_version(self.firecracker) if self.firecracker else None

    @property
    def qemu_usable(self) -> bool:
        return self.qemu is not None  # TCG needs nothing else

    def missing(self, *tools: str) -> list[str]:
        return [t for t in tools if not probes.have_tool(t, self.host.search_path)]


def _vstr(v: Version) -> str:
    return "v" + ".".join(map(str, v))


def _apt(package: str) -> str:
    return f"install it: sudo apt-get install {package}"


Check = Callable[[DoctorContext], CheckResult]


def check_python(ctx: DoctorContext) -> CheckResult:
    v = ctx.host.python_version
    shown = ".".join(map(str, v))
    if probes.python_ok(v):
        return CheckResult("python", CheckStatus.PASS, f"Python {shown}")
    return CheckResult(
        "python",
        CheckStatus.FAIL,
        f"Python {shown} is older than 3.11",
        hint="install Python 3.11 or newer and recreate the virtualenv (make setup)",
    )


def check_store(ctx: DoctorContext) -> CheckResult:
    db = ctx.settings.paths.db
    if not db.exists() and not db.is_symlink():
        return CheckResult("store", CheckStatus.PASS, f"{db} absent: created on first start")
    try:
        # Read-only, so doctor can never create, migrate or repair the store.
        conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return CheckResult(
            "store",
            CheckStatus.FAIL,
            f"{db} is unreadable: {' '.join(str(exc).split())}",
            hint=f"check its owner and mode (ls -l {db}), or move it aside to start afresh",
        )
    # quick_check reports one row per problem, some spanning lines; keep the row one line.
    problems = [" ".join(str(r[0]).split()) for r in rows if r and r[0] != "ok"]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return CheckResult(
            "store",
            CheckStatus.FAIL,
            f"{db} is corrupt: {problems[0][:200]}{more}",
            hint=f"stop the daemon and restore {db} from a backup, or move it aside",
        )
    return CheckResult("store", CheckStatus.PASS, f"{db} ok")


def check_kvm(ctx: DoctorContext) -> CheckResult:
    dev = ctx.host.dev_root / "kvm"
    if ctx.kvm is KvmStatus.USABLE:
        return CheckResult("kvm", CheckStatus.PASS, f"{dev} usable for standard guests")
    if ctx.kvm is KvmStatus.PVM_HOST:
        return CheckResult(
            "kvm",
            CheckStatus.WARN,
            "PVM host (kvm_pvm without kvm_intel/kvm_amd): standard guests hang; "
            "TCG will be used (slow)",
            hint="for fast VMs use a host with kvm_intel or kvm_amd; here TCG is the only option",
        )
    if ctx.kvm is KvmStatus.NO_ACCESS:
        return CheckResult(
            "kvm",
            CheckStatus.WARN,
            f"{dev} cannot be opened read-write by this user: TCG will be used (slow)",
            hint="add yourself to the kvm group (sudo usermod -aG kvm $USER) and log in again",
        )
    return CheckResult(
        "kvm",
        CheckStatus.WARN,
        f"{dev} not found: TCG will be used (slow)",
        hint="enable virtualization in the firmware and load kvm_intel or kvm_amd (modprobe)",
    )


def check_qemu(ctx: DoctorContext) -> CheckResult:
    hint = _apt("qemu-system-x86")
    if ctx.qemu is None:  # this release's only VMM
        return CheckResult("qemu", CheckStatus.FAIL, f"{probes.QEMU_SYSTEM} not found", hint=hint)
    v = ctx.qemu_version
    if v is None:
        return CheckResult(
            "qemu", CheckStatus.WARN, f"{ctx.qemu}: --version output not understood", hint=hint
        )
    if v < QEMU_MIN_TESTED:
        return CheckResult(
            "qemu",
            CheckStatus.WARN,
            f"QEMU {_vstr(v)} at {ctx.qemu} is older than {_vstr(QEMU_MIN_TESTED)}; "
            "its microvm machine may lack what banger uses",
            hint="install a newer qemu-system-x86 (Debian 12 / Ubuntu 22.04 or later)",
        )
    return CheckResult("qemu", CheckStatus.PASS, f"QEMU {_vstr(v)} at {ctx.qemu}")


def _firecracker_missing_status(ctx: DoctorContext) -> CheckStatus:
    return CheckStatus.WARN if ctx.qemu_usable else CheckStatus.FAIL


def check_firecracker(ctx: DoctorContext) -> CheckResult:
    fc, v = ctx.firecracker, ctx.firecracker_version
    install = f"install firecracker {_vstr(FIRECRACKER_MIN)}+ from {FIRECRACKER_RELEASES}"
    if fc is None:
        why = "optional: QEMU is used instead" if ctx.qemu_usable else "no usable VMM"
        return CheckResult(
            "firecracker", _firecracker_missing_status(ctx), f"not found ({why})", hint=install
        )
    if v is None:
        return CheckResult(
            "firecracker",
            _firecracker_missing_status(ctx),
            f"{fc}: --version failed or printed no 'Firecracker vX.Y.Z' line",
            hint=f"reinstall it: {install}",
        )
    tested = f"min {_vstr(FIRECRACKER_MIN)}, tested up to {_vstr(FIRECRACKER_MAX_TESTED)}"
    if v < FIRECRACKER_MIN:
        return CheckResult(
            "firecracker",
            CheckStatus.FAIL,
            f"{_vstr(v)} at {fc} is too old ({tested})",
            hint=install,
        )
    if v > FIRECRACKER_MAX_TESTED:
        return CheckResult(
            "firecracker",
            CheckStatus.WARN,
            f"{_vstr(v)} at {fc} is newer than tested ({tested})",
            hint=f"if VMs misbehave, install {_vstr(FIRECRACKER_MAX_TESTED)} from "
            f"{FIRECRACKER_RELEASES}",
        )
    note = "" if ctx.kvm is KvmStatus.USABLE else "; unused here without a usable KVM"
    return CheckResult("firecracker", CheckStatus.PASS, f"{_vstr(v)} at {fc} ({tested}){note}")


def _accel(ctx: DoctorContext) -> str:
    return "KVM" if ctx.kvm is KvmStatus.USABLE else "TCG (slow)"


def check_backend(ctx: DoctorContext) -> CheckResult:
    """The backend the daemon would build (vmm/factory.py), and why."""
    configured = ctx.settings.backend
    facts = HostFacts(accel="kvm" if ctx.kvm is KvmStatus.USABLE else "tcg",
                      firecracker=ctx.firecracker)
    fc_missing = facts.firecracker_missing()
    if configured == "firecracker" and fc_missing is not None:
        return CheckResult("backend", CheckStatus.FAIL,
                           f"firecracker: cannot run here: {fc_missing}",
                           hint='set backend = "auto" or "qemu" (config.toml)')
    if fc_missing is None and configured in ("auto", "firecracker"):
        return CheckResult("backend", CheckStatus.PASS,
                           f"{configured}: firecracker with KVM (contract-tested only: "
                           "docs/backends.md)")
    if ctx.qemu_usable:
        return CheckResult("backend", CheckStatus.PASS, f"{configured}: qemu with {_accel(ctx)}")
    return CheckResult(
        "backend", CheckStatus.FAIL, f"{configured}: no usable VMM", hint=_apt("qemu-system-x86")
    )


def _tools(
    ctx: DoctorContext,
    name: str,
    tools: tuple[str, ...],
    package: str,
    use: str,
    severity: CheckStatus,
) -> CheckResult:
    missing = ctx.missing(*tools)
    if not missing:
        return CheckResult(name, CheckStatus.PASS, f"{', '.join(tools)} found")
    return CheckResult(name, severity, f"missing {', '.join(missing)} ({use})", hint=_apt(package))


def check_e2fsprogs(ctx: DoctorContext) -> CheckResult:
    tools = ("mkfs.ext4", "debugfs", "e2fsck", "resize2fs")
    return _tools(ctx, "e2fsprogs", tools, "e2fsprogs", "needed for every disk", CheckStatus.FAIL)


def _image_tool_severity(ctx: DoctorContext, other: str) -> CheckStatus:
    # One way to get an image is enough to create VMs; with neither, nothing works.
    return CheckStatus.WARN if not ctx.missing(other) else CheckStatus.FAIL


def check_mmdebstrap(ctx: DoctorContext) -> CheckResult:
    use = "needed to build Debian images"
    severity = _image_tool_severity(ctx, "skopeo")
    return _tools(ctx, "mmdebstrap", ("mmdebstrap",), "mmdebstrap", use, severity)


def check_skopeo(ctx: DoctorContext) -> CheckResult:
    use = "needed to pull OCI images"
    severity = _image_tool_severity(ctx, "mmdebstrap")
    return _tools(ctx, "skopeo", ("skopeo",), "skopeo", use, severity)


def check_busybox(ctx: DoctorContext) -> CheckResult:
    """The same judgement the initramfs builder makes (``probes.static_busybox``)."""
    try:
        found = probes.static_busybox(ctx.host.busybox_candidates)
    except HostToolError as exc:
        return CheckResult("busybox-static", CheckStatus.FAIL, exc.message,
                           hint=_apt("busybox-static"))
    return CheckResult("busybox-static", CheckStatus.PASS, f"{found} is statically linked")


def check_ssh(ctx: DoctorContext) -> CheckResult:
    use = "needed to reach guests"
    return _tools(ctx, "ssh client", ("ssh", "ssh-keygen"), "openssh-client", use, CheckStatus.FAIL)


CHECKS: list[Check] = [
    check_python,
    check_store,
    check_kvm,
    check_qemu,
    check_firecracker,
    check_backend,
    check_e2fsprogs,
    check_mmdebstrap,
    check_skopeo,
    check_busybox,
    check_ssh,
]


def _run_one(check: Check, ctx: DoctorContext) -> CheckResult:
    try:
        return check(ctx)
    except Exception as exc:  # one broken check must not hide the others
        log.exception("doctor check %s crashed", check.__name__)
        name = check.__name__.removeprefix("check_")
        return CheckResult(
            name, CheckStatus.FAIL, f"check crashed: {exc!r}", hint="report this as a banger bug"
        )


def run_checks(settings: Settings, host: HostView | None = None,
               dns: DnsStatus | None = None, nat: NatStatus | None = None) -> list[CheckResult]:
    """Run every check in order and return one row each; with the daemon's ``dns`` and
    ``nat`` status, their rows too (``doctor_dns.py``, ``doctor_nat.py``)."""
    from banger.daemon.doctor_dns import DNS_CHECKS  # they build on this module's rows
    from banger.daemon.doctor_nat import NAT_CHECKS

    ctx = DoctorContext(settings, host or HostView(), dns, nat)
    checks = (CHECKS + (DNS_CHECKS if dns is not None else [])
              + (NAT_CHECKS if nat is not None else []))
    return [_run_one(check, ctx) for check in checks]
