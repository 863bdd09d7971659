"""Fetch and build everything the test suite needs from the network, once.

    .venv/bin/python -m tests.support.prepare

Run it before the real-VM tests, which run inside a network namespace and only
reuse ``~/.cache/banger-test`` (they error, naming this command, when it is empty).
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    from tests.support.image import ensure_test_image
    from tests.support.kernel import ensure_test_kernel

    for what, ensure in (("kernel", ensure_test_kernel), ("image", ensure_test_image)):
        started = time.monotonic()
        print(f"prepare: test {what}...", flush=True)
        path = ensure()
        print(f"prepare: test {what} ready in {time.monotonic() - started:.1f}s: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
