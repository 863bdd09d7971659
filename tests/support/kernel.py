"""The test kernel: ``debian-cloud`` pulled once into ``~/.cache/banger-test/kernels``.

Callable before the tests run, with network::

    .venv/bin/python -c "from tests.support.kernel import ensure_test_kernel as e; print(e())"

and from tests, where without network it reuses the cache; a fetch that fails
is an error (``tests/support/hostcheck.py``), never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

from banger.core.errors import BangerError
from tests.support.hostcheck import artifact_failed

TEST_CACHE = Path(os.environ.get("BANGER_TEST_CACHE", Path.home() / ".cache" / "banger-test"))
KERNELS_DIR = TEST_CACHE / "kernels"
DEBS_DIR = TEST_CACHE / "debs"
TEST_KERNEL = "debian-cloud"


def ensure_test_kernel() -> Path:
    """The directory of the cached test kernel (vmlinuz, vmlinux, initrd.img, manifest.json)."""
    from banger.kernels.importer import pull_kernel

    done = KERNELS_DIR / TEST_KERNEL / "manifest.json"
    if done.is_file():
        return done.parent
    try:
        return pull_kernel(TEST_KERNEL, KERNELS_DIR, DEBS_DIR).path
    except (BangerError, OSError) as exc:
        artifact_failed(f"test kernel {TEST_KERNEL}", exc)


def ensure_kernel_deb() -> Path:
    """The cached ``.deb`` of the test kernel; apt is asked only when none is cached."""
    from banger.kernels.catalog import catalog_entry, fetch_package

    cached = sorted(DEBS_DIR.glob("linux-image-*.deb"))
    if cached:
        return cached[-1]
    try:
        return fetch_package(catalog_entry(TEST_KERNEL), DEBS_DIR)
    except (BangerError, OSError) as exc:
        artifact_failed("the test kernel .deb", exc)
