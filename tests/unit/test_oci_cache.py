"""The blob cache: prune accounting, what it removes, and its lock against pulls."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from banger.core.errors import Conflict
from banger.images.oci import blob_cache_lock, blob_dir, prune_blob_cache


def make_blob(cache: Path, hexchar: str, size: int) -> str:
    digest_hex = hexchar * 64
    path = blob_dir(cache) / "sha256" / digest_hex
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return f"sha256:{digest_hex}"


def test_prune_of_a_cache_that_never_existed_frees_nothing(tmp_path: Path) -> None:
    assert prune_blob_cache(tmp_path / "none", dry_run=False) == (0, 0)


def test_dry_run_reports_bytes_and_blobs_and_deletes_nothing(tmp_path: Path) -> None:
    make_blob(tmp_path, "a", 100)
    make_blob(tmp_path, "b", 20)
    assert prune_blob_cache(tmp_path, dry_run=True) == (120, 2)
    assert len(list((blob_dir(tmp_path) / "sha256").iterdir())) == 2


def test_prune_removes_every_blob_and_interrupted_pull_leftovers(tmp_path: Path) -> None:
    make_blob(tmp_path, "a", 100)
    make_blob(tmp_path, "b", 20)
    stale = tmp_path / "oci" / "tmp-layout-123"
    stale.mkdir()
    assert prune_blob_cache(tmp_path, dry_run=False) == (120, 2)
    assert list((blob_dir(tmp_path) / "sha256").iterdir()) == []
    assert not stale.exists()


def test_prune_waits_for_a_running_pull_and_gives_up_with_conflict(tmp_path: Path) -> None:
    make_blob(tmp_path, "a", 10)
    with blob_cache_lock(tmp_path):  # what a pull holds while it copies and flattens
        with pytest.raises(Conflict, match="pull is running"):
            prune_blob_cache(tmp_path, dry_run=False, wait_s=0.2)
        assert prune_blob_cache(tmp_path, dry_run=True) == (10, 1)
    assert prune_blob_cache(tmp_path, dry_run=False) == (10, 1)


def test_prune_proceeds_once_the_pull_releases_the_lock(tmp_path: Path) -> None:
    make_blob(tmp_path, "a", 10)
    held, release = threading.Event(), threading.Event()

    def pull() -> None:
        with blob_cache_lock(tmp_path):
            held.set()
            release.wait(5)

    t = threading.Thread(target=pull)
    t.start()
    held.wait(5)
    threading.Timer(0.3, release.set).start()
    assert prune_blob_cache(tmp_path, dry_run=False, wait_s=5) == (10, 1)
    t.join()


def test_pulls_share_the_lock(tmp_path: Path) -> None:
    with blob_cache_lock(tmp_path), blob_cache_lock(tmp_path, wait_s=0.1):
        pass
