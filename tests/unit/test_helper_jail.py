"""The jailer operations of ``bangerd-root``: the chroot base is the helper's own, a dir
of root's no one else may write from ``/`` down, so the owner cannot redirect the
jailer's chown (the reviewer's proof: a base in the owner's runtime dir, renamed after
the check, with ``jail/firecracker/<id>/root -> /etc`` planted in the new one).

The hostile bases are real dirs under ``/run`` (root's, unlike ``/tmp``); the jailer is
a crafted script of root's that records that it ran, so a refusal provably ran nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.core.errors import Conflict, Forbidden, NotFound
from banger.helper.guard import Owner
from banger.host import jailer
from banger.host.helper_client import HelperHostOps
from banger.host.jailer import JailConfig, jailer_argv
from banger.host.privileged import InProcessHostOps
from tests.support.fake_host_ops import RecordingHostOps
from tests.support.helper_server import owner_of, serve_helper

UID = 4321
JAIL_ID = "bgj-0123456789ab"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: dirs of root's and chown")


@pytest.fixture
def owner() -> Iterator[Owner]:
    with owner_of(UID) as made:
        yield made


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A dir of root's, 0755, under /run (every dir above it root's and not writable)."""
    path = Path(tempfile.mkdtemp(prefix="bgjail-", dir="/run"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def fake_binaries(root_dir: Path) -> tuple[Path, Path, Path]:
    """A jailer script that records its argv and leaves a pidfile like the real one."""
    bindir = root_dir / "bin"
    bindir.mkdir(mode=0o755)
    ran = root_dir / "jailer-ran"
    script = bindir / "jailer"
    script.write_text(f"""#!/bin/sh
echo "$@" > {ran}
base=$(echo "$@" | sed 's/.*--chroot-base-dir \\([^ ]*\\).*/\\1/')
mkdir -p "$base/firecracker/{JAIL_ID}/root"
chown {UID}:{UID} "$base/firecracker/{JAIL_ID}/root"
echo $$ > "$base/firecracker/{JAIL_ID}/root/firecracker.pid"
""")
    script.chmod(0o755)
    fc = bindir / "firecracker"
    fc.write_text("#!/bin/sh\n")
    fc.chmod(0o755)
    return script, fc, ran


@needs_root
def test_the_chroot_base_is_the_helpers_own_and_made_roots(root_dir: Path) -> None:
    script, fc, ran = fake_binaries(root_dir)
    config = JailConfig(script, fc, root_dir / "helper" / "jail")
    vmm = jailer.launch(config, JAIL_ID, UID, UID)
    assert vmm.chroot == f"{root_dir}/helper/jail/firecracker/{JAIL_ID}/root"
    assert ran.exists() and f"--chroot-base-dir {root_dir}/helper/jail " in ran.read_text()
    for d in (root_dir / "helper", root_dir / "helper/jail", root_dir / "helper/jail/firecracker"):
        st = os.lstat(d)
        assert st.st_uid == 0 and st.st_mode & 0o7777 == 0o755


@needs_root
@pytest.mark.parametrize("how", ["owner's dir", "symlink", "group-writable", "world-writable"])
def test_a_chroot_base_below_a_dir_others_control_is_refused(root_dir: Path, how: str) -> None:
    """The reviewer's attack needs a dir on the way the owner can rename or write into."""
    script, fc, ran = fake_binaries(root_dir)
    victim = root_dir / "victim"  # stands for /etc
    victim.mkdir()
    middle = root_dir / "middle"
    if how == "symlink":
        middle.symlink_to(victim)
    else:
        middle.mkdir()
        if how == "owner's dir":
            os.chown(middle, UID, UID)
        middle.chmod({"owner's dir": 0o755, "group-writable": 0o775,
                      "world-writable": 0o1777}[how])  # fmt: skip
    with pytest.raises(Forbidden, match="not a dir of root's only root writes"):
        jailer.launch(JailConfig(script, fc, middle / "jail"), JAIL_ID, UID, UID)
    assert not ran.exists(), "the jailer ran"
    assert list(victim.iterdir()) == []
    if how != "symlink":
        assert list(middle.iterdir()) == [], "something was made below a dir others control"


@needs_root
def test_an_existing_jail_dir_is_refused_and_left_alone(root_dir: Path) -> None:
    """A jail dir already there (left over, or planted) is never reused: its ``root``
    could be a symlink the jailer would chown through."""
    script, fc, ran = fake_binaries(root_dir)
    config = JailConfig(script, fc, root_dir / "jail")
    planted = root_dir / "jail" / "firecracker" / JAIL_ID
    planted.mkdir(parents=True)
    (planted / "root").symlink_to(root_dir / "bin")
    with pytest.raises(Conflict, match="already exists"):
        jailer.launch(config, JAIL_ID, UID, UID)
    assert not ran.exists()
    assert os.lstat(root_dir / "bin").st_uid == 0


@needs_root
def test_a_jail_is_removed_only_for_its_uid_and_never_through_a_symlink(root_dir: Path) -> None:
    script, fc, _ = fake_binaries(root_dir)
    config = JailConfig(script, fc, root_dir / "jail")
    victim = root_dir / "victim"
    victim.mkdir()
    (victim / "keep").write_text("k")
    jail = root_dir / "jail" / "firecracker" / JAIL_ID
    assert jailer.remove(config, JAIL_ID, UID) is False  # no base yet
    jailer.launch(config, JAIL_ID, UID, UID)
    (jail / "root" / "escape").symlink_to(victim)  # planted by the jailed firecracker
    with pytest.raises(Forbidden, match="not a jail of uid 4322"):
        jailer.remove(config, JAIL_ID, UID + 1)
    assert jail.exists()
    assert jailer.remove(config, JAIL_ID, UID) is True
    assert not jail.exists() and (victim / "keep").read_text() == "k"
    assert jailer.remove(config, JAIL_ID, UID) is False
    jail.mkdir()
    (jail / "root").symlink_to(victim)  # a root that is a link to a dir of that uid's
    os.chown(victim, UID, UID)
    with pytest.raises(Forbidden):
        jailer.remove(config, JAIL_ID, UID)
    assert (victim / "keep").exists()


@pytest.fixture
def fake() -> RecordingHostOps:
    return RecordingHostOps()


@pytest.fixture
def helper(owner: Owner, fake: RecordingHostOps) -> Iterator[HelperHostOps]:
    yield from serve_helper(owner, fake, owner.dirs[1] / "h.sock")


def test_a_jail_of_another_uid_is_refused(helper: HelperHostOps, fake: RecordingHostOps) -> None:
    with pytest.raises(Forbidden, match="owner is 4321"):
        helper.launch_jailed(JAIL_ID, UID + 1, UID)
    with pytest.raises(Forbidden, match="owner is 4321"):
        helper.remove_jail(JAIL_ID, UID + 1)
    assert fake.methods() == []
    helper.launch_jailed(JAIL_ID, UID, UID)
    helper.remove_jail(JAIL_ID, UID)
    assert fake.calls == [("launch_jailed", (JAIL_ID, UID, UID)),
                          ("remove_jail", (JAIL_ID, UID))]


def test_a_real_transports_jail_lies_in_the_helpers_dir_not_the_owners(owner: Owner) -> None:
    assert InProcessHostOps().jail.chroot_base == Path("/run/banger-root/jail")
    assert not str(InProcessHostOps().jail.chroot_base).startswith(str(owner.dirs[1]))


def test_the_jailer_argv_uses_only_its_documented_flags() -> None:
    """docs/jailer.md of Firecracker: --id, --exec-file, --uid, --gid,
    --chroot-base-dir, --daemonize, --new-pid-ns, then ``--`` and Firecracker's own."""
    config = JailConfig(Path("/opt/fc/jailer"), Path("/opt/fc/firecracker"),
                        Path("/run/banger-root/jail"))
    assert jailer_argv(config, JAIL_ID, 1000, 1001) == [
        "/opt/fc/jailer", "--id", JAIL_ID, "--exec-file", "/opt/fc/firecracker",
        "--uid", "1000", "--gid", "1001", "--chroot-base-dir", "/run/banger-root/jail",
        "--daemonize", "--new-pid-ns", "--", "--api-sock", "/run/firecracker.socket",
    ]  # fmt: skip


def test_jail_binaries_must_be_roots_regular_files(tmp_path: Path) -> None:
    jail_bin, fc = tmp_path / "jailer", tmp_path / "firecracker"
    base = tmp_path / "jail"
    with pytest.raises(NotFound, match="not installed"):
        jailer.launch(JailConfig(jail_bin, fc, base), JAIL_ID, UID, UID)
    jail_bin.write_text("#!/bin/sh\ntouch /tmp/pwned\n")
    jail_bin.chmod(0o777)  # anyone may rewrite it
    fc.symlink_to("/bin/true")
    for config in (JailConfig(jail_bin, Path("/bin/true"), base),
                   JailConfig(Path("/bin/true"), fc, base)):
        with pytest.raises(Forbidden):
            jailer.launch(config, JAIL_ID, UID, UID)
    assert not base.exists()
