"""``bangerd``: the per-user daemon's entry point."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import structlog

from banger.config import Settings, config_file, load_settings
from banger.core.errors import BangerError, InvalidInput
from banger.core.signals import ALLOWED_SIGNALS
from banger.daemon.logging import configure_logging
from banger.daemon.server import instance_lock, serve
from banger.host.private_dirs import ensure_private_dir
from banger.host.proc import restore_ignored


def _private_dir(path: Path, setting: str) -> None:
    """Create and prove one of our dirs; a dir we cannot even create is one clear line."""
    try:
        ensure_private_dir(path, setting=setting)
    except OSError as exc:
        raise InvalidInput(
            f"cannot create {path}: {exc.strerror}", hint=f"set {setting} to a directory you own"
        ) from None


def writable_state_dir(path: Path) -> None:
    """Our state dir must also be writable (a read-only mount, a 0500 dir), or one clear line."""
    if not os.access(path, os.W_OK | os.X_OK):
        where = f"state_dir in {config_file()} (or BANGER_STATE_DIR)"
        raise InvalidInput(
            f"the state directory {path} is not writable by uid {os.getuid()}",
            hint=f"fix its owner or mode, or its mount (findmnt -T {path}), or set {where}",
        )


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
        _private_dir(directory, setting)
    writable_state_dir(paths.state_dir)
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
    if restored := restore_ignored(ALLOWED_SIGNALS):  # the VMMs we start would inherit them
        log.info("signals inherited ignored set back to their defaults",
                 signals=[sig.name for sig in restored])
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
