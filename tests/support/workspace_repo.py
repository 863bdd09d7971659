"""A host repository with every kind of file and change, for the workspace tests.

Tracked, untracked, ignored, binary, executable, symlinked (inside the repository
and to a secret file outside it) and oddly named files (a space, a newline,
non-UTF-8 bytes), plus an uncommitted edit, a deletion and staged-only changes.
``snapshot`` is what a tree holds, to compare a guest's tree with a patched host copy.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

IDENTITY = ("-c", "user.name=Test", "-c", "user.email=test@example.invalid",
            "-c", "protocol.file.allow=always", "-c", "init.defaultBranch=main")
NOT_SHIPPED = {b"untracked.txt", b"ignored.log", b"ignored/x.txt", b"ignored"}


def git(cwd: Path, *args: str | bytes, input: bytes | None = None) -> bytes:
    return subprocess.run(["git", "-C", cwd, *IDENTITY, *args], input=input, check=True,
                          capture_output=True).stdout


def commit_repo(top: Path, files: dict[str, str]) -> str:
    """A new repository at ``top`` (branch main) with ``files`` in one commit; its HEAD."""
    top.mkdir(parents=True)
    for name, text in files.items():
        (top / name).write_text(text)
    git(top, "init", "-q", "-b", "main")
    git(top, "add", "-A")
    git(top, "commit", "-qm", "one")
    return git(top, "rev-parse", "HEAD").decode().strip()


Snapshot = dict[bytes, tuple[object, ...]]


def snapshot(top: Path, *, dirs: bool = False, skip: frozenset[bytes] = frozenset()) -> Snapshot:
    """Every file (bytes, exec bit), symlink (target) and, with ``dirs``, directory (mode)."""
    root = os.fsencode(top)
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.relpath(os.path.join(dirpath, d), root)
                       not in skip | {b".git"}]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel in skip:
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                if dirs:
                    out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", f.read(), bool(st.st_mode & 0o100))
    return out


@dataclass
class Repo:
    top: Path
    secret: bytes  # the content of a file outside the repo a committed symlink points at
    untracked: bytes  # the content of an untracked file

    def head(self) -> str:
        return git(self.top, "rev-parse", "HEAD").decode().strip()


def make_repo(tmp: Path) -> Repo:
    """A repository with every kind of file, and every kind of uncommitted change."""
    secret_dir = tmp / "home" / ".ssh"
    secret_dir.mkdir(parents=True)
    secret = f"SECRET-{secrets.token_hex(16)}".encode()
    (secret_dir / "id_ed25519").write_bytes(secret + b"\n")
    (secret_dir / "id_ed25519").chmod(0o600)
    top = tmp / "repo"
    top.mkdir()
    git(top, "init", "-q")
    files = {
        "tracked.txt": b"v1\n", "gone.txt": b"to be deleted\n", "staged.txt": b"s1\n",
        "bin.dat": bytes(range(256)) * 8, "run.sh": b"#!/bin/sh\necho hi\n",
        "with space.txt": b"space\n", "new\nline.txt": b"newline\n",
        "dir/nested.txt": b"nested file, long enough to be found again when renamed\n" * 4,
        "dir/deep/er.txt": b"deeper\n", ".gitignore": b"*.log\nignored/\n",
    }
    for name, data in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(data)
    (top / os.fsdecode(b"caf\xff.txt")).write_bytes(b"latin-1 name\n")
    (top / "run.sh").chmod(0o755)
    (top / "link_in").symlink_to("tracked.txt")
    (top / "link_dir").symlink_to("dir")
    (top / "link_out").symlink_to(secret_dir / "id_ed25519")
    git(top, "add", "-A")
    git(top, "commit", "-qm", "first")
    (top / "tracked.txt").write_bytes(b"v1 edited on the host\n")  # an uncommitted edit
    (top / "gone.txt").unlink()  # a deletion, not staged
    (top / "staged.txt").write_bytes(b"s2 staged\n")
    (top / "staged_new.txt").write_bytes(b"added to the index only\n")
    git(top, "add", "staged.txt", "staged_new.txt")
    untracked = f"UNTRACKED-{secrets.token_hex(8)}".encode()
    (top / "untracked.txt").write_bytes(untracked)
    (top / "ignored.log").write_bytes(b"ignored\n")
    (top / "ignored").mkdir()
    (top / "ignored" / "x.txt").write_bytes(b"ignored too\n")
    return Repo(top, secret, untracked)


def apply_on(copy: Path, patch: bytes) -> None:
    """``git apply --check`` then ``git apply`` in ``copy``; git's word if it refuses."""
    for check in (["--check"], []):
        done = subprocess.run(["git", "-C", copy, "apply", *check, "-"], input=patch,
                              capture_output=True)
        assert done.returncode == 0, done.stderr.decode(errors="replace")


def edit_like_an_agent(tree: Path) -> None:
    """Edit, add, delete, chmod, rename, binary change, link retarget, odd new names."""
    with open(tree / "tracked.txt", "ab") as f:
        f.write(b"guest line\n")
    (tree / "added by guest.txt").write_bytes(b"new\n")
    (tree / os.fsdecode(b"g\xfe\nname")).write_bytes(b"odd name\n")
    (tree / "run.sh").unlink()
    (tree / "with space.txt").chmod(0o755)
    (tree / "dir" / "nested.txt").rename(tree / "dir" / "renamed.txt")
    data = bytearray((tree / "bin.dat").read_bytes())
    data[100] ^= 0xFF
    (tree / "bin.dat").write_bytes(bytes(data))
    (tree / "new.bin").write_bytes(bytes(range(255, -1, -1)) + b"\0\0")
    (tree / "link_in").unlink()
    (tree / "link_in").symlink_to("staged.txt")
    (tree / "new_link").symlink_to("../somewhere/else")
    (tree / "link_out").unlink()
    (tree / "newdir").mkdir()
    (tree / "newdir" / "f").write_bytes(b"f\n")
