"""banger's initramfs boots the test kernel under plain QEMU (microvm, TCG) into a tiny root.

The root filesystem is busybox only: its /sbin/init prints a marker and powers
off, so each boot takes a few seconds and needs no image build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from banger.host.ext4 import make_ext4
from banger.kernels.manifest import load_manifest
from tests.support.kernel import ensure_test_kernel

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]

MARKER = "BANGER-ROOT-REACHED"
ROOT_INIT = f"""#!/bin/sh
read -r up _ < /proc/uptime
echo "{MARKER} uptime=$up modules=$(grep -c . /proc/modules) args=$*"
grep -q ' / ext4 rw' /proc/mounts && echo "root is rw ext4"
[ -c /dev/null ] && echo "devtmpfs moved"
poweroff -f
"""


def host_tsc_khz() -> int | None:
    """The host TSC rate: lets the guest skip PIT calibration, which fails on a busy host."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":")[1]) * 1000)
    return None


@pytest.fixture(scope="module")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("rootfs")
    for d in ("bin", "sbin", "dev", "proc", "sys"):
        (tree / d).mkdir()
    shutil.copy("/bin/busybox", tree / "bin" / "busybox")
    for applet in ("sh", "grep", "poweroff", "cat"):
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "sbin" / "init").write_text(ROOT_INIT)
    (tree / "sbin" / "init").chmod(0o755)
    image = tree.parent / "root.ext4"
    make_ext4(image, 32 << 20, source_dir=tree)
    return image


def boot(root: Path | None, *extra: str, timeout: float = 90) -> tuple[str, float]:
    """Boot the test kernel with banger's initramfs; return the console output and wall time."""
    kernel = ensure_test_kernel()
    append = ["console=ttyS0", "quiet", "panic=-1", *extra]
    khz = host_tsc_khz()
    if khz:
        append.append(f"tsc_early_khz={khz}")
    argv = [
        "qemu-system-x86_64", "-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg",
        "-m", "512", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
        "-no-reboot", "-kernel", str(kernel / "vmlinuz"), "-initrd", str(kernel / "initrd.img"),
        "-append", " ".join(append),
    ]  # fmt: skip
    if root is not None:
        argv += [
            "-drive", f"id=root,file={root},format=raw,if=none,snapshot=on",
            "-device", "virtio-blk-device,drive=root",
        ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    return proc.stdout + proc.stderr, time.monotonic() - start


def test_initramfs_loads_modules_mounts_vda_and_execs_the_root_init(busybox_root: Path) -> None:
    out, seconds = boot(busybox_root, "banger.hostname=x", "single")
    assert MARKER in out, out[-3000:]
    line = next(line for line in out.splitlines() if MARKER in line)
    loaded = int(line.split("modules=")[1].split()[0])
    assert loaded == len(load_manifest(ensure_test_kernel()).modules) >= 7  # nothing failed
    assert "args=single" in line  # kernel arguments reach the real init
    assert "root is rw ext4" in out and "devtmpfs moved" in out
    print(f"boot to root init: {seconds:.2f} s wall")


def test_a_missing_root_disk_is_reported_and_the_guest_powers_off(busybox_root: Path) -> None:
    out, _ = boot(None)
    assert "banger-initramfs: error: root device /dev/vda did not appear" in out, out[-3000:]
    assert "powering off" in out


def test_a_missing_init_is_reported_and_the_guest_powers_off(busybox_root: Path) -> None:
    out, _ = boot(busybox_root, "banger.init=/sbin/nope")
    assert "has no /sbin/nope" in out, out[-3000:]
    assert MARKER not in out


@pytest.mark.skipif(os.environ.get("BANGER_BENCH") is None, reason="set BANGER_BENCH=1 to time")
def test_report_boot_time(busybox_root: Path) -> None:
    times = sorted(boot(busybox_root)[1] for _ in range(5))
    print(f"boot to root init, 5 runs: median {times[2]:.2f} s, min {times[0]:.2f} s")
