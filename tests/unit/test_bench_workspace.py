"""The workspace benchmark's own logic: patch counting, verdicts, the generated files."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from bench.report import verdicts
from bench.workspace import (
    GEN_FILE_BYTES,
    GEN_SEED,
    _source_lines,
    edited_paths,
    generated_file,
    generated_paths,
    patch_files,
)


def _git(top: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(top), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True, capture_output=True,
    ).stdout  # fmt: skip


def test_patch_files_counts_headers_not_content_that_looks_like_one(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    for name in ("a.py", "b.py", "c.py"):
        (tmp_path / name).write_text("x\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "one")
    (tmp_path / "a.py").write_text("x\ndiff --git a/c.py b/c.py\n")  # a decoy header
    (tmp_path / "b.py").write_bytes(b"\x00\x01binary\n")
    patch = _git(tmp_path, "diff", "--binary", "--full-index")
    assert sorted(patch_files(patch)) == ["a.py", "b.py"]


def _doc(delta: float, prepare: float, export: float) -> dict[str, object]:
    return {"workspace": {
        "vm_run": {"self": {"delta_p50_s": delta}},
        "prepare": {"wall_s": {"p50": prepare}},
        "export": {"wall_s": {"p50": export}},
    }}  # fmt: skip


def test_workspace_verdicts_pass_at_the_target_and_miss_above() -> None:
    at = verdicts(_doc(0.5, 3.0, 1.0))
    above = verdicts(_doc(0.51, 3.01, 1.01))
    keys = ("ws_self_delta", "ws_prepare_p50", "ws_export_p50")
    assert [at[k]["verdict"] for k in keys] == ["PASS"] * 3
    assert [above[k]["verdict"] for k in keys] == ["MISS"] * 3
    assert verdicts({"workspace": {}}) == {}  # a section that stopped early: no verdict


def test_generated_files_are_deterministic_and_about_the_size_asked() -> None:
    def first_three() -> list[bytes]:
        rng = random.Random(GEN_SEED)
        pool = _source_lines(rng)
        return [generated_file(rng, pool) for _ in range(3)]

    files = first_three()
    assert files == first_three()
    assert all(GEN_FILE_BYTES <= len(f) < GEN_FILE_BYTES + 200 for f in files)
    assert len(set(files)) == 3
    assert set(edited_paths()) <= set(generated_paths())
    assert len(set(edited_paths())) == 100
