"""``banger system install --root DIR``: install.toml and the two units, their hardening,
``systemd-analyze verify``, and an uninstall that leaves nothing behind."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from banger.cli.main import cli
from banger.cli.system_cmd import start_units
from banger.cli.system_view import system_checks
from banger.core.errors import Unavailable
from banger.host import install, systemd
from banger.host.systemd import verify_units
from tests.conftest import BangerEnv

# A non-root user with a passwd entry (systemd calls nobody unsafe, rightly).
OWNER = next(p.pw_name for p in pwd.getpwall() if 0 < p.pw_uid < 65534)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _system(env: BangerEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return env.banger("system", *args)


def test_install_then_uninstall_leaves_the_root_as_it_was(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / install.UNIT_DIR).mkdir(parents=True)  # systemd's, as on every host
    before = _tree(root)
    env = BangerEnv(tmp_path)
    result = _system(env, "install", "--owner", OWNER, "--root", str(root))
    assert result.returncode == 0, result.stderr
    record = install.read_install(root)
    assert record is not None and record.owner == OWNER and record.owner_uid > 0
    assert Path(record.bangerd).parent == Path(sys.executable).parent
    units = root / install.UNIT_DIR
    assert sorted(p.name for p in units.iterdir()) == ["bangerd-root.service", "bangerd.service"]
    assert (root / install.INSTALL_TOML).stat().st_mode & 0o777 == 0o644
    result = _system(env, "uninstall", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert _tree(root) == before


def test_uninstall_without_an_install_says_so(tmp_path: Path) -> None:
    result = _system(BangerEnv(tmp_path), "uninstall", "--root", str(tmp_path))
    assert result.returncode == 3 and "no system install" in result.stderr


@pytest.mark.parametrize("owner", ["root", "no-such-user-xyz"])
def test_install_refuses_root_or_an_unknown_owner(tmp_path: Path, owner: str) -> None:
    result = _system(BangerEnv(tmp_path), "install", "--owner", owner, "--root", str(tmp_path))
    assert result.returncode == 2 and "--owner" in result.stderr
    assert _tree(tmp_path) == set()


def _record() -> install.InstallInfo:
    return install.InstallInfo.for_owner(OWNER, Path(sys.executable).parent, "0.1.0", "c" * 40)


def test_the_units_carry_the_hardening_and_never_kill_guests() -> None:
    units = install.render_units(_record())
    for text in units.values():
        for line in ("KillMode=process", "NoNewPrivileges=yes", "ProtectSystem=strict",
                     "ProtectHome=read-only"):
            assert line in text.splitlines()
    helper = units[install.HELPER_UNIT].splitlines()
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_KILL CAP_DAC_READ_SEARCH CAP_CHOWN" in helper
    assert "PrivateTmp=yes" in helper
    daemon = units[install.DAEMON_UNIT].splitlines()
    assert f"User={OWNER}" in daemon and "RuntimeDirectoryPreserve=yes" in daemon


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (the systemd package)")
    paths = install.write_units(_record(), tmp_path)
    complaints = verify_units(paths)
    # Only complaints about our own files count (verify also lints the host's units).
    ours = [line for line in complaints.splitlines() if "bangerd" in line]
    assert ours == [], complaints


def test_doctor_rows_without_an_install_and_with_one_for_another_user(tmp_path: Path) -> None:
    rows = system_checks(tmp_path)
    assert [(r.name, r.status) for r in rows] == [("system install", "PASS")]
    install.write_install(_record(), tmp_path)
    rows = {r.name: r for r in system_checks(tmp_path)}
    assert rows["helper"].status == "FAIL" and rows["helper"].hint
    owner = rows["install owner"]
    assert owner.status == ("PASS" if os.getuid() == 0 else "WARN")


def test_a_damaged_install_toml_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / install.INSTALL_TOML
    path.parent.mkdir(parents=True)
    path.write_text("owner = [")
    rows = system_checks(tmp_path)
    assert rows[0].status == "FAIL" and "system install" in (rows[0].hint or "")


# systemctl: a crafted one on PATH records its argv (systemd's own never runs on this
# test host, which has no systemd as PID 1).
def _fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int = 0,
                    says: str = "") -> Path:
    bin_dir, log = tmp_path / "fakebin", tmp_path / "systemctl.argv"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {log}\n"
                      f"[ -z '{says}' ] || echo '{says}' >&2\nexit {status}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


@pytest.fixture
def systemd_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As if systemd were PID 1 (its runtime dir exists), so only --root can keep
    systemctl from running."""
    monkeypatch.setattr(systemd, "SYSTEMD_RUN", tmp_path)


def test_install_and_uninstall_under_root_never_call_systemctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, systemd_up: None
) -> None:
    log = _fake_systemctl(tmp_path, monkeypatch)
    assert systemd.systemd_running(), "the test must be able to fail"
    root = tmp_path / "root"
    for args in (["install", "--owner", OWNER], ["uninstall"]):
        result = CliRunner().invoke(cli, ["system", *args, "--root", str(root)])
        assert result.exit_code == 0, result.output
    assert not log.exists(), log.read_text()


def _owner_record(tmp_path: Path) -> install.InstallInfo:
    record = install.InstallInfo.for_owner(OWNER, Path(sys.executable).parent, "v", "c")
    home = tmp_path / "home"
    home.mkdir()
    return replace(record, owner_uid=os.getuid(), owner_gid=os.getgid(), home=str(home),
                   state_dir=str(home / ".local/state/banger"),
                   cache_dir=str(home / ".cache/banger"))


def test_starting_the_units_runs_daemon_reload_then_enable_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, systemd_up: None
) -> None:
    log = _fake_systemctl(tmp_path, monkeypatch)
    start_units(_owner_record(tmp_path))
    assert log.read_text().splitlines() == [
        "daemon-reload", "enable --now bangerd-root.service bangerd.service"]


def test_a_failing_systemctl_is_one_line_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, systemd_up: None
) -> None:
    _fake_systemctl(tmp_path, monkeypatch, 1, "System has not been booted with systemd "
                    "as init system (PID 1). Can't operate.")
    with pytest.raises(Unavailable) as caught:
        start_units(_owner_record(tmp_path))
    assert "units written but not started" in caught.value.message
    assert "\n" not in caught.value.message
    assert "systemctl enable --now bangerd-root.service" in str(caught.value.hint)


def test_install_without_systemd_writes_the_units_and_says_how_to_start_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real command as root, its /etc an overlay in a private mount namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a private /etc overlay)")
    if systemd.systemd_running():
        pytest.skip("needs a host without systemd as PID 1")
    log = _fake_systemctl(tmp_path, monkeypatch)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    overlay = (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} "
               '/etc && exec "$@"')
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", overlay, "sh",
         sys.executable, "-m", "banger.cli", "system", "install", "--owner", OWNER],
        capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "units written but not started" in result.stderr, result.stderr
    assert "systemctl enable --now" in result.stderr
    assert (upper / "systemd/system/bangerd-root.service").is_file(), "the units were written"
    assert not log.exists(), "systemctl never ran"
    assert not Path("/etc/banger/install.toml").exists()
