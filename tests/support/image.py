"""The test image, built once, and a bare QEMU boot of it (the performance floor).

``ensure_test_image()`` builds the golden image into
``~/.cache/banger-test/images/<key>/``; the key hashes ``banger/guest/`` and the
image builder, so a change to what goes into the guest rebuilds it. Without
network (tests run in a network namespace) it reuses the cache; a build that
fails is an error (``tests/support/hostcheck.py``), never a skip.

``boot_guest()`` boots kernel + image with banger's own QEMU command line
(``vmm.qemu.qemu_argv`` on a ``VMSpec``: microvm, TCG, user-mode networking
with SSH forwarded to a loopback port) run in the foreground, on a root overlay
and work disk made by ``host.disks`` with a fresh test key: no daemon involved.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import BangerError
from banger.core.manifests import ImageManifest
from banger.core.vmspec import SLIRP_GUEST_IP, RootDisk, UserNet, VMSpec
from banger.daemon.vm_layout import tcg_cmdline
from banger.host.disks import create_root_overlay, create_work_disk
from banger.host.files import read_model
from banger.host.net import free_loopback_port
from banger.host.ssh import ensure_ssh_key
from banger.images.guest_bits import LEAN_INIT
from banger.images.manifest import MANIFEST_NAME, ROOTFS_NAME
from banger.vmm.qemu import qemu_argv
from tests.support.hostcheck import artifact_failed

REPO = Path(__file__).resolve().parents[2]
TEST_CACHE = Path(os.environ.get("BANGER_TEST_CACHE", Path.home() / ".cache" / "banger-test"))
IMAGES_DIR = TEST_CACHE / "images"
_KEYED_SOURCES = (
    "banger/guest", "banger/images/guest_bits.py", "banger/images/build.py",
    "banger/images/sizing.py", "banger/host/mmdebstrap.py",
)

SLIRP_IP = SLIRP_GUEST_IP  # the address slirp always gives the guest
QEMU_DEFAULT_MAC = "52:54:00:12:34:56"  # what QEMU picks when given none
WORK_DISK_BYTES = 256 << 20


def read_image_json(image_dir: Path) -> ImageManifest:
    """``image_dir/image.json`` (the product writes it and never reads it back)."""
    path = image_dir / MANIFEST_NAME
    return read_model(path, ImageManifest, "image manifest", hint="rebuild the image")


def image_key() -> str:
    """A hash of everything that decides the test image's contents."""
    h = hashlib.sha256()
    for rel in _KEYED_SOURCES:
        base = REPO / rel
        paths = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for path in paths:
            if "__pycache__" in path.parts:
                continue
            h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ensure_test_image() -> Path:
    """The directory of the cached test image (rootfs.ext4, work-seed.ext4, image.json)."""
    from banger.images.build import build_image

    final = IMAGES_DIR / image_key()
    if (final / "image.json").is_file():
        return final
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    with open(IMAGES_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait, then reuse
        if (final / "image.json").is_file():
            return final
        try:
            manifest = build_image("banger-test", IMAGES_DIR, kernel_name="debian-cloud")
        except (BangerError, OSError) as exc:
            artifact_failed("the test image", exc)
        os.rename(IMAGES_DIR / manifest.id, final)
        for stale in IMAGES_DIR.iterdir():
            if stale.is_dir() and stale != final and not stale.name.startswith("."):
                shutil.rmtree(stale, ignore_errors=True)
    return final


def _guest_spec(
    kernel_dir: Path, root: RootDisk, workdir: Path, *, port: int, hostname: str, init: str | None
) -> VMSpec:
    """The VM banger would launch, on user-mode networking with SSH on ``port``."""
    return VMSpec(
        vm_id="banger-test",
        name=hostname,
        vcpu=1,
        memory_mib=512,
        kernel=kernel_dir / "vmlinuz",
        initrd=kernel_dir / "initrd.img",
        root=root,
        work_disk=workdir / "work.ext4",
        console_log=workdir / "console.log",
        vmm_log=workdir / "vmm.log",
        run_dir=workdir / "run",
        net=UserNet(ssh_host_port=port, mac=QEMU_DEFAULT_MAC),
        accel="tcg",
        init=init,
        cmdline_extra=tcg_cmdline("tcg"),
    )


def foreground_qemu_argv(spec: VMSpec) -> list[str]:
    """banger's QEMU command line for ``spec``, run in the foreground (no ``-daemonize``)."""
    return [a for a in qemu_argv(spec) if a != "-daemonize"]


@dataclass
class Guest:
    """A running test guest reachable over SSH on a loopback port."""

    proc: subprocess.Popen[bytes]
    port: int
    key: Path
    console: Path
    started: float
    ready_seconds: float = 0.0

    def ssh_argv(self, *command: str, timeout: int = 5) -> list[str]:
        return [
            "ssh", "-i", str(self.key), "-p", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}", "-o", "LogLevel=ERROR",
            "root@127.0.0.1", "--", *command,
        ]  # fmt: skip

    def ssh(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ssh_argv(*command), capture_output=True, text=True, timeout=timeout
        )

    def wait_ssh(self, deadline_s: float) -> float:
        """Poll until ``ssh true`` succeeds; return seconds since QEMU started."""
        deadline = self.started + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu exited ({self.proc.returncode}):\n{self.console_tail()}")
            try:
                probe = subprocess.run(
                    self.ssh_argv("true", timeout=2), capture_output=True, timeout=5
                )
                if probe.returncode == 0:
                    self.ready_seconds = time.monotonic() - self.started
                    return self.ready_seconds
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"no SSH within {deadline_s}s:\n{self.console_tail()}")

    def console_tail(self, n: int = 40) -> str:
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        return "\n".join(text.splitlines()[-n:])


@contextlib.contextmanager
def boot_guest(
    kernel_dir: Path,
    image_dir: Path,
    workdir: Path,
    *,
    hostname: str = "banger-test",
    init: str | None = LEAN_INIT,
    host_key: Path | None = None,
) -> Iterator[Guest]:
    """Boot the image on a qcow2 overlay plus a fresh work disk; kill QEMU on exit."""
    workdir = workdir.absolute()  # VMSpec takes absolute paths only
    workdir.mkdir(parents=True, exist_ok=True)
    read_image_json(image_dir)  # fail early on a half-built image
    key = workdir / "id_ed25519"
    authorized = ensure_ssh_key(key)
    root = create_root_overlay(image_dir / ROOTFS_NAME, workdir / "root.qcow2", "qcow2")
    port = free_loopback_port()
    spec = _guest_spec(kernel_dir, root, workdir, port=port, hostname=hostname, init=init)
    vm_host_key = None
    if host_key is not None:
        vm_host_key = host_key.read_bytes(), Path(f"{host_key}.pub").read_bytes()
    create_work_disk(
        spec.work_disk, WORK_DISK_BYTES, seed=None, authorized_keys=authorized, host_key=vm_host_key
    )
    spec.run_dir.mkdir(mode=0o700, exist_ok=True)
    argv = foreground_qemu_argv(spec)
    started = time.monotonic()
    with open(spec.vmm_log, "ab") as vmm_log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=vmm_log)
    try:
        yield Guest(proc, port, key, spec.console_log, started)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def measure_boots(runs: int, *, init: str | None = LEAN_INIT) -> list[float]:
    """Boot the cached test kernel + image ``runs`` times; seconds to SSH-ready each."""
    import tempfile

    from tests.support.kernel import ensure_test_kernel

    kernel, image = ensure_test_kernel(), ensure_test_image()
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="banger-boot-") as tmp:
            with boot_guest(kernel, image, Path(tmp), init=init) as guest:
                times.append(guest.wait_ssh(120))
    return times


if __name__ == "__main__":
    # python -m tests.support.image measure [RUNS] [lean|systemd]
    import statistics

    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    profile = sys.argv[3] if len(sys.argv) > 3 else "lean"
    results = measure_boots(n, init=LEAN_INIT if profile == "lean" else None)
    print(" ".join(f"{t:.2f}" for t in results))
    print(f"{profile}: median {statistics.median(results):.2f}s best {min(results):.2f}s (n={n})")
