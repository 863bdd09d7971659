"""The initramfs pieces: the newc writer, the /init script and the busybox check."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from banger.core.errors import HostToolError, InvalidInput
from banger.host import probes
from banger.kernels.initramfs import (
    APPLETS,
    CpioEntry,
    _base_entries,
    find_busybox,
    init_script,
    newc_archive,
)
from tests.support.cpio import read_newc

ENTRIES = [
    CpioEntry("bin", stat.S_IFDIR | 0o755),
    CpioEntry("bin/tool", stat.S_IFREG | 0o755, b"odd-length!"),
    CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"tool"),
    CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
]


def test_newc_archive_round_trips_every_entry_kind() -> None:
    assert read_newc(gzip.compress(newc_archive(ENTRIES))) == ENTRIES


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs GNU cpio")
def test_gnu_cpio_reads_the_archive_with_modes_and_device_numbers() -> None:
    out = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=newc_archive(ENTRIES), capture_output=True, check=True
    ).stdout.decode()
    lines = out.splitlines()
    assert [line.split()[-1] for line in lines[:3]] == ["bin", "bin/tool", "tool"]
    assert lines[1].startswith("-rwxr-xr-x") and " root " in lines[1]
    assert lines[3].split()[:6] == ["crw-------", "1", "root", "root", "5,", "1"]


def test_init_script_loads_modules_in_the_given_order() -> None:
    script = init_script(["virtio_ring", "virtio", "virtio_blk"])
    assert "for m in virtio_ring virtio virtio_blk; do" in script
    assert script.startswith("#!/bin/sh\n")


def test_init_script_mounts_dev_vda_and_runs_sbin_init_by_default_else_powers_off() -> None:
    script = init_script([])
    assert "root=/dev/vda init=/sbin/init fstype=ext4" in script
    assert 'exec switch_root /newroot "$init" "$@"' in script
    assert "poweroff -f" in script
    assert "usleep 10000" in script  # the root wait polls in 10 ms steps, bounded


def test_init_script_is_valid_shell() -> None:
    sh = shutil.which("sh")
    assert sh is not None
    subprocess.run([sh, "-n"], input=init_script(["virtio"]).encode(), check=True)


def test_module_names_that_could_inject_shell_are_refused() -> None:
    with pytest.raises(InvalidInput):
        init_script(["virtio; reboot"])


def test_base_layout_has_console_busybox_its_applets_and_an_executable_init() -> None:
    entries = {e.name: e for e in _base_entries(b"\x7fELF", "#!/bin/sh\n")}
    assert entries["dev/console"].rdev == (5, 1)
    assert entries["init"].mode == stat.S_IFREG | 0o755
    for applet in ("sh", "insmod", "switch_root", "mount", "poweroff", "usleep"):
        assert applet in APPLETS
        assert entries[f"bin/{applet}"].data == b"busybox"


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox-static")
def test_the_initramfs_takes_the_busybox_doctor_passes_and_refuses_a_dynamic_one(
    tmp_path: Path
) -> None:
    dynamic = tmp_path / "busybox"
    shutil.copy(shutil.which("ls") or "/bin/ls", dynamic)  # executable, but dynamically linked
    with pytest.raises(HostToolError, match="not a statically linked busybox"):
        find_busybox((dynamic,))
    with pytest.raises(HostToolError, match="no busybox found"):
        find_busybox((tmp_path / "absent",))
    assert probes.busybox_static_path() is not None  # what banger doctor checks
    assert find_busybox() == probes.busybox_static_path().read_bytes()  # type: ignore[union-attr]
    assert find_busybox((dynamic, Path("/bin/busybox"))) == Path("/bin/busybox").read_bytes()
