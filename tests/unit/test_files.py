"""The shared file primitives: sparse-aware hashing and atomic writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from banger.host.files import atomic_write_text, sha256_file


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
