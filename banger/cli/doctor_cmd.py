"""``banger doctor``: the daemon's host checks plus CLI/daemon version drift and the
system install's rows (``system_view``)."""

from __future__ import annotations

import sys

import click

from banger.api.client import version_tag
from banger.api.models import CheckStatus, DoctorCheck, DoctorReport
from banger.cli.context import CliContext, json_option, pass_ctx
from banger.cli.render import console, print_json, print_table


def version_drift_check(cli_tag: str, daemon_tag: str) -> DoctorCheck:
    if cli_tag == daemon_tag:
        return DoctorCheck(name="daemon version", status=CheckStatus.PASS, detail=daemon_tag)
    return DoctorCheck(
        name="daemon version",
        status=CheckStatus.WARN,
        detail=f"daemon runs {daemon_tag}, CLI is {cli_tag}",
        hint="restart the daemon: banger daemon stop && banger daemon start",
    )


@click.command("doctor")
@json_option
@pass_ctx
def doctor(ctx: CliContext, as_json: bool) -> None:
    """Check the host: PASS/WARN/FAIL per check, each non-PASS with a fix.

    Exits non-zero when any check FAILs.

    \b
    Example:
      banger doctor
      banger doctor --json | jq '.checks[] | select(.status != "PASS")'
    """
    client = ctx.client()
    report = client.get_model("/doctor", DoctorReport)
    ping = client.ping()
    report.checks.append(version_drift_check(version_tag(), f"{ping.version}+{ping.commit[:12]}"))
    from banger.cli.system_view import system_checks

    report.checks += system_checks()
    failed = any(c.status is CheckStatus.FAIL for c in report.checks)
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        _render(report.checks)
    if failed:
        sys.exit(1)


def _render(checks: list[DoctorCheck]) -> None:
    from rich.text import Text

    colour = {CheckStatus.PASS: "green", CheckStatus.WARN: "yellow", CheckStatus.FAIL: "red"}
    print_table(
        ["CHECK", "STATUS", "DETAIL"],
        [[c.name, Text(c.status, style=colour[c.status]), c.detail] for c in checks],
    )
    hints = [c for c in checks if c.status is not CheckStatus.PASS and c.hint]
    out = console()
    for check in hints:
        out.print(Text(f"{check.status} {check.name}: {check.hint}"))
