"""One bridge, one daemon, one pinned MAC: made for real, each test in its own network namespace.

A bridge without an address of its own takes the lowest MAC of its ports, so the
TAP pool churning would move the gateway's MAC under running guests; and two
daemons on one bridge reap each other's TAPs and hand out the same addresses.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from banger.core.errors import Conflict
from banger.host import net
from banger.host.privileged import host_ops_for
from tests.conftest import BangerEnv
from tests.support.netns import addresses, in_fresh_netns, links

OWNER = net.owner_alias(0, "/test/state")
OPS = host_ops_for()  # the daemon's seam: validated, in-process
OTHER = net.owner_alias(1234, "/home/someone/state")
CIDR = "172.30.5.1/24"
LOW_MAC = "00:00:00:00:00:01"  # lower than any bridge MAC: a bridge without its own takes it

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a network namespace"),
]


def _bridge_without_owner(name: str, cidr: str | None = None, alias: str | None = None) -> None:
    """A bridge as an older banger (or someone else) made it: no pinned MAC, maybe no alias."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        idx = ipr.link_lookup(ifname=name)[0]
        if alias:
            ipr.link("set", index=idx, ifalias=alias)
        if cidr:
            ip, prefix = cidr.split("/")
            ipr.addr("add", index=idx, address=ip, prefixlen=int(prefix))


def _tap_with_mac(bridge: str, mac: str) -> str:
    name = net.new_tap_name()
    net.create_tap(name, bridge)
    with IPRoute() as ipr:
        ipr.link("set", ifname=name, address=mac)
    return name


def _refusal(name: str, cidr: str, owner: str = OWNER) -> Conflict:
    try:
        net.claim_bridge(name, cidr, owner)
    except Conflict as exc:
        return exc
    raise AssertionError(f"claim of {name} was not refused")


def test_bridge_mac_stays_pinned_across_20_tap_pool_refills_and_drains() -> None:
    def body() -> dict[str, Any]:
        net.claim_bridge("bgbr0", CIDR, OWNER)
        pool = net.TapPool(OPS, "bgbr0", size=3)
        seen = {links()["bgbr0"]["address"]}
        for _ in range(20):
            pool.fill()
            low = _tap_with_mac("bgbr0", LOW_MAC)
            rnd = _tap_with_mac("bgbr0", "02:" + ":".join(secrets.token_hex(1) for _ in range(5)))
            seen.add(links()["bgbr0"]["address"])
            OPS.delete_tap(pool.acquire())
            net.delete_tap(low)
            net.delete_tap(rnd)
            pool.drain()
            seen.add(links()["bgbr0"]["address"])
        # The control: the same churn on a bridge without a pinned MAC moves it.
        _bridge_without_owner("bgctl0")
        before = links()["bgctl0"]["address"]
        _tap_with_mac("bgctl0", LOW_MAC)
        return {"seen": seen, "control": (before, links()["bgctl0"]["address"])}

    r = in_fresh_netns(body)
    assert r["seen"] == {net.bridge_mac("bgbr0", OWNER)}
    before, after = r["control"]
    assert before != after == LOW_MAC


def test_a_bridge_of_ours_from_before_owners_is_adopted_stamped_and_pinned() -> None:
    def body() -> dict[str, Any]:
        _bridge_without_owner("bgbr0", CIDR)
        _tap_with_mac("bgbr0", "00:00:00:00:00:05")
        stolen = links()["bgbr0"]["address"]
        net.claim_bridge("bgbr0", CIDR, OWNER, create=False)
        _tap_with_mac("bgbr0", LOW_MAC)
        return {"stolen": stolen, "after": links()["bgbr0"], "addrs": addresses("bgbr0")}

    r = in_fresh_netns(body)
    assert r["stolen"] == "00:00:00:00:00:05"
    assert r["after"]["alias"] == OWNER and r["after"]["up"]
    assert r["after"]["address"] == net.bridge_mac("bgbr0", OWNER)
    assert r["addrs"] == [CIDR]


@pytest.mark.parametrize(
    ("alias", "cidr", "says"),
    [
        (OTHER, CIDR, "belongs to another banger daemon (uid 1234"),
        ("banger:../../x", CIDR, "belongs to another banger daemon (uid ?"),
        ("lab uplink", CIDR, "exists and is not banger's"),
        (None, "172.30.6.1/24", "exists and is not banger's"),
        (None, None, "exists and is not banger's"),
    ],
)
def test_a_bridge_another_owner_holds_is_refused_and_left_as_it_was(
    alias: str | None, cidr: str | None, says: str
) -> None:
    def body() -> tuple[str, str | None, dict[str, Any], dict[str, Any]]:
        _bridge_without_owner("bgbr0", cidr, alias)
        before = links()["bgbr0"]
        exc = _refusal("bgbr0", CIDR)
        return str(exc), exc.hint, before, links()["bgbr0"]

    message, hint, before, after = in_fresh_netns(body)
    assert message.startswith("bridge_name bgbr0: that bridge ") and says in message
    assert hint is not None and "bridge_name and bridge_cidr" in hint
    assert after == before


def test_a_subnet_another_interface_holds_is_refused_naming_it_and_nothing_is_made() -> None:
    def body() -> tuple[str, str | None, list[str]]:
        with IPRoute() as ipr:
            ipr.link("add", ifname="bgfor0", kind="tuntap", mode="tap")
            idx = ipr.link_lookup(ifname="bgfor0")[0]
            ipr.addr("add", index=idx, address="172.30.0.9", prefixlen=16)
        exc = _refusal("bgbr0", CIDR)
        return str(exc), exc.hint, sorted(links())

    message, hint, names = in_fresh_netns(body)
    assert message == f"bridge_cidr {CIDR} overlaps 172.30.0.9/16 on bgfor0"
    assert hint is not None and "bridge_cidr" in hint
    assert "bgbr0" not in names


def test_an_existing_bridge_of_ours_is_refused_once_another_interface_takes_its_subnet() -> None:
    def body() -> str:
        net.claim_bridge("bgbr0", CIDR, OWNER)
        _bridge_without_owner("bgbr1", "172.30.5.200/25")
        return str(_refusal("bgbr0", CIDR))

    assert in_fresh_netns(body) == f"bridge_cidr {CIDR} overlaps 172.30.5.200/25 on bgbr1"


def test_an_absent_bridge_is_not_made_when_only_adopting() -> None:
    def body() -> tuple[bool, list[str]]:
        return net.claim_bridge("bgbr0", CIDR, OWNER, create=False), sorted(links())

    made, names = in_fresh_netns(body)
    assert made is False and "bgbr0" not in names


def test_reap_candidates_are_only_our_taps_on_our_bridge() -> None:
    def body() -> dict[str, list[str]]:
        net.claim_bridge("bgbra", "172.30.5.1/24", OTHER)
        net.TapPool(OPS, "bgbra", size=2).fill()
        net.claim_bridge("bgbrb", "172.30.6.1/24", OWNER)
        ours = net.TapPool(OPS, "bgbrb", size=2)
        ours.fill()
        listed = net.taps_on_our_bridge("bgbrb", OWNER)
        return {
            "ours": sorted([ours.acquire(), ours.acquire()]),  # the idle two, none made anew
            "ours_listed": listed,
            "theirs_listed_by_us": net.taps_on_our_bridge("bgbra", OWNER),
        }

    r = in_fresh_netns(body)
    assert r["ours_listed"] == r["ours"] and len(r["ours"]) == 2
    assert r["theirs_listed_by_us"] == []


def test_a_second_daemon_on_the_same_bridge_is_refused_and_reaps_nothing(tmp_path: Path) -> None:
    first, second = BangerEnv(tmp_path / "a"), BangerEnv(tmp_path / "b")
    for env in (first, second):
        env.extra_env.update(BANGER_BRIDGE_NAME="bgown0", BANGER_BRIDGE_CIDR=CIDR)

    def body() -> dict[str, Any]:
        _bridge_without_owner("bgown0", CIDR)  # made by a banger from before owners
        stray = net.new_tap_name()
        net.create_tap(stray, "bgown0")  # a killed daemon's idle pool: the first one reaps it
        try:
            started = first.banger("daemon", "start")
            assert started.returncode == 0, started.stderr
            adopted = links()["bgown0"]
            reaped = stray not in links()
            tap = net.new_tap_name()
            net.create_tap(tap, "bgown0")  # the first daemon's VM's TAP
            started = second.banger("daemon", "start")
            assert started.returncode == 0, started.stderr
            create = second.banger("vm", "create", "--name", "box", "--no-start")
            rows = second.banger("vm", "list", "-q").stdout.split()
            return {"adopted": adopted, "reaped": reaped, "rows": rows, "after": links(),
                    "create": (create.returncode, create.stderr), "tap": tap}  # fmt: skip
        finally:
            first.banger("daemon", "stop")
            second.banger("daemon", "stop")

    r = in_fresh_netns(body)
    owner = net.owner_alias(os.getuid(), str(first.state_dir.resolve()))
    assert r["adopted"]["alias"] == owner
    assert r["adopted"]["address"] == net.bridge_mac("bgown0", owner)
    assert r["reaped"]
    code, stderr = r["create"]
    assert code != 0, stderr
    first_line, *rest = stderr.splitlines()
    assert first_line.startswith(
        "banger: bridge_name bgown0: that bridge belongs to another banger daemon "
        f"(uid {os.getuid()}, another state_dir)"
    )
    assert "bridge_name and bridge_cidr" in "".join(rest)
    assert r["rows"] == []
    assert r["tap"] in r["after"] and r["after"][r["tap"]]["master"] == "bgown0"
    assert r["after"]["bgown0"] == r["adopted"]
