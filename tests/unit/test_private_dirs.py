"""State, cache and runtime dirs are provably ours; the pidfile is never a planted link."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from banger.core.errors import Forbidden
from banger.daemon.server import instance_lock
from banger.host.private_dirs import check_daemon_socket, ensure_private_dir

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to uid 65534")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_every_missing_component_is_made_0700(tmp_path: Path) -> None:
    target = tmp_path / "banger-0" / "banger"
    old = os.umask(0o022)
    try:
        assert ensure_private_dir(target, setting="X") == target
    finally:
        os.umask(old)
    assert _mode(tmp_path / "banger-0") == 0o700 and _mode(target) == 0o700


def test_a_dir_of_ours_that_others_could_read_is_closed(tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    ensure_private_dir(target, setting="X")
    assert _mode(target) == 0o700


def test_a_symlink_in_place_of_the_dir_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(elsewhere)
    with pytest.raises(Forbidden, match="symlink") as err:
        ensure_private_dir(tmp_path / "run", setting="XDG_RUNTIME_DIR")
    assert err.value.hint and "XDG_RUNTIME_DIR" in err.value.hint


def test_a_dir_others_may_write_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "open"
    target.mkdir()
    target.chmod(0o777)
    with pytest.raises(Forbidden, match="others may write"):
        ensure_private_dir(target, setting="X")
    under = target / "banger"
    with pytest.raises(Forbidden, match="writable by other users"):
        ensure_private_dir(under, setting="X")


@needs_root
def test_a_dir_or_parent_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    squat = tmp_path / "banger-0"
    squat.mkdir(mode=0o700)
    os.chown(squat, NOBODY, NOBODY)
    with pytest.raises(Forbidden, match="belongs to uid 65534"):
        ensure_private_dir(squat, setting="X")
    with pytest.raises(Forbidden, match="belongs to uid 65534"):
        ensure_private_dir(squat / "banger", setting="X")


def test_a_planted_pidfile_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "precious"
    victim.write_text("keep me\n")
    pidfile = tmp_path / "run" / "bangerd.pid"
    pidfile.parent.mkdir(mode=0o700)
    pidfile.symlink_to(victim)
    with pytest.raises(Forbidden, match="symbolic link"):
        with instance_lock(pidfile):
            pass
    assert victim.read_text() == "keep me\n"


def test_the_client_accepts_our_socket_and_refuses_anything_else(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    sock_path = run / "bangerd.sock"
    with pytest.raises(FileNotFoundError):
        check_daemon_socket(sock_path)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        check_daemon_socket(sock_path)
    sock_path.unlink()
    sock_path.write_text("not a socket")
    with pytest.raises(Forbidden, match="not a socket of yours"):
        check_daemon_socket(sock_path)
    sock_path.unlink()
    sock_path.symlink_to(tmp_path / "elsewhere.sock")
    with pytest.raises(Forbidden, match="not a socket of yours"):
        check_daemon_socket(sock_path)
