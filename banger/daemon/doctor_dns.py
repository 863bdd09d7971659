"""``banger doctor``'s DNS rows: bangerd's listeners, the guests' resolver, ``.vm`` on the host.

They read the running service's status (``DnsStatus``, a snapshot taken on the
loop) and the same systemd-resolved probe the service uses
(``host.resolved.why_not_available``), so doctor and the daemon agree.
"""

from __future__ import annotations

from banger.api.models import CheckStatus
from banger.core.states import NetMode
from banger.daemon.dns_service import DnsStatus
from banger.daemon.doctor import Check, CheckResult, DoctorContext
from banger.host import resolved

_DOCS = "see docs/network.md#dns"


def _row(name: str, status: CheckStatus, detail: str, hint: str | None = None) -> CheckResult:
    return CheckResult(name, status, detail, hint)


def _status(ctx: DoctorContext) -> DnsStatus:
    assert ctx.dns is not None  # these checks run only with the daemon's status
    return ctx.dns


def check_dns(ctx: DoctorContext) -> CheckResult:
    """The host's listener (``dns_listen``)."""
    dns = _status(ctx)
    if dns.host.serving:
        return _row("dns", CheckStatus.PASS, f"answering <name>.vm on {dns.host.address} "
                    "(UDP, TCP)")
    return _row(
        "dns", CheckStatus.WARN,
        f"not answering .vm on {dns.host.address}: {dns.host.error}",
        hint="stop that program and restart the daemon (banger daemon stop), or set "
        f"dns_listen to a free address:port; {_DOCS}",
    )


def check_guest_dns(ctx: DoctorContext) -> CheckResult:
    """The guests' listener on the bridge address, and where it forwards."""
    dns = _status(ctx)
    name = "guest dns"
    if dns.net_mode is NetMode.USER:
        return _row(name, CheckStatus.PASS, "user-mode networking: guests use the VMM's "
                    "built-in resolver (no .vm names inside guests)")
    upstreams = ", ".join(dns.upstreams)
    if dns.guests is not None and not dns.guests.serving:
        return _row(
            name, CheckStatus.WARN, f"guests have no resolver: {dns.guests.error}",
            hint=f"stop the program holding port 53 on {dns.bridge_ip} (a dnsmasq bound to "
            f"every address: give it bind-interfaces or except-interface={dns.bridge}), then "
            "restart the daemon",
        )
    if not dns.upstreams:
        return _row(
            name, CheckStatus.WARN,
            f"no upstream servers in {dns.resolv_conf}: guests resolve only .vm names",
            hint=f"add a nameserver to {dns.resolv_conf}, or set dns_upstream_resolv_conf",
        )
    where = (f"answering on {dns.guests.address}" if dns.guests is not None
             else f"starts on {dns.bridge_ip}:53 with the bridge (first TAP VM)")
    return _row(name, CheckStatus.PASS, f"{where}; other names go to {upstreams}")


def check_vm_names(ctx: DoctorContext) -> CheckResult:
    """Whether ``<name>.vm`` resolves through the host's own resolver."""
    dns = _status(ctx)
    name = ".vm on host"
    if dns.net_mode is NetMode.USER:
        return _row(name, CheckStatus.PASS, "user-mode networking: VMs have no address the "
                    "host can reach (banger vm ssh works)")
    absent = resolved.why_not_available(ctx.host.resolved_dir, ctx.host.search_path,
                                        ctx.host.proc_root)
    direct = dns.host.address.replace(":", " -p ", 1)
    if absent is not None:
        host, port = dns.host.address.rsplit(":", 1)
        return _row(
            name, CheckStatus.WARN, f".vm names resolve only by asking bangerd: {absent}",
            hint=f"dig @{direct} NAME.vm; or send the vm domain there from your resolver "
            f"(dnsmasq: server=/vm/{host}#{port}); {_DOCS}",
        )
    if dns.resolved is None:
        return _row(name, CheckStatus.PASS, f"systemd-resolved sends *.vm to {dns.bridge_ip} "
                    f"on {dns.bridge}")
    if dns.guests is None:
        return _row(name, CheckStatus.PASS, "systemd-resolved will send *.vm to bangerd once "
                    "the bridge exists (first TAP VM)")
    return _row(
        name, CheckStatus.WARN, f"systemd-resolved does not route .vm: {dns.resolved}",
        hint="let bangerd run resolvectl (root, or polkit rights), or by hand: "
        f"sudo resolvectl dns {dns.bridge} {dns.bridge_ip}; "
        f"sudo resolvectl domain {dns.bridge} '~vm'; "
        f"sudo resolvectl default-route {dns.bridge} false",
    )


DNS_CHECKS: list[Check] = [check_dns, check_guest_dns, check_vm_names]
