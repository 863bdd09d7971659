"""``banger vm ports VM...``: what each running guest listens on, asked of every VM at once."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import click

from banger.api.client import Client, ref_path
from banger.api.models import VMPorts
from banger.cli.context import CliContext, json_option, pass_ctx
from banger.cli.render import print_error, print_json, print_table, warn
from banger.core.errors import BangerError
from banger.core.validate import validate_name


def _ask(ctx: CliContext, ref: str) -> VMPorts | BangerError:
    try:
        with Client(ctx.settings.paths.socket, timeout=60.0) as client:
            return client.get_model(ref_path("VM", ref, "ports"), VMPorts)
    except BangerError as exc:
        return exc


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
    for ref in vms:
        validate_name(ref, "VM")
    ctx.client().ping()  # starts the daemon if needed, once, before the concurrent asks
    with ThreadPoolExecutor(max_workers=min(8, len(vms))) as pool:
        answers = list(pool.map(lambda ref: _ask(ctx, ref), vms))
    found = [a for a in answers if isinstance(a, VMPorts)]
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
    failed = [a for a in answers if isinstance(a, BangerError)]
    for exc in failed:
        print_error(exc)
    if failed:
        sys.exit(failed[0].exit_code)
