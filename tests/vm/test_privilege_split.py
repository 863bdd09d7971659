"""The real privilege split: ``bangerd-root`` as root, ``bangerd`` as a user made for the test.

The user has its own HOME, XDG and banger dirs; it imports the test kernel and image
itself; its ``vm run`` boots a TAP-networked guest whose TAP and NAT rule the helper
made; stop/start/delete leave no TAP or rule; a helper killed in the middle of a
create's TAP call (held there by its test hook) and one killed before a create both
make that create fail cleanly, a restarted helper serves again, and the next create
deletes the TAP the killed call made; a SIGKILLed daemon
leaves its guest running, and the next daemon re-adopts it.

``/dev/net/tun`` is 0600 in this test machine's containers (workstations make it 0666
through udev): the user's commands run in a private mount namespace where a 0666
node of the same device is bound over it. Nothing else is privileged.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.helper.server import TEST_HOLD_ENV
from tests.support.hostcheck import kill_leftover_vmms, require_vm_host
from tests.support.image import ensure_test_image
from tests.support.kernel import ensure_kernel_deb
from tests.vm.conftest import bridge_ports

HELPER = Path(sys.executable).parent / "bangerd-root"
# In the user's private mount namespace: a 0666 tun node over /dev/net/tun, and, when
# this interpreter lives under /root (0700, e.g. pyenv), a 0711 stand-in for /root that
# holds only the interpreter's tree, so the user can exec it (and re-exec it: bangerd).
BIND = ('mount --bind "$0" /dev/net/tun && { [ -z "$2" ] || { mount --bind "$2" "$1$2" && '
        'mount --rbind "$1/root" /root; }; } && shift 2 && exec "$@"')


@dataclass
class SplitUser:
    name: str
    uid: int
    gid: int
    base: Path
    bridge: str
    helper_log: Path
    helper: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def state(self) -> Path:
        return self.home / ".local/state/banger"

    @property
    def runtime(self) -> Path:
        return self.base / "run"

    @property
    def socket(self) -> Path:
        return self.base / "helper" / "bangerd-root.sock"

    def env(self) -> dict[str, str]:
        subnet = f"172.30.{int(self.bridge[3:], 16) % 200 + 10}"
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home), "USER": self.name, "NO_COLOR": "1",
            "XDG_STATE_HOME": str(self.home / ".local/state"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "BANGER_RUNTIME_DIR": str(self.runtime),
            "BANGER_HELPER_SOCKET": str(self.socket),
            "BANGER_DNS_LISTEN": "127.0.0.1:0",
            "BANGER_BRIDGE_NAME": self.bridge, "BANGER_BRIDGE_CIDR": f"{subnet}.1/24",
        }  # fmt: skip

    def argv(self, *args: str) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", BIND,
                str(self.base / "tun"), str(self.base / "shadow"), _interpreter_root(),
                "setpriv", "--reuid", str(self.uid), "--regid", str(self.gid), "--clear-groups",
                sys.executable, "-m", "banger.cli", *args]

    def banger(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env=self.env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, *args: str, timeout: float = 300) -> str:
        result = self.banger(*args, timeout=timeout)
        assert result.returncode == 0, f"{args}: {result.stderr}\n{self.logs()}"
        return result.stdout

    def start_helper(self, hold: str | None = None) -> None:
        """``hold``: the op whose reply the helper holds (``server.TEST_HOLD_ENV``)."""
        env = {k: v for k, v in os.environ.items() if k != TEST_HOLD_ENV}
        self.helper = subprocess.Popen(
            [str(HELPER), "--owner", self.name, "--socket", str(self.socket), "--state-dir",
             str(self.state), "--runtime-dir", str(self.runtime)],
            stderr=self.helper_log.open("ab"), stdin=subprocess.DEVNULL,
            env=env | ({TEST_HOLD_ENV: hold} if hold else {}))
        deadline = time.monotonic() + 20
        while not self._answers():  # a killed helper's stale socket file is still there
            assert self.helper.poll() is None, self.helper_log.read_text()
            assert time.monotonic() < deadline, "bangerd-root did not listen"
            time.sleep(0.05)

    def _answers(self) -> bool:
        from banger.core.errors import BangerError
        from banger.host.helper_client import HelperHostOps

        try:
            return HelperHostOps(self.socket, timeout=2).hello().pid == self.helper_pid()
        except BangerError:
            return False

    def helper_pid(self) -> int:
        assert self.helper is not None
        return self.helper.pid

    def kill_helper(self, sig: signal.Signals = signal.SIGKILL) -> None:
        assert self.helper is not None
        self.helper.send_signal(sig)
        self.helper.wait(10)
        self.helper = None

    def logs(self) -> str:
        parts = [self.helper_log.read_text(errors="replace")[-4000:]]
        for log in [self.state / "bangerd.log", *sorted(self.state.glob("vms/*/*.log"))]:
            if log.exists():
                parts.append(f"==== {log}\n{log.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def nat_table(self) -> str:
        return subprocess.run(["nft", "list", "table", "ip", f"banger_{self.bridge}"],
                              capture_output=True, text=True).stdout


def _interpreter_root() -> str:
    """The top dir of this interpreter's install when it sits under /root, else ''."""
    real = Path(os.path.realpath(sys.executable))
    if real.parts[:2] != ("/", "root") or len(real.parts) < 4:
        return ""
    return str(Path(*real.parts[:3]))


def _user_pids(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                pids.append(int(entry.name))
    return pids


def _tools_missing() -> list[str]:
    return [t for t in ("useradd", "userdel", "setpriv", "unshare", "nft")
            if shutil.which(t) is None]


@pytest.fixture
def split_user() -> Iterator[SplitUser]:
    require_vm_host()
    if _tools_missing():
        pytest.skip("needs " + ", ".join(_tools_missing()))
    name = f"bgs{secrets.token_hex(3)}"
    base = Path(tempfile.mkdtemp(prefix="bgsplit-"))
    base.chmod(0o755)
    subprocess.run(["useradd", "-M", "-U", "-d", str(base / "home"), "-s", "/bin/sh", name],
                   check=True, capture_output=True)
    pw = pwd.getpwnam(name)
    user = SplitUser(name, pw.pw_uid, pw.pw_gid, base, f"bgt{secrets.token_hex(3)}",
                     base / "helper.log")
    try:
        for d in (user.home, user.runtime):
            d.mkdir(mode=0o700)
            os.chown(d, user.uid, user.gid)
        (base / "helper").mkdir(mode=0o755)
        os.mknod(base / "tun", 0o666 | stat.S_IFCHR, os.makedev(10, 200))
        (base / "tun").chmod(0o666)
        interp = _interpreter_root()
        if interp:
            (base / "shadow" / "root").mkdir(parents=True)
            (base / "shadow" / "root").chmod(0o711)
            (base / "shadow" / interp.lstrip("/")).mkdir()
        yield user
    finally:
        if user.helper is not None and user.helper.poll() is None:
            user.kill_helper(signal.SIGTERM)
        for pid in _user_pids(user.uid):  # the test user's daemon and guests, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        kill_leftover_vmms(str(base))
        subprocess.run(["ip", "link", "delete", user.bridge], capture_output=True)
        subprocess.run(["nft", "delete", "table", "ip", f"banger_{user.bridge}"],
                       capture_output=True)
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _import_artifacts(user: SplitUser) -> None:
    """The test kernel and image, readable by the user, imported into its own state."""
    shared = user.base / "artifacts"
    shared.mkdir(mode=0o755)
    deb = shutil.copy(ensure_kernel_deb(), shared)
    rootfs = shared / "rootfs.ext4"
    subprocess.run(["cp", "--sparse=always", str(ensure_test_image() / "rootfs.ext4"),
                    str(rootfs)], check=True)
    for path in (Path(deb), rootfs):
        path.chmod(0o644)
    user.ok("kernel", "import", "debian-cloud", "--from", str(deb), timeout=600)
    user.ok("image", "import", str(rootfs), "--name", "test-image", timeout=600)
    rootfs.unlink()


def _show(user: SplitUser, name: str) -> dict[str, object]:
    return dict(json.loads(user.ok("vm", "show", name, "--json")))


def _kill_the_helper_mid_create(user: SplitUser) -> set[str]:
    """SIGKILL the helper after it made a create's TAP and before it answered: the
    create fails cleanly, and a restarted helper serves. The orphan TAP's names."""
    user.ok("daemon", "stop")  # its TAP pool drained: the next create makes its TAP itself
    user.kill_helper()
    user.start_helper(hold="create_tap")
    before = set(bridge_ports(user.bridge))
    create = subprocess.Popen(user.argv("vm", "create", "--name", "c", "--disk", "1G"),
                              env=user.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while "holding the reply of op=create_tap" not in user.helper_log.read_text():
        assert create.poll() is None and time.monotonic() < deadline, user.logs()
        time.sleep(0.1)
    user.kill_helper()
    _, stderr = create.communicate(timeout=120)
    assert create.returncode != 0 and "bangerd-root" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert "c" not in user.ok("vm", "list", "-q").split()
    orphans = set(bridge_ports(user.bridge)) - before
    assert len(orphans) == 1, f"the killed call made its TAP: {orphans}"
    user.start_helper()
    user.ok("vm", "ssh", "a", "--", "true")  # the re-adopted guest is fine throughout
    return orphans


def test_the_owner_daemon_boots_tap_guests_through_the_root_helper(
    split_user: SplitUser,
) -> None:
    user = split_user
    user.start_helper()
    _import_artifacts(user)

    out = user.banger("vm", "run", "--rm", "--", "true")
    assert out.returncode == 0, out.stderr + user.logs()
    log = user.helper_log.read_text()
    assert "op=create_tap" in log and "outcome=ok" in log, log
    assert f"peer_uid={user.uid}" in log

    vm = dict(json.loads(user.ok("vm", "create", "--name", "a", "--disk", "1G", "--nat",
                                 "--json")))
    info = _show(user, "a")
    assert info["net_mode"] == "tap" and info["state"] == "running", info
    tap, ip = str(info["tap_name"]), str(info["guest_ip"])
    assert tap in bridge_ports(user.bridge) and ip in user.nat_table()
    assert os.stat(f"/proc/{info['pid']}").st_uid == user.uid, "QEMU runs as the owner"
    user.ok("vm", "stop", "a")
    assert tap not in bridge_ports(user.bridge) and ip not in user.nat_table()
    user.ok("vm", "start", "a")
    user.ok("vm", "ssh", "a", "--", "true")

    # SIGKILL the daemon: the guest runs on and the next daemon re-adopts it.
    qemu = int(str(_show(user, "a")["pid"]))
    daemon = int((user.runtime / "bangerd.pid").read_text())
    os.kill(daemon, signal.SIGKILL)
    time.sleep(0.5)
    assert Path(f"/proc/{qemu}").exists()
    info = _show(user, "a")
    assert info["state"] == "running" and info["pid"] == qemu, info
    user.ok("vm", "ssh", "a", "--", "true")

    orphans = _kill_the_helper_mid_create(user)

    # The helper gone: a create that needs it fails cleanly; a new helper serves again.
    user.kill_helper()
    failed = user.banger("vm", "create", "--name", "b", "--disk", "1G")
    assert failed.returncode != 0 and "bangerd-root" in failed.stderr, failed.stderr
    assert "b" not in user.ok("vm", "list", "-q").split()
    user.start_helper()
    user.ok("vm", "create", "--name", "b", "--disk", "1G")
    user.ok("vm", "ssh", "b", "--", "true")
    assert not orphans & set(bridge_ports(user.bridge)), "the next create deleted the orphan"

    for name in ("a", "b"):
        user.ok("vm", "delete", name)
    assert ip not in user.nat_table()
    user.ok("daemon", "stop")
    assert bridge_ports(user.bridge) == [], "no TAP outlives the daemon"
    assert vm["id"] and not list((user.state / "vms").glob("*"))
