"""CLI conventions that need no daemon: version, completion, errors, help examples."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click
import pytest
from click.testing import CliRunner

from banger.api.errors import error_from_response
from banger.api.models import VMInfo
from banger.cli import render
from banger.cli.doctor_cmd import version_drift_check
from banger.cli.main import cli
from banger.cli.vm_cmd import _last_change
from banger.core.errors import Conflict


def test_dash_dash_version_is_one_line_with_commit_and_build_time() -> None:
    out = CliRunner().invoke(cli, ["--version"]).output
    assert out.count("\n") == 1
    assert out.startswith("banger ") and "commit" in out and "built" in out


def test_version_prints_one_field_a_line_and_json() -> None:
    out = CliRunner().invoke(cli, ["version"]).output.splitlines()
    assert [line.split(":")[0] for line in out] == ["version", "commit", "build time"]
    data = json.loads(CliRunner().invoke(cli, ["version", "--json"]).output)
    assert set(data) == {"version", "commit", "build_time"}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_generated(shell: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0
    assert "_BANGER_COMPLETE" in result.output


def _all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, cmd in group.commands.items():
        found.append((f"{prefix}{name}", cmd))
        if isinstance(cmd, click.Group):
            found += _all_commands(cmd, f"{prefix}{name} ")
    return found


def test_every_command_has_an_example_in_its_help() -> None:
    missing = [name for name, cmd in _all_commands(cli) if "banger " not in (cmd.help or "")]
    assert missing == []


def test_error_body_comes_back_as_the_same_class() -> None:
    err = error_from_response(
        409, {"code": "conflict", "message": "taken", "op_id": "abc", "hint": "pick another"}
    )
    assert isinstance(err, Conflict)
    assert (err.message, err.op_id, err.hint) == ("taken", "abc", "pick another")
    odd = error_from_response(500, {"weird": True})
    assert "unexpected body" in odd.message


def test_version_drift_check_warns_with_a_restart_hint() -> None:
    assert version_drift_check("1+a", "1+a").status == "PASS"
    drift = version_drift_check("1+a", "1+b")
    assert drift.status == "WARN" and "banger daemon stop" in (drift.hint or "")


def test_data_that_looks_like_markup_is_printed_literally(capsys) -> None:
    hostile = r"qemu: [/bold] [red]x\ end\\"
    render.print_fields([("last error", hostile), ("pid", None)])
    render.print_error(Conflict(hostile, hint=hostile, op_id="op1"))
    render.warn(hostile)
    out, err = capsys.readouterr()
    assert out == f"last error: {hostile}\npid:        \n"
    assert err == f"banger: {hostile} (op op1)\n  hint: {hostile}\nbanger: warning: {hostile}\n"


def test_vm_show_prints_the_last_change_of_state_and_why() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    fields = dict(id="a" * 12, name="box", state="error", backend="qemu", image_id=None,
                  kernel_name=None, vcpu=1, memory_mib=256, disk_bytes=0, net_mode="user",
                  guest_ip=None, ssh_port=None, tap_name=None, pid=None, last_error="boom",
                  created_at=when, started_at=None)
    shown = VMInfo(**fields, state_changed_at=when, state_reason="start failed: boom")
    assert _last_change(shown) == "2026-01-02 03:04:05 UTC: start failed: boom"
    assert _last_change(VMInfo(**fields)) is None  # an older daemon sends neither
