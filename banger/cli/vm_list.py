"""``banger vm list`` and ``banger ps``, apart from the other VM commands.

So that ``-q`` imports neither pydantic nor rich (docs/performance.md).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from banger.cli.context import CliContext, json_option, pass_ctx, quiet_option
from banger.cli.render import print_json, print_table
from banger.core.validate import format_size

if TYPE_CHECKING:
    from banger.api.models import VMInfo


def _age(info: VMInfo) -> str:
    if info.created_at is None:
        return ""
    seconds = int(time.time() - info.created_at.timestamp())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _list(ctx: CliContext, as_json: bool, quiet: bool) -> None:
    if quiet:  # the scripting path: names only, no model parsing, no rich
        for name in ctx.client().get_names("VM"):
            click.echo(name)
        return
    from banger.api.models import VMList

    vms = ctx.client().get_model("/vms", VMList).vms
    if as_json:
        print_json([v.model_dump(mode="json") for v in vms])
    else:
        print_table(
            ["NAME", "STATE", "IMAGE", "IP", "VCPU", "MEMORY", "DISK", "AGE", "WORKSPACE"],
            [[v.name, v.state, v.image_name or v.image_id, v.guest_ip or v.net_mode, v.vcpu,
              f"{v.memory_mib}M", format_size(v.disk_bytes), _age(v),
              v.workspace.host_path.name if v.workspace else ""] for v in vms],
        )


@click.command("list")
@json_option
@quiet_option
@pass_ctx
def vm_list(ctx: CliContext, as_json: bool, quiet: bool) -> None:
    """List VMs.

    \b
    Example:
      banger vm list -q
    """
    _list(ctx, as_json, quiet)


@click.command("ps")
@json_option
@quiet_option
@pass_ctx
def ps(ctx: CliContext, as_json: bool, quiet: bool) -> None:
    """List VMs (same as banger vm list).

    \b
    Example:
      banger ps
    """
    _list(ctx, as_json, quiet)
