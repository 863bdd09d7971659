"""The shared file primitives: sparse-aware hashing and atomic writes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from banger.core.errors import Forbidden
from banger.host.files import atomic_write_text, log_tail, open_nofollow, reset_file, sha256_file


def test_sha256_of_a_sparse_file_equals_hashing_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    with open(path, "wb") as f:
        f.truncate(20 << 20)
        f.seek(5 << 20)
        f.write(b"data in the middle")
        f.seek((20 << 20) - 3)
        f.write(b"end")
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert sha256_file(path) == hashlib.sha256(b"").hexdigest()


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_reset_file_refuses_a_planted_symlink_and_leaves_its_target(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    link = tmp_path / "console.log"
    link.symlink_to(target)
    with pytest.raises(Forbidden, match="symbolic link"):
        reset_file(link)
    with pytest.raises(Forbidden, match="symbolic link"):
        open_nofollow(link, os.O_RDONLY)
    assert target.read_text() == "keep me"
    plain = tmp_path / "vmm.log"
    plain.write_text("old boot")
    reset_file(plain)
    assert plain.read_text() == ""


def test_qemu_launch_refuses_a_symlinked_log_before_starting_anything(tmp_path: Path) -> None:
    from banger.vmm.qemu import QemuBackend
    from tests.unit.test_qemu_vmspec import make_spec

    target = tmp_path / "etc-shadow-stand-in"
    target.write_text("root:secret\n")
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    (vm_dir / "console.log").symlink_to(target)
    spec = make_spec(console_log=vm_dir / "console.log", vmm_log=vm_dir / "vmm.log",
                     run_dir=tmp_path / "run")
    with pytest.raises(Forbidden, match="console.log: it is a symbolic link"):
        asyncio.run(QemuBackend(qemu_binary="/bin/false").launch(spec))
    assert target.read_text() == "root:secret\n"


def test_a_log_tail_through_a_planted_symlink_is_empty_and_reads_nothing(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:secret\n")
    link = tmp_path / "vmm.log"
    link.symlink_to(secret)
    assert log_tail(link) == ""
    plain = tmp_path / "console.log"
    plain.write_text("booted\n")
    assert log_tail(plain) == "booted"
