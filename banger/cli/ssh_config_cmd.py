"""``banger ssh-config --install|--uninstall``: ``ssh NAME.vm`` from any terminal."""

from __future__ import annotations

import click

from banger.api.models import SSHConfigRequest, SSHConfigResult
from banger.cli.context import CliContext, json_option, pass_ctx
from banger.cli.render import console, print_json
from banger.core.errors import InvalidInput


@click.command("ssh-config")
@click.option("--install", "action", flag_value="install", help="Add the Include line.")
@click.option("--uninstall", "action", flag_value="uninstall", help="Remove it again.")
@json_option
@pass_ctx
def ssh_config(ctx: CliContext, action: str | None, as_json: bool) -> None:
    """Make `ssh NAME.vm` reach banger's VMs (one Include line in ~/.ssh/config).

    The included file has banger's key, each VM's known_hosts and a HostName
    per running VM, so it works without DNS. Installing twice changes
    nothing; --uninstall removes exactly that line.

    \b
    Examples:
      banger ssh-config --install && ssh box.vm
      banger ssh-config --uninstall
    """
    if action is None:
        raise InvalidInput("say what to do", hint="banger ssh-config --install (or --uninstall)")
    body = SSHConfigRequest(install=action == "install")
    result = ctx.client().post_model("/ssh-config", SSHConfigResult, body=body)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    verb = "includes" if result.installed else "no longer includes"
    same = "" if result.changed else " (it already did)" if result.installed else " (it did not)"
    console().print(f"{result.user_config} {verb} {result.managed}{same}")
