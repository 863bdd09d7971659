"""``banger vm ports VM...``: what each running guest listens on, asked of every VM at once."""

from __future__ import annotations

import click

from banger.api.models import VMPorts
from banger.cli.context import CliContext, json_option, pass_ctx
from banger.cli.each_vm import answered, ask_each, exit_on_errors
from banger.cli.render import print_json, print_table, warn


@click.command("ports")
@click.argument("vms", nargs=-1, required=True)
@json_option
@pass_ctx
def vm_ports(ctx: CliContext, vms: tuple[str, ...], as_json: bool) -> None:
    """List the TCP and UDP ports running VMs listen on, with NAME.vm:PORT and HTTP URLs.

    \b
    Examples:
      banger vm ports box
      banger vm ports box other --json
    """
    answers = ask_each(ctx, vms, "ports", VMPorts)
    found = answered(answers)
    if as_json:
        print_json([a.model_dump(mode="json") for a in found])
    else:
        print_table(
            ["VM", "PROTO", "ADDRESS", "PORT", "PROCESS", "ENDPOINT", "URL"],
            [[a.vm, p.proto, p.address, p.port, p.process or "", p.endpoint, p.url or ""]
             for a in found for p in a.ports],
        )
    for a in found:
        if a.unparsed:
            warn(f"{a.vm}: {a.unparsed} lines of the guest's ss output were not understood")
    exit_on_errors(answers)
