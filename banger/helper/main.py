"""``bangerd-root --owner USER [--socket PATH]``: the root helper, in the foreground.

Logs one line per call to stderr (the journal under systemd). ``--state-dir`` and
``--runtime-dir`` name the owner's dirs that VMM markers must lie under; they
default to the owner's XDG defaults (``banger system install`` passes them).
``--jailer`` and ``--firecracker`` are the only binaries ``launch_jailed`` runs, and
``--run-dir`` (default ``/run/banger-root``) the helper's own dir, holding the jails'
chroot base ``jail/`` (fixed when the helper starts, never named by a request; it
and every dir above it must be root's and writable by root only).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from banger.core.errors import BangerError
from banger.helper.guard import Owner, helper_ops
from banger.helper.server import serve
from banger.host.helper_protocol import DEFAULT_SOCKET
from banger.host.jailer import (
    CHROOT_BASE,
    FIRECRACKER_BIN,
    HELPER_RUN_DIR,
    JAILER_BIN,
    JailConfig,
)
from banger.host.privileged import InProcessHostOps


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bangerd-root", description=__doc__.splitlines()[0])
    p.add_argument("--owner", required=True, help="the user whose bangerd may call this helper")
    p.add_argument("--socket", type=Path, default=Path(DEFAULT_SOCKET))
    p.add_argument("--state-dir", type=Path, help="the owner's banger state dir")
    p.add_argument("--runtime-dir", type=Path, help="the owner's banger runtime dir")
    p.add_argument("--jailer", type=Path, default=JAILER_BIN,
                   help="Firecracker's jailer (a root-owned file)")
    p.add_argument("--firecracker", type=Path, default=FIRECRACKER_BIN,
                   help="the firecracker binary the jailer runs")
    p.add_argument("--run-dir", type=Path, default=HELPER_RUN_DIR,
                   help="the helper's own dir (root's): jails' chroot base, loop registry")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if os.geteuid() != 0:
            raise BangerError("bangerd-root must run as root", hint="sudo bangerd-root ...")
        owner = Owner.lookup(args.owner, args.state_dir, args.runtime_dir)
        if not args.run_dir.is_absolute():
            raise BangerError(f"--run-dir {args.run_dir} is not absolute",
                              hint="pass an absolute path of root's, e.g. /run/banger-root")
        jail = JailConfig(args.jailer, args.firecracker, args.run_dir / CHROOT_BASE.name)
        serve(args.socket, owner, helper_ops(owner, InProcessHostOps(jail), args.run_dir))
    except BangerError as exc:
        print(f"bangerd-root: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""),
              file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
