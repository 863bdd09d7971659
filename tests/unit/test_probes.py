"""Host capability probes answer from fake /sys, /dev and PATH trees."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from banger.host import probes
from banger.host.probes import KvmStatus


def fake_host(
    tmp_path: Path, modules: tuple[str, ...] = (), kvm: str | None = "file"
) -> tuple[Path, Path]:
    """A fake /sys with the given modules and a fake /dev whose kvm is a file, dir or absent."""
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    for mod in modules:
        (sys_root / "module" / mod).mkdir(parents=True)
    dev_root.mkdir()
    if kvm == "file":
        (dev_root / "kvm").write_bytes(b"")
    elif kvm == "dir":  # exists but cannot be opened read-write (EISDIR), like EACCES would
        (dev_root / "kvm").mkdir()
    return sys_root, dev_root


def stub(directory: Path, name: str, script: str, executable: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755 if executable else 0o644)
    return path


# ---------------------------------------------------------------- KVM


@pytest.mark.parametrize("vendor", ["kvm_intel", "kvm_amd"])
def test_vendor_module_and_openable_device_is_usable(tmp_path: Path, vendor: str) -> None:
    sys_root, dev_root = fake_host(tmp_path, ("kvm", vendor))
    assert probes.kvm_status(sys_root, dev_root) is KvmStatus.USABLE
    assert probes.have_usable_kvm(sys_root, dev_root)


def test_pvm_module_without_vendor_module_is_a_pvm_host(tmp_path: Path) -> None:
    sys_root, dev_root = fake_host(tmp_path, ("kvm", "kvm_pvm"))
    assert probes.kvm_status(sys_root, dev_root) is KvmStatus.PVM_HOST
    assert not probes.have_usable_kvm(sys_root, dev_root)


def test_vendor_module_wins_over_pvm(tmp_path: Path) -> None:
    sys_root, dev_root = fake_host(tmp_path, ("kvm", "kvm_pvm", "kvm_intel"))
    assert probes.kvm_status(sys_root, dev_root) is KvmStatus.USABLE


def test_device_that_cannot_be_opened_read_write_is_no_access(tmp_path: Path) -> None:
    sys_root, dev_root = fake_host(tmp_path, ("kvm", "kvm_amd"), kvm="dir")
    assert probes.kvm_status(sys_root, dev_root) is KvmStatus.NO_ACCESS
    assert not probes.have_usable_kvm(sys_root, dev_root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any file")
def test_device_without_permission_is_no_access(tmp_path: Path) -> None:
    sys_root, dev_root = fake_host(tmp_path, ("kvm", "kvm_intel"))
    (dev_root / "kvm").chmod(0o000)
    assert probes.kvm_status(sys_root, dev_root) is KvmStatus.NO_ACCESS


def test_missing_device_is_absent_even_with_modules(tmp_path: Path) -> None:
    sys_root, dev_root = fake_host(tmp_path, ("kvm", "kvm_intel"), kvm=None)
    assert probes.kvm_status(sys_root, dev_root) is KvmStatus.ABSENT


def test_dangling_device_link_is_absent(tmp_path: Path) -> None:
    sys_root, dev_root = fake_host(tmp_path, ("kvm", "kvm_intel"), kvm=None)
    (dev_root / "kvm").symlink_to(tmp_path / "nowhere")
    assert probes.kvm_status(sys_root, dev_root) is KvmStatus.ABSENT


# ---------------------------------------------------------------- tools on PATH


def test_have_tool_finds_only_executables_on_the_given_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "skopeo", "exit 0")
    stub(bin_dir, "notexec", "exit 0", executable=False)
    assert probes.have_tool("skopeo", str(bin_dir))
    assert probes.find_tool("skopeo", str(bin_dir)) == bin_dir / "skopeo"
    assert not probes.have_tool("notexec", str(bin_dir))
    assert not probes.have_tool("mmdebstrap", str(bin_dir))


def test_qemu_binary_and_version_come_from_the_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    assert probes.qemu_binary(str(bin_dir)) is None
    stub(bin_dir, "qemu-system-x86_64", "echo 'QEMU emulator version 8.2.2 (Debian 1:8.2.2)'")
    found = probes.qemu_binary(str(bin_dir))
    assert found == bin_dir / "qemu-system-x86_64"
    assert probes.qemu_version(found) == (8, 2, 2)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"
         "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n", (7, 2, 22)),
        ("QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2ubuntu6.15)\n", (6, 2, 0)),
        ("QEMU emulator version 9.0.50 (v9.0.0-1388-g80e8f06021-dirty)\n", (9, 0, 50)),
        ("QEMU emulator version 2.11.1(Debian 1:2.11+dfsg-1ubuntu7.42)\n", (2, 11, 1)),
        ("QEMU emulator version 4.2\n", (4, 2, 0)),
        ("qemu-system-x86_64: unknown option\n", None),
        ("", None),
    ],
)  # fmt: skip
def test_qemu_version_parser(text: str, expected: tuple[int, int, int] | None) -> None:
    assert probes.parse_qemu_version(text) == expected


# ---------------------------------------------------------------- firecracker


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Firecracker v1.7.0\n", (1, 7, 0)),
        ("Firecracker v1.14.1\n\n2026-02-23T21:05:34.876998360 [anonymous-instance:main] "
         "Firecracker exiting successfully. exit_code=0\n", (1, 14, 1)),
        ("Firecracker v1.4.1\n\n2023-07-06T12:00:00.000000000 [anonymous-instance:main:INFO:"
         "src/firecracker/src/main.rs:581] Firecracker exiting successfully. exit_code=0\n",
         (1, 4, 1)),
        ("Firecracker v0.25.2\n\nSupported snapshot data format versions: "
         "v0.23.0, v0.24.0, v0.25.0\n", (0, 25, 2)),
        ("Firecracker v1.8.0-dev\n", (1, 8, 0)),
        ("Firecracker v1.16.1\r\n", (1, 16, 1)),
        ("Firecracker v10.20.300\n", (10, 20, 300)),
        ("Jailer v1.7.0\n", None),
        ("Firecracker v1.7\n", None),
        ("Firecracker 1.7.0\n", None),
        ("Firecracker v1.7.0.1\n", None),
        ("firecracker: error while loading shared libraries\n", None),
        ("", None),
    ],
)  # fmt: skip
def test_firecracker_version_parser(text: str, expected: tuple[int, int, int] | None) -> None:
    assert probes.parse_firecracker_version(text) == expected


def test_firecracker_version_runs_the_binary(tmp_path: Path) -> None:
    fc = stub(tmp_path, "firecracker", "echo 'Firecracker v1.7.0'; echo; echo 'exiting' >&2")
    assert probes.firecracker_version(fc) == (1, 7, 0)


def test_firecracker_that_fails_or_cannot_run_has_no_version(tmp_path: Path) -> None:
    failing = stub(tmp_path / "a", "firecracker", "echo 'Firecracker v1.7.0'; exit 1")
    not_exec = stub(tmp_path / "b", "firecracker", "echo 'Firecracker v1.7.0'", executable=False)
    assert probes.firecracker_version(failing) is None
    assert probes.firecracker_version(not_exec) is None
    assert probes.firecracker_version(tmp_path / "missing") is None


# ---------------------------------------------------------------- ELF / busybox


def make_elf(
    *,
    is64: bool = True,
    little: bool = True,
    e_type: int = 2,
    ptypes: tuple[int, ...] = (1, 1),
    xnum: bool = False,
) -> bytes:
    """A minimal ELF image: header, then program headers, then one section header."""
    end = "<" if little else ">"
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    phoff = ehsize
    shoff = phoff + phentsize * len(ptypes)
    phnum = 0xFFFF if xnum else len(ptypes)
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if little else 2, 1]) + bytes(9)
    addr = "Q" if is64 else "I"
    header = ident + struct.pack(
        end + "HHI" + addr * 3 + "IHHHHHH",
        e_type, 62, 1, 0x401000, phoff, shoff, 0, ehsize, phentsize, phnum, shentsize, 1, 0,
    )  # fmt: skip
    assert len(header) == ehsize
    phdrs = b"".join(struct.pack(end + "I", t) + bytes(phentsize - 4) for t in ptypes)
    sh_info_at = 44 if is64 else 28
    shdr = bytearray(shentsize)
    struct.pack_into(end + "I", shdr, sh_info_at, len(ptypes))
    return header + phdrs + bytes(shdr)


def write(path: Path, data: bytes, mode: int = 0o755) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("is64", [True, False])
@pytest.mark.parametrize("little", [True, False])
def test_elf_without_interpreter_is_static(tmp_path: Path, is64: bool, little: bool) -> None:
    static = write(tmp_path / "s", make_elf(is64=is64, little=little, ptypes=(1, 1, 4)))
    dynamic = write(tmp_path / "d", make_elf(is64=is64, little=little, ptypes=(6, 3, 1, 2)))
    assert probes.is_static_elf(static)
    assert not probes.is_static_elf(dynamic)


def test_static_pie_counts_as_static(tmp_path: Path) -> None:
    assert probes.is_static_elf(write(tmp_path / "s", make_elf(e_type=3, ptypes=(6, 1, 2))))


def test_extended_program_header_count_is_read_from_section_zero(tmp_path: Path) -> None:
    dynamic = write(tmp_path / "d", make_elf(ptypes=(1, 3), xnum=True))
    static = write(tmp_path / "s", make_elf(ptypes=(1, 1), xnum=True))
    assert not probes.is_static_elf(dynamic)
    assert probes.is_static_elf(static)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"#!/bin/sh\necho busybox\n",
        b"\x7fELF",
        make_elf(e_type=1),  # relocatable object, not an executable
        make_elf()[:100],  # truncated program headers
        b"\x7fELF\x03" + make_elf()[5:],  # bad class
    ],
)
def test_non_executables_and_garbage_are_not_static_elf(tmp_path: Path, data: bytes) -> None:
    assert not probes.is_static_elf(write(tmp_path / "x", data))


def test_busybox_static_path_picks_the_first_static_executable(tmp_path: Path) -> None:
    dynamic = write(tmp_path / "dyn", make_elf(ptypes=(3, 1)))
    unexec = write(tmp_path / "unexec", make_elf(), mode=0o644)
    static = write(tmp_path / "static", make_elf())
    assert probes.busybox_static_path((tmp_path / "none", dynamic, unexec)) is None
    assert probes.busybox_static_path((tmp_path / "none", dynamic, unexec, static)) == static


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="no busybox on this host")
def test_real_busybox_is_judged_by_its_elf_headers() -> None:
    with open("/bin/busybox", "rb") as f:
        has_interp = b"ld-linux" in f.read(4096)
    assert probes.is_static_elf(Path("/bin/busybox")) is not has_interp


def test_real_dynamic_executable_is_not_static() -> None:
    sh = Path(os.path.realpath("/bin/sh"))
    with open(sh, "rb") as f:
        if b"ld-linux" not in f.read(4096):
            pytest.skip("/bin/sh is static on this host")
    assert not probes.is_static_elf(sh)


# ---------------------------------------------------------------- Python


@pytest.mark.parametrize(
    "version, ok",
    [
        ((3, 11, 0), True),
        ((3, 12, 4), True),
        ((4, 0, 0), True),
        ((3, 10, 14), False),
        ((2, 7), False),
    ],
)
def test_python_ok_needs_3_11(version: tuple[int, ...], ok: bool) -> None:
    assert probes.python_ok(version) is ok


def test_running_python_is_ok() -> None:
    assert probes.python_ok()
