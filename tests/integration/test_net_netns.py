"""Bridge, TAPs and the TAP pool made for real, each test inside its own network namespace.

The body runs in a forked child that unshares a fresh network namespace (via
libc: os.unshare is 3.12+), so nothing touches the host's interfaces and the
namespace, with everything in it, vanishes when the child exits.
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

from banger.core.errors import Conflict, InvalidInput
from banger.host import net

CLONE_NEWNET = 0x40000000

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a network namespace"),
]


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


def test_ensure_bridge_creates_an_up_bridge_with_its_address_and_is_idempotent() -> None:
    def body() -> tuple[dict[str, Any], list[str]]:
        net.ensure_bridge("bgbr0", "172.16.5.1/24")
        net.ensure_bridge("bgbr0", "172.16.5.1/24")
        return links()["bgbr0"], addresses("bgbr0")

    link, addrs = in_fresh_netns(body)
    assert link["kind"] == "bridge" and link["up"]
    assert addrs == ["172.16.5.1/24"]


def test_ensure_bridge_refuses_a_name_taken_by_another_kind_of_interface() -> None:
    def body() -> str:
        with IPRoute() as ipr:
            ipr.link("add", ifname="bgdummy", kind="tuntap", mode="tap")
        try:
            net.ensure_bridge("bgdummy", "172.16.5.1/24")
        except Conflict as exc:
            return str(exc)
        return "no error"

    assert "not a bridge" in in_fresh_netns(body)


def test_tap_is_created_on_the_bridge_up_and_owned_then_deleted_idempotently() -> None:
    def body() -> tuple[dict[str, Any], list[str], bool, bool, dict[str, Any]]:
        net.ensure_bridge("bgbr0", "172.16.5.1/24")
        net.create_tap("bgt00aa", "bgbr0", owner_uid=1000)
        tap = links()["bgt00aa"]
        ours = net.list_our_taps()
        first, second = net.delete_tap("bgt00aa"), net.delete_tap("bgt00aa")
        return tap, ours, first, second, links()

    tap, ours, first, second, after = in_fresh_netns(body)
    assert tap["kind"] == "tun" and tap["master"] == "bgbr0" and tap["owner"] == 1000
    assert ours == ["bgt00aa"]
    assert (first, second) == (True, False)
    assert "bgt00aa" not in after


def test_list_our_taps_ignores_taps_without_our_prefix() -> None:
    def body() -> list[str]:
        net.ensure_bridge("bgbr0", "172.16.5.1/24")
        with IPRoute() as ipr:
            ipr.link("add", ifname="tap0", kind="tuntap", mode="tap")
        net.create_tap("bgt01", "bgbr0")
        return net.list_our_taps()

    assert in_fresh_netns(body) == ["bgt01"]


def test_teardown_refuses_interfaces_that_are_not_ours() -> None:
    with pytest.raises(InvalidInput):
        net.delete_tap("eth0")


def test_pool_keeps_idle_taps_hands_one_out_refills_and_drains_to_nothing() -> None:
    def body() -> dict[str, Any]:
        net.ensure_bridge("bgbr0", "172.16.5.1/24")
        pool = net.TapPool("bgbr0", size=3)
        made = pool.fill()
        idle_before = pool.idle
        taken = pool.acquire()
        idle_after_take = len(pool.idle)
        refilled = pool.fill()
        on_bridge = {n: links()[n]["master"] for n in net.list_our_taps()}
        pool.release(taken)
        pool.drain()
        net.delete_bridge("bgbr0")
        return {
            "made": made, "idle_before": idle_before, "taken": taken,
            "idle_after_take": idle_after_take, "refilled": refilled, "on_bridge": on_bridge,
            "left": net.list_our_taps(), "bridge_left": "bgbr0" in links(),
        }  # fmt: skip

    r = in_fresh_netns(body)
    assert r["made"] == 3 and len(r["idle_before"]) == 3
    assert r["taken"] in r["idle_before"] and r["idle_after_take"] == 2
    assert r["refilled"] == 1
    assert len(r["on_bridge"]) == 4 and set(r["on_bridge"].values()) == {"bgbr0"}
    assert r["left"] == [] and r["bridge_left"] is False


def test_pool_makes_a_tap_on_the_spot_when_empty() -> None:
    def body() -> tuple[str, list[str]]:
        net.ensure_bridge("bgbr0", "172.16.5.1/24")
        pool = net.TapPool("bgbr0", size=0)
        return pool.acquire(), net.list_our_taps()

    name, ours = in_fresh_netns(body)
    assert ours == [name]


def test_delete_bridge_is_idempotent() -> None:
    def body() -> tuple[bool, bool]:
        net.ensure_bridge("bgbr0", "172.16.5.1/24")
        return net.delete_bridge("bgbr0"), net.delete_bridge("bgbr0")

    assert in_fresh_netns(body) == (True, False)


def test_the_host_namespace_is_untouched_by_these_tests() -> None:
    assert not [n for n in links() if n.startswith(("bgt", "bgbr"))]
