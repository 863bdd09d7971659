"""``bangerd``: the per-user daemon's entry point."""

from __future__ import annotations

import asyncio
import sys

import structlog

from banger.config import load_settings
from banger.core.errors import BangerError
from banger.daemon.logging import configure_logging
from banger.daemon.server import instance_lock, serve


def main() -> None:
    try:
        settings = load_settings()
    except BangerError as exc:
        print(f"bangerd: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    paths = settings.paths
    for directory in (paths.state_dir, paths.runtime_dir):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
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
