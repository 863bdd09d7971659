"""Version, commit and build time of this banger.

The commit is read from the source checkout's ``.git`` when there is one (an
editable install), else from ``_build_info.json`` written at install time.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from banger import __version__

API_VERSION = "v1"
_PACKAGE_DIR = Path(__file__).resolve().parent
_BUILD_INFO = _PACKAGE_DIR / "_build_info.json"


@dataclass(frozen=True)
class VersionInfo:
    version: str
    commit: str
    build_time: str

    @property
    def short_commit(self) -> str:
        return self.commit[:12]

    def one_line(self) -> str:
        return f"banger {self.version} (commit {self.short_commit}, built {self.build_time})"


def _git_head(repo: Path) -> str | None:
    git_dir = repo / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        ref_file = git_dir / ref
        if ref_file.exists():
            return ref_file.read_text().strip()
        for line in (git_dir / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


@cache
def version_info() -> VersionInfo:
    info: dict[str, str] = {}
    try:
        info = json.loads(_BUILD_INFO.read_text())
    except (OSError, ValueError):
        pass
    commit = _git_head(_PACKAGE_DIR.parent) or info.get("commit") or "unknown"
    return VersionInfo(__version__, commit, info.get("build_time", "unknown"))


def write_build_info() -> None:
    """Record the commit and the current time; run by ``make setup``."""
    commit = _git_head(_PACKAGE_DIR.parent) or "unknown"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _BUILD_INFO.write_text(json.dumps({"commit": commit, "build_time": now}) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write_build_info()
