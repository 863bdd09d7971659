"""``bangerd``: the per-user daemon's entry point."""

from __future__ import annotations

import asyncio
import os
import sys

import structlog

from banger.config import Settings, load_settings
from banger.core.errors import BangerError
from banger.daemon.logging import configure_logging
from banger.daemon.server import instance_lock, serve
from banger.host.private_dirs import ensure_private_dir


def _prepare() -> Settings:
    """Settings, then the three private dirs; the daemon never runs in the caller's directory."""
    os.chdir("/")
    settings = load_settings()
    paths = settings.paths
    for directory, setting in (
        (paths.state_dir, "BANGER_STATE_DIR"),
        (paths.cache_dir, "BANGER_CACHE_DIR"),
        (paths.runtime_dir, "XDG_RUNTIME_DIR or BANGER_RUNTIME_DIR"),
    ):
        ensure_private_dir(directory, setting=setting)
    return settings


def main() -> None:
    try:
        settings = _prepare()
    except BangerError as exc:
        print(f"bangerd: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        sys.exit(exc.exit_code)
    paths = settings.paths
    configure_logging(settings.log_level, paths.log_file)
    log = structlog.get_logger("banger.daemon")
    try:
        with instance_lock(paths.pidfile):
            asyncio.run(serve(settings))
    except BangerError as exc:
        log.error("bangerd cannot start", error=exc.message, hint=exc.hint)
        print(f"bangerd: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
