"""``banger vm stats VM...`` and ``banger vm health VM``."""

from __future__ import annotations

import sys

import click

from banger.api.client import ref_path
from banger.api.models import VMHealth, VMStats
from banger.cli import usage_view as fmt
from banger.cli.context import CliContext, json_option, pass_ctx
from banger.cli.each_vm import answered, ask_each, exit_on_errors
from banger.cli.render import print_fields, print_json, print_table, warn
from banger.core.durations import format_duration
from banger.core.validate import validate_name


@click.command("stats")
@click.argument("vms", nargs=-1, required=True)
@json_option
@pass_ctx
def vm_stats(ctx: CliContext, vms: tuple[str, ...], as_json: bool) -> None:
    """Show CPU, memory, network and disk of VMs, as the host and the guest see them.

    CPU % and RSS are the VMM process's (CPU over half a second, 100% = one host CPU);
    NET is what the guest sent/received; HOST DISK what its files take on the host;
    LOAD, MEM, / and /root the guest's own view. Several VMs are asked at once.

    \b
    Examples:
      banger vm stats box
      banger vm stats box other --json
    """
    answers = ask_each(ctx, vms, "stats", VMStats)
    found = answered(answers)
    if as_json:
        print_json([a.model_dump(mode="json") for a in found])
    else:
        print_table(
            ["VM", "STATE", "CPU", "RSS", "NET RX/TX", "HOST DISK", "LOAD", "MEM", "/", "/root",
             "UPTIME", "SSH"],
            [[a.vm, a.state, fmt.percent(a.host.cpu_percent), fmt.size(a.host.rss_bytes),
              fmt.network(a.host), fmt.size(a.host.disk_bytes), fmt.load(a.guest),
              fmt.memory(a.guest), fmt.disk(a.guest, "/"), fmt.disk(a.guest, "/root"),
              fmt.uptime(a.guest), fmt.sessions(a.guest)] for a in found],
        )
        for a in found:
            if a.guest_error:
                warn(f"{a.vm}: {a.guest_error}")
    exit_on_errors(answers)


@click.command("health")
@click.argument("vm")
@json_option
@pass_ctx
def vm_health(ctx: CliContext, vm: str, as_json: bool) -> None:
    """Check that a VM's guest answers over SSH; exit 0 when healthy, 1 when not.

    \b
    Examples:
      banger vm health box && echo up
      banger vm health box --json
    """
    validate_name(vm, "VM")
    health = ctx.client().get_model(ref_path("VM", vm, "health"), VMHealth)
    if as_json:
        print_json(health.model_dump(mode="json"))
    else:
        uptime = health.uptime_seconds
        print_fields([
            ("vm", health.vm), ("state", health.state),
            ("healthy", "yes" if health.healthy else "no"),
            ("uptime", format_duration(uptime) if uptime is not None else fmt.NONE),
            ("boot id", health.boot_id or fmt.NONE),
        ])
        if health.error:
            warn(f"{health.vm}: {health.error}")
    sys.exit(0 if health.healthy else 1)
