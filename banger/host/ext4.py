"""ext4 images through e2fsprogs, without mounting and without root.

``mkfs.ext4 -d`` fills a new image from a directory; ``debugfs -w -f -``
applies batched metadata edits (ownership, modes, files) to an image the
daemon user owns.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from banger.core.errors import InvalidInput
from banger.host.run import require_tool, run

# Lazy init keeps mkfs of a multi-GiB image sub-second.
LAZY_INIT = "lazy_itable_init=1,lazy_journal_init=1"


def make_ext4(
    image: Path,
    size_bytes: int,
    *,
    source_dir: Path | None = None,
    label: str | None = None,
    root_owner: tuple[int, int] = (0, 0),
) -> None:
    """Create a sparse ext4 image of ``size_bytes``, optionally filled from ``source_dir``."""
    mkfs = require_tool("mkfs.ext4", "e2fsprogs")
    image.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.truncate(size_bytes)
    argv = [mkfs, "-F", "-q", "-E", f"{LAZY_INIT},root_owner={root_owner[0]}:{root_owner[1]}"]
    if label:
        argv += ["-L", label]
    if source_dir is not None:
        argv += ["-d", os.fspath(source_dir)]
    argv.append(os.fspath(image))
    try:
        run(argv, timeout=600)
    except BaseException:
        image.unlink(missing_ok=True)
        raise


def debugfs_quote(path: str) -> str:
    """Quote ``path`` for a debugfs script line, refusing what debugfs cannot encode."""
    if any(c in path for c in '"\\\n\r\t\0') or not path.isprintable():
        raise InvalidInput(
            f"path {path!r} cannot be encoded for debugfs",
            hint="rename the entry: quotes, backslashes and control characters are not supported",
        )
    return f'"{path}"' if " " in path else path


def debugfs_batch(
    image: Path, commands: Iterable[str], *, timeout: float = 600, writable: bool = True
) -> str:
    """Run debugfs ``commands`` (one per line, already quoted) on ``image`` in one run."""
    debugfs = require_tool("debugfs", "e2fsprogs")
    script = "".join(f"{c}\n" for c in commands).encode()
    argv = [debugfs, *(["-w"] if writable else []), "-f", "-", os.fspath(image)]
    proc = run(argv, input=script, timeout=timeout)
    return proc.stdout.decode("utf-8", "replace")


def check_ext4(image: Path, *, what: str = "ext4 image") -> None:
    """Refuse ``image`` unless ``e2fsck -fn`` finds it clean (read-only: nothing is fixed)."""
    e2fsck = require_tool("e2fsck", "e2fsprogs")
    proc = run([e2fsck, "-fn", os.fspath(image)], timeout=1800, check=False)
    if proc.returncode == 0:
        return
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace").splitlines()
    problems = [
        line.strip() for line in out
        if line.strip() and not line.startswith(("Pass ", "e2fsck ", os.fspath(image)))
    ]
    raise InvalidInput(
        f"corrupt {what}: {problems[0] if problems else f'e2fsck exit status {proc.returncode}'}",
        hint="repair it with e2fsck -f (on a copy), or export the image again",
    )


def resize_ext4(image: Path, size_bytes: int) -> None:
    """Grow ``image`` to ``size_bytes`` (file and filesystem)."""
    e2fsck = require_tool("e2fsck", "e2fsprogs")
    resize2fs = require_tool("resize2fs", "e2fsprogs")
    with open(image, "r+b") as f:
        f.truncate(size_bytes)
    run([e2fsck, "-f", "-p", os.fspath(image)], timeout=600)
    run([resize2fs, os.fspath(image)], timeout=600)
