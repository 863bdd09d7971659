"""guest_files(): the single list of what banger writes into every image."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput
from banger.images.guest_bits import (
    LEAN_INIT,
    MASKED_UNITS,
    GuestFile,
    HostKey,
    Kind,
    check_bootable,
    guest_files,
    refuse_symlinked_parents,
    write_guest_files,
)


def by_path(files: list[GuestFile]) -> dict[str, GuestFile]:
    return {f.path: f for f in files}


def test_paths_are_unique_absolute_and_parents_come_first() -> None:
    files = guest_files()
    paths = [f.path for f in files]
    assert len(paths) == len(set(paths))
    seen: set[str] = set()
    for f in files:
        assert f.path.startswith("/") and ".." not in f.path.split("/")
        parent = os.path.dirname(f.path)
        if parent in by_path(files):
            assert parent in seen, f"{f.path} listed before its parent"
        seen.add(f.path)


def test_sshd_accepts_keys_only() -> None:
    config = by_path(guest_files())["/etc/ssh/sshd_config"].content.decode()
    lines = {line.split()[0]: line.split(None, 1)[1] for line in config.splitlines()
             if line and not line.startswith("#")}
    assert lines["PasswordAuthentication"] == "no"
    assert lines["KbdInteractiveAuthentication"] == "no"
    assert lines["PermitRootLogin"] == "prohibit-password"
    assert lines["UseDNS"] == "no"
    # sshd takes the first value it reads: the drop-ins must come after banger's settings.
    assert config.strip().splitlines()[-1] == "Include /etc/ssh/sshd_config.d/*.conf"


def test_sshd_prefers_the_per_vm_host_key_on_the_work_disk() -> None:
    config = by_path(guest_files())["/etc/ssh/sshd_config"].content.decode()
    keys = [line.split()[1] for line in config.splitlines() if line.startswith("HostKey ")]
    assert keys == ["/root/.banger/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key"]


def test_fstab_mounts_the_work_disk_on_root_without_blocking_boot() -> None:
    fstab = by_path(guest_files())["/etc/fstab"].content.decode()
    work = [line.split() for line in fstab.splitlines() if line.startswith("/dev/vdb")]
    assert len(work) == 1
    dev, mountpoint, fstype, options, _, passno = work[0]
    assert (mountpoint, fstype, passno) == ("/root", "ext4", "0")
    assert "nofail" in options.split(",")


def test_lean_init_is_an_executable_root_owned_script() -> None:
    init = by_path(guest_files())[LEAN_INIT]
    assert init.kind is Kind.FILE
    assert init.mode == 0o755 and (init.uid, init.gid) == (0, 0)
    assert init.content.startswith(b"#!/bin/sh\n")


def test_hushlogin_and_ssh_dir_go_into_the_work_seed() -> None:
    files = by_path(guest_files())
    assert files["/root/.hushlogin"].kind is Kind.FILE
    assert files["/root/.ssh"].mode == 0o700
    assert files["/root/.banger"].mode == 0o700


def test_masked_units_link_to_dev_null_and_bootstrap_is_enabled() -> None:
    files = by_path(guest_files())
    for unit in MASKED_UNITS:
        entry = files[f"/etc/systemd/system/{unit}"]
        assert (entry.kind, entry.target) == (Kind.SYMLINK, "/dev/null")
    wants = files["/etc/systemd/system/sysinit.target.wants/banger-bootstrap.service"]
    assert wants.target == "/etc/systemd/system/banger-bootstrap.service"
    assert "ssh.service" not in MASKED_UNITS


def test_host_key_is_included_private_and_only_when_given() -> None:
    assert "/etc/ssh/ssh_host_ed25519_key" not in by_path(guest_files())
    files = by_path(guest_files(host_key=HostKey(private=b"PRIV", public=b"PUB")))
    assert files["/etc/ssh/ssh_host_ed25519_key"].mode == 0o600
    assert files["/etc/ssh/ssh_host_ed25519_key"].content == b"PRIV"
    assert files["/etc/ssh/ssh_host_ed25519_key.pub"].content == b"PUB"


def test_write_guest_files_creates_the_tree_with_modes(tmp_path: Path) -> None:
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/ssh/sshd_config").write_text("PasswordAuthentication yes\n")
    write_guest_files(tmp_path, guest_files())
    init = tmp_path / LEAN_INIT.lstrip("/")
    assert stat.S_IMODE(init.stat().st_mode) == 0o755
    assert b"PasswordAuthentication no" in (tmp_path / "etc/ssh/sshd_config").read_bytes()
    assert stat.S_IMODE((tmp_path / "tmp").stat().st_mode) == 0o1777
    masked = tmp_path / "etc/systemd/system/apt-daily.timer"
    assert masked.is_symlink() and os.readlink(masked) == "/dev/null"
    assert os.readlink(tmp_path / "usr/local/sbin/poweroff") == "/usr/lib/banger/power"


def test_write_guest_files_is_idempotent(tmp_path: Path) -> None:
    write_guest_files(tmp_path, guest_files())
    write_guest_files(tmp_path, guest_files())
    assert (tmp_path / "root/.hushlogin").is_file()


def test_write_guest_files_refuses_paths_escaping_the_root(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        write_guest_files(tmp_path, [GuestFile("/../etc/passwd", Kind.FILE, content=b"x")])


def test_write_guest_files_refuses_an_image_symlink_that_points_out_of_the_tree(
    tmp_path: Path,
) -> None:
    # An untrusted image ships /etc/ssh -> a host directory; nothing may land there.
    root, outside = tmp_path / "root", tmp_path / "home-user"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    (root / "etc/ssh").symlink_to(outside)
    with pytest.raises(InvalidInput, match="image path /etc/ssh is a symlink") as exc:
        write_guest_files(root, guest_files(host_key=HostKey(private=b"PRIV", public=b"PUB")))
    assert exc.value.hint
    assert list(outside.iterdir()) == []
    assert not (root / "proc").exists()  # refused before anything was written


def test_write_guest_files_refuses_a_relative_symlink_climbing_out_of_the_tree(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    (root / "usr/lib").mkdir(parents=True)
    outside.mkdir()
    (root / "usr/lib/banger").symlink_to("../../../elsewhere")
    with pytest.raises(InvalidInput, match="/usr/lib/banger is a symlink"):
        write_guest_files(root, guest_files())
    assert list(outside.iterdir()) == []


def test_write_guest_files_replaces_a_symlink_at_an_entry_path_instead_of_following_it(
    tmp_path: Path,
) -> None:
    root, victim = tmp_path / "root", tmp_path / "victim"
    (root / "etc").mkdir(parents=True)
    victim.write_text("host file\n")
    (root / "etc/fstab").symlink_to(victim)
    write_guest_files(root, [GuestFile("/etc/fstab", Kind.FILE, content=b"guest\n")])
    assert victim.read_text() == "host file\n"
    assert not (root / "etc/fstab").is_symlink()
    assert (root / "etc/fstab").read_bytes() == b"guest\n"


def test_refuse_symlinked_parents_asks_outermost_parents_first() -> None:
    asked: list[str] = []

    def is_symlink(path: str) -> bool:
        asked.append(path)
        return path == "/a"

    with pytest.raises(InvalidInput, match="image path /a is a symlink; banger writes /a/b/c"):
        refuse_symlinked_parents([GuestFile("/a/b/c", Kind.FILE)], is_symlink)
    assert asked == ["/a"]


def _exe(root: Path, rel: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


def test_check_bootable_accepts_init_through_an_absolute_symlink(tmp_path: Path) -> None:
    _exe(tmp_path, "lib/systemd/systemd")
    (tmp_path / "sbin").mkdir()
    (tmp_path / "sbin/init").symlink_to("/lib/systemd/systemd")  # absolute: inside the image
    for rel in ("usr/sbin/sshd", "bin/sh", "usr/sbin/ip"):
        _exe(tmp_path, rel)
    check_bootable(tmp_path)


def test_check_bootable_names_every_missing_piece_and_the_fix(tmp_path: Path) -> None:
    _exe(tmp_path, "bin/sh")
    with pytest.raises(InvalidInput) as err:
        check_bootable(tmp_path)
    assert "init" in err.value.message and "sshd" in err.value.message
    assert "ip (iproute2)" in err.value.message
    assert err.value.hint and "openssh-server" in err.value.hint


def test_check_bootable_does_not_follow_links_out_to_the_host(tmp_path: Path) -> None:
    # /sbin/init -> /usr/sbin/sshd exists on the host, not in the image.
    (tmp_path / "sbin").mkdir()
    (tmp_path / "sbin/init").symlink_to("/usr/bin/env")
    with pytest.raises(InvalidInput, match="init"):
        check_bootable(tmp_path)
