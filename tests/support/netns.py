"""Run a test body in a fresh network namespace, and read links and addresses there.

The body runs in a forked child that unshares a fresh network namespace (via
libc: os.unshare is 3.12+), so nothing touches the host's interfaces and the
namespace, with everything in it, vanishes when the child exits (subprocesses
the body starts share it: stop any daemon before the body returns).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import traceback
from collections.abc import Callable
from typing import Any

import pytest
from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000


def in_fresh_netns(body: Callable[[], Any]) -> Any:
    """Run ``body`` in a child process inside a new network namespace; return its result."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        os.close(rfd)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
            payload = pickle.dumps(("ok", body()))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
        with os.fdopen(wfd, "wb") as w:
            w.write(payload)
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "netns child died"
    kind, value = pickle.loads(data)
    if kind == "error":
        pytest.fail(f"in the network namespace:\n{value}", pytrace=False)
    return value


def links() -> dict[str, dict[str, Any]]:
    with IPRoute() as ipr:
        all_links = ipr.get_links()
        by_index = {link["index"]: link.get("ifname") for link in all_links}
        return {
            link.get("ifname"): {
                "kind": link.get(("linkinfo", "kind")),
                "master": by_index.get(link.get("master")),
                "up": bool(link["flags"] & 1),
                "address": link.get("address"),
                "alias": link.get("ifalias"),
                "owner": next(
                    (
                        v
                        for k, v in (link.get(("linkinfo", "data")) or {}).get("attrs", [])
                        if k == "IFLA_TUN_OWNER"
                    ),
                    None,
                ),  # fmt: skip
            }
            for link in all_links
        }


def addresses(name: str) -> list[str]:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        return [f"{a.get('address')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx, family=2)]
