"""The test image, built once, and a bare QEMU boot of it (the performance floor).

``ensure_test_image()`` builds the golden image into
``~/.cache/banger-test/images/<key>/``; the key hashes ``banger/guest/`` and the
image builder, so a change to what goes into the guest rebuilds it. Without
network (tests run in a network namespace) it reuses the cache or skips.

``boot_guest()`` boots kernel + image with a plain ``qemu-system-x86_64`` command
(microvm, TCG, user-mode networking with SSH forwarded to a loopback port) and
a work disk holding a fresh test key: no daemon involved.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import BangerError
from banger.host.ext4 import debugfs_batch, make_ext4
from banger.images.guest_bits import LEAN_INIT, WORK_DISK_HOST_KEY
from banger.images.manifest import ROOTFS_NAME, read_manifest

REPO = Path(__file__).resolve().parents[2]
TEST_CACHE = Path(os.environ.get("BANGER_TEST_CACHE", Path.home() / ".cache" / "banger-test"))
IMAGES_DIR = TEST_CACHE / "images"
_KEYED_SOURCES = ("banger/guest", "banger/images/guest_bits.py", "banger/images/build.py")

# slirp's fixed addresses: guest 10.0.2.15, gateway 10.0.2.2, DNS 10.0.2.3.
SLIRP_IP = "10.0.2.15/24"
SLIRP_GW = "10.0.2.2"
SLIRP_DNS = "10.0.2.3"


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


def _skip_or_raise(message: str, exc: BaseException) -> None:
    if "pytest" in sys.modules:
        import pytest

        pytest.skip(f"{message}: {exc}")
    raise RuntimeError(message) from exc


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
            _skip_or_raise("the test image is not cached and could not be built", exc)
        os.rename(IMAGES_DIR / manifest.id, final)
        for stale in IMAGES_DIR.iterdir():
            if stale.is_dir() and stale != final and not stale.name.startswith("."):
                shutil.rmtree(stale, ignore_errors=True)
    return final


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_test_key(directory: Path) -> Path:
    key = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "banger-test", "-f", str(key)],
        check=True,
        timeout=30,
    )
    return key


def _debugfs_put(src: Path, dest: str, mode: int) -> list[str]:
    return [
        f"write {src} {dest}",
        f"sif {dest} mode 0{0o100000 | mode:o}",
        f"sif {dest} uid 0",
        f"sif {dest} gid 0",
    ]


def make_work_disk(
    path: Path, authorized_key: bytes, *, host_key: Path | None = None, size_bytes: int = 256 << 20
) -> None:
    """An ext4 work disk (the guest's /root) with .ssh/authorized_keys and, optionally,
    the VM's own SSH host key: written with debugfs, never mounted."""
    make_ext4(path, size_bytes, label="banger-work")
    keyfile = path.with_suffix(".authorized_keys")
    keyfile.write_bytes(authorized_key)
    commands = ["mkdir .ssh", "sif .ssh mode 040700"]
    commands += _debugfs_put(keyfile, ".ssh/authorized_keys", 0o600)
    if host_key is not None:
        commands += ["mkdir .banger", "sif .banger mode 040700"]
        commands += _debugfs_put(host_key, f"{WORK_DISK_HOST_KEY}", 0o600)
    debugfs_batch(path, commands)
    keyfile.unlink()


def host_tsc_khz() -> int | None:
    """The host's TSC rate: under TCG the guest TSC runs at it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":")[1]) * 1000)
    return None


def kernel_cmdline(*, hostname: str, ip: str, gw: str, dns: str, init: str | None) -> str:
    args = ["console=ttyS0", "quiet", "root=/dev/vda", "rw"]
    khz = host_tsc_khz()
    if khz:
        # On a loaded host the kernel's PIT calibration fails and it hangs; tell it the rate.
        args.append(f"tsc_early_khz={khz}")
    if init:
        args.append(f"banger.init={init}")
    args += [f"banger.hostname={hostname}", f"banger.ip={ip}", f"banger.gw={gw}"]
    return " ".join(args + [f"banger.dns={dns}"])


def qemu_argv(
    kernel_dir: Path, overlay: Path, work: Path, console: Path, port: int, cmdline: str
) -> list[str]:
    return [
        "qemu-system-x86_64",
        "-M", "microvm,pit=on,pic=on,rtc=on",
        "-accel", "tcg",
        # RDRAND (emulated by TCG) seeds the guest CRNG at once; without it sshd
        # blocks in getrandom() until "crng init done", ~2 s into a TCG boot.
        "-cpu", "qemu64,+rdrand",
        "-m", "512", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}",
        "-kernel", str(kernel_dir / "vmlinuz"),
        "-initrd", str(kernel_dir / "initrd.img"),
        "-append", cmdline,
        "-drive", f"id=root,file={overlay},format=qcow2,if=none",
        "-device", "virtio-blk-device,drive=root",
        "-drive", f"id=work,file={work},format=raw,if=none",
        "-device", "virtio-blk-device,drive=work",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-device,netdev=n0",
    ]  # fmt: skip


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
    workdir.mkdir(parents=True, exist_ok=True)
    read_manifest(image_dir)  # fail early on a half-built image
    key = make_test_key(workdir)
    overlay, work, console = workdir / "root.qcow2", workdir / "work.ext4", workdir / "console.log"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image_dir / ROOTFS_NAME),
         "-F", "raw", str(overlay)],
        check=True, timeout=30,
    )  # fmt: skip
    make_work_disk(work, key.with_suffix(".pub").read_bytes(), host_key=host_key)
    port = free_loopback_port()
    cmdline = kernel_cmdline(hostname=hostname, ip=SLIRP_IP, gw=SLIRP_GW, dns=SLIRP_DNS, init=init)
    argv = qemu_argv(kernel_dir, overlay, work, console, port, cmdline)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield Guest(proc, port, key, console, started)
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
