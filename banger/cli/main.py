"""``banger``: the command-line entry point. Error translation happens here, once."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, NoReturn

import click
from click.exceptions import NoArgsIsHelpError
from click.shell_completion import get_completion_class

from banger.cli.context import CliContext, json_option, pass_ctx
from banger.cli.lazy import LazyGroup
from banger.cli.render import print_error, print_fields, print_json
from banger.config import load_settings
from banger.core.errors import BangerError, InvalidInput
from banger.version import version_info

COMPLETION_SHELLS = ("bash", "zsh", "fish")

# Each subcommand's module is imported only when it runs (cli/lazy.py).
COMMANDS = {
    "daemon": "banger.cli.daemon_cmd:daemon_group",
    "doctor": "banger.cli.doctor_cmd:doctor",
    "image": "banger.cli.image_cmd:image_group",
    "kernel": "banger.cli.kernel_cmd:kernel_group",
    "ps": "banger.cli.vm_list:ps",
    "ssh-config": "banger.cli.ssh_config_cmd:ssh_config",
    "system": "banger.cli.system_cmd:system_group",
    "top": "banger.cli.top_cmd:top",
}
VM_COMMANDS = {
    **{verb: f"banger.cli.vm_cmd:vm_{verb}" for verb in (
        "create", "start", "stop", "restart", "delete", "kill", "prune", "set", "show", "logs",
        "ssh", "run",
    )},
    "list": "banger.cli.vm_list:vm_list",
    "ports": "banger.cli.vm_ports_cmd:vm_ports",
    "stats": "banger.cli.vm_stats_cmd:vm_stats",
    "health": "banger.cli.vm_stats_cmd:vm_health",
    "exec": "banger.cli.workspace_cmd:vm_exec",
    "workspace": "banger.cli.workspace_cmd:workspace_group",
    "session": "banger.cli.session_cmd:session_group",
}


class BangerGroup(LazyGroup):
    """Maps every error to ``banger: <message>`` and its exit code; never a traceback.

    BangerErrors keep their class's exit code; click's usage errors exit 2;
    anything else is an internal error naming the daemon's log (a traceback
    only under ``BANGER_DEBUG=1``).
    """

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["prog_name"] = "banger"
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except NoArgsIsHelpError as exc:  # a bare group: its help, as click does
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "banger"
            print_error(InvalidInput(exc.format_message(), hint=f"see: {where} --help"))
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            print_error(BangerError(exc.format_message()))
            sys.exit(exc.exit_code)
        except click.Abort:
            print_error(BangerError("interrupted"))
            sys.exit(130)
        except BangerError as exc:
            print_error(exc)
            sys.exit(exc.exit_code)
        except BrokenPipeError:
            sys.exit(1)  # output went to a closed pipe (e.g. `| head`): nothing left to say
        except Exception as exc:  # outside a command (e.g. completion)
            _internal_error(exc, None)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BangerError,
                BrokenPipeError):
            raise
        except Exception as exc:
            _internal_error(exc, ctx.find_object(CliContext))


def _internal_error(exc: Exception, cli: CliContext | None) -> NoReturn:
    """The last resort: one line with the type, the op id if any, and where to look."""
    op = cli.last_op_id() if cli is not None else None
    try:
        log = f"; see {load_settings().paths.log_file}"
    except BangerError:
        log = ""
    if os.environ.get("BANGER_DEBUG") == "1":
        traceback.print_exception(exc)
    print_error(BangerError(f"internal error: {type(exc).__name__}: {exc}{log}", op_id=op,
                            hint=None if log == "" else "BANGER_DEBUG=1 shows the traceback"))
    sys.exit(BangerError.exit_code)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_info().one_line())
        ctx.exit()


@click.group(cls=BangerGroup, lazy=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
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


@cli.group("vm", cls=LazyGroup, lazy=VM_COMMANDS)
def vm_group() -> None:
    """Create, run and manage microVMs.

    \b
    Examples:
      banger vm run --rm -- uname -a
      banger vm create --name box && banger vm ssh box
    """


def main() -> None:
    cli.main()
