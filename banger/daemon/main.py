"""``bangerd``: the per-user daemon's entry point."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import structlog

from banger.config import config_file, load_settings
from banger.core.errors import BangerError, InvalidInput
from banger.daemon.logging import configure_logging
from banger.daemon.server import instance_lock, serve


def writable_state_dir(path: Path) -> None:
    """Create ``state_dir`` (0700) and make sure we can write to it, or one clear line."""
    where = f"state_dir in {config_file()} (or BANGER_STATE_DIR)"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(
            f"cannot create the state directory {path}: {exc.strerror}", hint=f"set {where}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InvalidInput(
            f"the state directory {path} is not writable by uid {os.getuid()}",
            hint=f"fix its owner or mode, or its mount (findmnt -T {path}), or set {where}",
        )


def main() -> None:
    try:
        settings = load_settings()
        writable_state_dir(settings.paths.state_dir)
    except BangerError as exc:
        print(f"bangerd: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        sys.exit(exc.exit_code)
    paths = settings.paths
    paths.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
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
