"""Routing the ``vm`` domain to bangerd through systemd-resolved (``resolvectl``).

Per link, on banger's bridge: its DNS server is the bridge address (where
bangerd answers on port 53), its only routing domain ``~vm``, and it is never
the default route, so resolved sends ``*.vm`` there and nothing else (without
``default-route false`` resolved could send any name to the bridge, and
bangerd would forward it back to the host's resolvers: a loop). ``revert``
drops all of it. resolved serves the host's network namespace only: a daemon
in another one (a test namespace) leaves it alone, since resolvectl names the
link by an index that means a different interface there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from banger.host.probes import have_tool
from banger.host.run import run

log = logging.getLogger("banger.host.resolved")

RESOLVED_RUN_DIR = Path("/run/systemd/resolve")
RESOLVED_UPSTREAM_CONF = RESOLVED_RUN_DIR / "resolv.conf"
RESOLVECTL_TIMEOUT_S = 10.0


def in_host_netns(proc: Path = Path("/proc")) -> bool:
    """False when this process provably runs in another network namespace than pid 1's.

    Reading pid 1's link needs privileges; when it is refused, the host's namespace is
    assumed (a daemon in a test namespace runs as root there, so it can read it).
    """
    try:
        return os.readlink(proc / "self/ns/net") == os.readlink(proc / "1/ns/net")
    except PermissionError:
        return True
    except OSError:
        return False


def why_not_available(run_dir: Path = RESOLVED_RUN_DIR, search_path: str | None = None,
                      proc: Path = Path("/proc")) -> str | None:
    """None when systemd-resolved can route ``vm`` here, else why not (one phrase)."""
    if not run_dir.is_dir():
        return f"systemd-resolved is not running ({run_dir} is absent)"
    if not have_tool("resolvectl", search_path):
        return "resolvectl is not installed"
    if not in_host_netns(proc):
        return "bangerd runs in its own network namespace, which resolved does not serve"
    return None


def route_argvs(bridge: str, resolver: str) -> list[list[str]]:
    """The commands that send ``*.vm`` (and only it) to ``resolver`` on link ``bridge``."""
    return [
        ["resolvectl", "dns", bridge, resolver],
        ["resolvectl", "domain", bridge, "~vm"],
        ["resolvectl", "default-route", bridge, "false"],
    ]


def revert_argv(bridge: str) -> list[str]:
    return ["resolvectl", "revert", bridge]


def route_vm_domain(bridge: str, resolver: str) -> None:
    """Apply ``route_argvs`` (blocking; ``CommandError`` when resolved refuses)."""
    for argv in route_argvs(bridge, resolver):
        run(argv, timeout=RESOLVECTL_TIMEOUT_S)


def revert(bridge: str) -> None:
    """Drop every resolved setting on link ``bridge`` (blocking)."""
    run(revert_argv(bridge), timeout=RESOLVECTL_TIMEOUT_S)
