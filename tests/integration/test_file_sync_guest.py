"""``[[file_sync]]`` into a running guest: the plan a start writes with debugfs, as one tar
the guest's fixed script (``core/file_sync_script.py``) puts in its ``/root``.

The script runs here, with this host's ``sh``, ``tar`` and ``mv``, on a directory standing
in for the guest's ``/root``, as a real guest runs it over SSH. The home is the crafted one
of ``test_file_sync.py`` (links and a FIFO pointing at a secret outside it, a quote in a
name, a path whose directory is a link out of the home) plus names a shell would take
apart; the guest's side is crafted too (a link where a directory goes, a link where a
file goes, a directory where a file goes).
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest

from banger.core.file_sync import parse_file_sync
from banger.core.file_sync_script import sync_argv
from banger.host.run import run
from banger.host.work_files import (
    SyncPlan,
    apply_guest_report,
    pack_file_sync,
    plan_file_sync,
    sync_files,
)
from tests.integration.test_file_sync import entries, world  # noqa: F401  (the fixture)

SHELL_NAMES = ("$(touch PWNED) *", "-rf", "a;b `id` 'c'")


def sync_into(guest: Path, home: Path, scratch: Path) -> SyncPlan:
    """What the daemon does for a claimed member, with ``guest`` as its ``/root``."""
    scratch.mkdir()
    payload = scratch / "payload.tar"
    plan = pack_file_sync(entries(home), home, scratch, payload)
    with open(payload, "rb") as f:
        report = run(sync_argv(f"{guest}/"), input=f, timeout=60).stdout
    apply_guest_report(plan, report)
    return plan


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def everything_under(top: Path) -> bytes:
    return b"".join(p.read_bytes() for p in top.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture
def guest(tmp_path: Path, world: tuple[Path, Path, bytes]) -> Path:  # noqa: F811
    """A guest's /root with banger's key in it; the home gets names a shell would split."""
    home = world[0]
    for name in (*SHELL_NAMES, "new\nline"):
        (home / ".aws" / name).write_text(f"{name}\n")
    root = tmp_path / "guest" / "root"
    (root / ".ssh").mkdir(parents=True)
    (root / ".ssh" / "authorized_keys").write_bytes(b"banger's key\n")
    return root


def test_one_plan_lands_in_a_running_guest_as_in_a_stopped_disk(
        world: tuple[Path, Path, bytes], guest: Path, tmp_path: Path,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    home, image, secret = world
    with caplog.at_level(logging.WARNING, "banger.host.work_files"):
        on_disk = sync_files(image, entries(home), home)
        caplog.clear()
        running = sync_into(guest, home, tmp_path / "scratch")
    # the same files, and the same warnings, from both writers
    assert sorted(running.files) == sorted(on_disk.files)
    assert sorted(running.skipped) == sorted(on_disk.skipped)
    for why in ("symlink (would escape", "a top-level symlink", "a path whose directory",
                "a missing path", "a special file", "a name debugfs cannot encode",
                "a path banger owns (/root/.ssh/authorized_keys)"):
        assert f"file_sync skipped {why}" in caplog.text, why
    token = guest / ".config" / "tool" / "token"
    assert token.read_text() == "token-v1\n" and mode_of(token) == 0o600  # the entry's mode
    nested = guest / ".aws" / "sub" / "nested.txt"
    assert nested.read_text() == "nested\n" and mode_of(nested) == 0o755  # the host's mode
    assert mode_of(guest / ".aws" / "sub") == 0o755 and mode_of(guest / ".config") == 0o755
    assert (guest / ".ssh" / "authorized_keys").read_bytes() == b"banger's key\n"
    for name in SHELL_NAMES:  # data, never shell: each lands under its own name
        assert (guest / ".aws" / name).read_text() == f"{name}\n"
    assert not any(p.name == "PWNED" for p in tmp_path.rglob("*"))
    for name in (".aws/leak", ".aws/leakdir", ".aws/fifo", ".aws/new\nline", '.aws/we"ird',
                 "linked", "via", "missing"):
        assert not os.path.lexists(guest / name), name
    assert secret not in everything_under(guest)
    assert sorted(p.name for p in guest.iterdir()) == [".aws", ".config", ".ssh"]  # no scratch


def test_what_the_guest_has_in_the_way_is_left_out_and_never_followed(
        world: tuple[Path, Path, bytes], guest: Path, tmp_path: Path,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    home = world[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("the guest's own file\n")
    (guest / ".config").symlink_to(elsewhere)  # a link where a synced directory goes
    (guest / ".aws" / "sub" / "nested.txt").mkdir(parents=True)  # a dir where a file goes
    (guest / ".aws" / "credentials").symlink_to(elsewhere)  # a link where a file goes
    with caplog.at_level(logging.WARNING, "banger.host.work_files"):
        plan = sync_into(guest, home, tmp_path / "scratch")
    assert "file_sync skipped /root/.config: it is not a directory on the work disk" in (
        caplog.text)
    assert "file_sync skipped /root/.aws/sub/nested.txt: a directory is in its place" in (
        caplog.text)
    assert "/.config/tool/token" not in plan.files and "/.aws/sub/nested.txt" not in plan.files
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep"]  # nothing went through
    assert (elsewhere / "keep").read_text() == "the guest's own file\n"
    credentials = guest / ".aws" / "credentials"
    assert not credentials.is_symlink() and credentials.read_text() == "[default]\nkey = 1\n"
    assert (guest / ".aws" / "sub" / "nested.txt").is_dir()


def test_a_guest_report_drops_only_what_the_plan_holds(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "d").mkdir(parents=True)
    (home / "d" / "f").write_text("x\n")
    (home / "g").write_text("y\n")
    (tmp_path / "staging").mkdir()
    plan = plan_file_sync(parse_file_sync([{"host": "~/d", "guest": "/root/d"},
                                           {"host": "~/g", "guest": "/root/g"}], home),
                          home, tmp_path / "staging")
    junk = b"dir /etc\ndir ..\nfile ../../x\nrm -rf /\n\xff\xfe\nfile \ndir\n" * 100
    apply_guest_report(plan, junk + b"file g\nfile g\n")
    assert sorted(plan.files) == ["/d/f"]
    assert plan.skipped == ["file_sync skipped /root/g: a directory is in its place"]
    apply_guest_report(plan, b"dir d\nfile d/f\n")  # a file under a reported dir: once
    assert plan.files == {} and plan.skipped[1:] == [
        "file_sync skipped /root/d: it is not a directory on the work disk"]


def test_the_payloads_files_are_stamped_with_the_time_they_are_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "g").write_text("y\n")
    os.utime(home / "g", (0, 0))
    (tmp_path / "scratch").mkdir()
    before = time.time()
    pack_file_sync(parse_file_sync([{"host": "~/g", "guest": "/root/g"}], home), home,
                   tmp_path / "scratch", tmp_path / "payload.tar")
    with tarfile.open(tmp_path / "payload.tar") as tar:
        assert tar.getmember("tree/g").mtime >= int(before)  # as debugfs stamps a write


def test_the_payload_is_root_owned_with_the_staged_modes_and_one_path_a_line(
        world: tuple[Path, Path, bytes], tmp_path: Path) -> None:  # noqa: F811
    home = world[0]
    (tmp_path / "scratch").mkdir()
    payload = tmp_path / "payload.tar"
    plan = pack_file_sync(entries(home), home, tmp_path / "scratch", payload)
    with tarfile.open(payload) as tar:
        members = {m.name: m for m in tar.getmembers()}
        dirs = tar.extractfile("dirs").read().decode().splitlines()  # type: ignore[union-attr]
        files = tar.extractfile("files").read().decode().splitlines()  # type: ignore[union-attr]
    assert dirs == [d.lstrip("/") for d in plan.dirs] and dirs.index(".aws") < dirs.index(
        ".aws/sub")  # parents first
    assert sorted(files) == sorted(f.lstrip("/") for f in plan.files)
    assert all(m.uid == 0 and m.gid == 0 and not m.issym() and not m.islnk()
               for m in members.values())
    assert members["tree/.config/tool/token"].mode == 0o600
    assert members["tree/.aws/sub/nested.txt"].mode == 0o755
    assert all(members[f"tree/{d}"].isdir() and members[f"tree/{d}"].mode == 0o755
               for d in dirs)


def test_entries_that_collide_leave_the_file_out_in_both_writers(
        world: tuple[Path, Path, bytes], guest: Path, tmp_path: Path) -> None:  # noqa: F811
    """One entry's tree has a directory where another entry puts a file: the directory
    wins, with a warning, and neither writer fails (tar would refuse the file)."""
    home, image, _ = world
    (home / "plain").write_text("a file\n")
    colliding = parse_file_sync([{"host": "~/.aws", "guest": "/root/.aws"},
                                 {"host": "~/plain", "guest": "/root/.aws/sub"}], home)
    on_disk = sync_files(image, colliding, home)
    (tmp_path / "scratch").mkdir()
    payload = tmp_path / "scratch" / "payload.tar"
    running = pack_file_sync(colliding, home, tmp_path / "scratch", payload)
    with open(payload, "rb") as f:
        apply_guest_report(running, run(sync_argv(f"{guest}/"), input=f, timeout=60).stdout)
    warning = "file_sync skipped /root/.aws/sub: a directory is in its place"
    assert warning in on_disk.skipped and warning in running.skipped
    assert not any("debugfs:" in s for s in on_disk.skipped)
    assert (guest / ".aws" / "sub" / "nested.txt").read_text() == "nested\n"
