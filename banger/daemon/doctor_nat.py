"""``banger doctor``'s NAT row: nftables, banger's table and IPv4 forwarding (docs/network.md)."""

from __future__ import annotations

from banger.api.models import CheckStatus
from banger.core.states import NetMode
from banger.daemon.doctor import Check, CheckResult, DoctorContext
from banger.host import nat
from banger.host.probes import have_tool


def check_nat(ctx: DoctorContext) -> CheckResult:
    """Whether ``--nat`` works here, the table's state, and IPv4 forwarding."""
    status = ctx.nat
    assert status is not None  # this check runs only with the daemon's status
    if status.net_mode is not NetMode.TAP:
        return CheckResult("nat", CheckStatus.WARN,
                           "user-mode networking: --nat is refused (guests reach the network "
                           "through the VMM)",
                           hint="give bangerd CAP_NET_ADMIN (run it as root, or banger system "
                           "install) for TAP networking and --nat")
    if not have_tool("nft", ctx.host.search_path):
        return CheckResult("nat", CheckStatus.WARN,
                           "nft is not installed: --nat is refused, and guests without NAT are "
                           "not fenced off from forwarding",
                           hint="install it: sudo apt-get install nftables")
    if status.error is not None:
        return CheckResult("nat", CheckStatus.WARN,
                           f"cannot change table ip {status.table}: {status.error}",
                           hint="bangerd needs CAP_NET_ADMIN for nftables; see the daemon log")
    forwarding = nat.ip_forwarding(ctx.host.proc_root / "sys/net/ipv4/ip_forward")
    forward = {True: "IPv4 forwarding on",
               False: "IPv4 forwarding off (banger turns it on when a --nat VM starts)",
               None: "IPv4 forwarding unknown"}[forwarding]
    table = (f"table ip {status.table}, {status.guests} NAT guests" if status.made
             else f"table ip {status.table} is made with the first TAP VM")
    return CheckResult("nat", CheckStatus.PASS, f"{table}; {forward}")


NAT_CHECKS: list[Check] = [check_nat]
