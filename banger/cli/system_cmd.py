"""``banger system install|status|restart|uninstall``: the owner daemon plus the root helper
under systemd (docs/privileges.md)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

import banger.host.install as install
import banger.host.systemd as systemd
from banger.cli.context import json_option
from banger.cli.render import console, print_fields, print_json, warn
from banger.core.errors import Forbidden, HostToolError, InvalidInput, NotFound, Unavailable
from banger.version import version_info

UNITS = (install.HELPER_UNIT, install.DAEMON_UNIT)
root_option = click.option(
    "--root", "root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
    help="Install under this directory instead of / (units are written; systemctl never runs).",
)


def _require_root(root: Path) -> None:
    if root == Path("/") and os.geteuid() != 0:
        raise Forbidden("banger system needs root to change the system",
                        hint="run it with sudo")


START_FIX = f"sudo systemctl daemon-reload && sudo systemctl enable --now {' '.join(UNITS)}"


def start_units(record: install.InstallInfo) -> None:
    """The owner's dirs, then ``systemctl enable --now`` both units; without systemd, one
    line saying the units were only written and how to start them (nothing else made)."""
    if not systemd.systemd_running():
        raise Unavailable(
            f"units written but not started: {systemd.why_not_systemd()}",
            hint=f"on a host booted with systemd: {START_FIX}; elsewhere run bangerd-root "
                 "--owner USER as root and bangerd as USER (docs/privileges.md)")
    install.ensure_owner_dirs(record)
    try:
        systemd.systemctl("daemon-reload")
        systemd.systemctl("enable", "--now", *UNITS)
    except HostToolError as exc:
        raise Unavailable(f"units written but not started: {exc.message}",
                          hint=f"see systemctl status bangerd-root, then: {START_FIX}") from None


def _quietly(*args: str) -> None:
    """A ``systemctl`` step of uninstall: a failure is a warning, the files go anyway."""
    try:
        systemd.systemctl(*args)
    except HostToolError as exc:
        warn(f"systemctl {args[0]} failed ({exc.message}); removing the files anyway")


@click.group("system")
def system_group() -> None:
    """Install banger as two systemd services: bangerd as you, bangerd-root as root.

    \b
    Example:
      sudo banger system install --owner alice
      banger system status
    """


@system_group.command("install")
@click.option("--owner", help="The user bangerd runs as (default: $SUDO_USER).")
@root_option
def system_install(owner: str | None, root: Path) -> None:
    """Write /etc/banger/install.toml and the two units, then enable and start them.

    \b
    Example:
      sudo banger system install --owner alice
    """
    _require_root(root)
    owner = owner or os.environ.get("SUDO_USER")
    if not owner:
        raise InvalidInput("no owner given", hint="pass --owner USER (the user who runs banger)")
    bin_dir = Path(sys.executable).parent
    for tool in ("bangerd", "bangerd-root"):
        if not (bin_dir / tool).is_file():
            raise NotFound(f"{bin_dir / tool} is missing", hint="reinstall banger (pip install)")
    info = version_info()
    record = install.InstallInfo.for_owner(owner, bin_dir, info.version, info.commit)
    written = [install.write_install(record, root), *install.write_units(record, root)]
    for path in written:
        console().print(f"wrote {path}")
    if root != Path("/"):
        console().print(f"--root {root}: units written, nothing started")
        return
    start_units(record)
    console().print(f"enabled and started {' and '.join(UNITS)}")


@system_group.command("uninstall")
@click.option("--purge", is_flag=True, help="Also delete the owner's VMs, images and cache.")
@root_option
def system_uninstall(purge: bool, root: Path) -> None:
    """Stop and remove the units and install.toml; VMs and images stay unless --purge.

    \b
    Example:
      sudo banger system uninstall
    """
    _require_root(root)
    record = install.read_install(root)
    if record is None:
        raise NotFound(f"no system install under {root}", hint="nothing to uninstall")
    live = root == Path("/") and systemd.systemd_running()
    if live:
        _quietly("disable", "--now", *UNITS)
    for path in install.remove_install(root):
        console().print(f"removed {path}")
    if live:
        _quietly("daemon-reload")
    if purge:
        for d in (record.state_dir, record.cache_dir):
            under = root / Path(d).relative_to("/")
            if under.name == "banger" and under.is_dir() and not under.is_symlink():
                shutil.rmtree(under)
                console().print(f"purged {under}")


@system_group.command("restart")
def system_restart() -> None:
    """Restart both units; guests keep running and the daemon re-adopts them.

    \b
    Example:
      sudo banger system restart
    """
    _require_root(Path("/"))
    if install.read_install() is None:
        raise NotFound("banger is not installed as a system service",
                       hint="sudo banger system install --owner USER")
    if not systemd.systemd_running():
        raise Forbidden(f"cannot restart: {systemd.why_not_systemd()}",
                        hint="restart bangerd-root and bangerd by hand")
    systemd.systemctl("restart", *UNITS)
    console().print(f"restarted {' and '.join(UNITS)}")


@system_group.command("status")
@json_option
def system_status(as_json: bool) -> None:
    """The install, its units and pids, and the versions of CLI, daemon and helper.

    \b
    Example:
      banger system status
    """
    from banger.cli.system_view import status_fields

    fields = status_fields()
    if as_json:
        print_json(fields)
    else:
        print_fields(list(fields.items()))
