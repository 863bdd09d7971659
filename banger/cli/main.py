"""``banger``: the command-line entry point. Error translation happens here, once."""

from __future__ import annotations

import sys
from typing import Any

import click
from click.shell_completion import get_completion_class

from banger.cli.context import CliContext, json_option, pass_ctx
from banger.cli.daemon_cmd import daemon_group
from banger.cli.doctor_cmd import doctor
from banger.cli.image_cmd import image_group
from banger.cli.kernel_cmd import kernel_group
from banger.cli.render import print_error, print_fields, print_json
from banger.cli.vm_cmd import ps, vm_group
from banger.core.errors import BangerError
from banger.version import version_info

COMPLETION_SHELLS = ("bash", "zsh", "fish")


class BangerGroup(click.Group):
    """Maps every BangerError to ``banger: <message>`` and its exit code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("prog_name", "banger")
        kwargs["standalone_mode"] = True
        try:
            return super().main(*args, **kwargs)
        except BangerError as exc:  # raised outside invoke (e.g. during completion)
            print_error(exc)
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BangerError as exc:
            print_error(exc)
            sys.exit(exc.exit_code)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_info().one_line())
        ctx.exit()


@click.group(cls=BangerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print version, commit and build time, then exit.",
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """banger: microVM sandboxes on your own Linux machine.

    \b
    Examples:
      banger doctor              check this host
      banger daemon status       is the daemon up?
    """
    ctx.ensure_object(CliContext)


@cli.command("version")
@json_option
@pass_ctx
def version(ctx: CliContext, as_json: bool) -> None:
    """Print version, commit and build time, one field a line.

    \b
    Example:
      banger version --json
    """
    info = version_info()
    fields = {"version": info.version, "commit": info.commit, "build_time": info.build_time}
    if as_json:
        print_json(fields)
    else:
        print_fields([(k.replace("_", " "), v) for k, v in fields.items()])


@cli.command("completion")
@click.argument("shell", type=click.Choice(COMPLETION_SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    Examples:
      banger completion bash > ~/.local/share/bash-completion/completions/banger
      banger completion zsh > "${fpath[1]}/_banger"
      banger completion fish > ~/.config/fish/completions/banger.fish
    """
    comp_cls = get_completion_class(shell)
    assert comp_cls is not None
    click.echo(comp_cls(cli, {}, "banger", "_BANGER_COMPLETE").source())


cli.add_command(daemon_group)
cli.add_command(doctor)
cli.add_command(image_group)
cli.add_command(kernel_group)
cli.add_command(vm_group)
cli.add_command(ps)


def main() -> None:
    cli.main()
