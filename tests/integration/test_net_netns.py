"""Bridge, TAPs and the TAP pool made for real, each test inside its own network namespace."""

from __future__ import annotations

import os
from typing import Any

import pytest
from pyroute2 import IPRoute

from banger.core.errors import BangerError, Conflict, InternalError, InvalidInput, Unavailable
from banger.host import net
from banger.host.privileged import host_ops_for
from tests.support.netns import addresses, in_fresh_netns, links

OWNER = net.owner_alias(0, "/test/state")
OPS = host_ops_for()  # the daemon's seam: validated, in-process

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a network namespace"),
]


def test_claim_bridge_creates_an_up_bridge_with_its_address_and_is_idempotent() -> None:
    def body() -> tuple[dict[str, Any], list[str]]:
        net.claim_bridge("bgbr0", "172.16.5.1/24", OWNER)
        net.claim_bridge("bgbr0", "172.16.5.1/24", OWNER)
        return links()["bgbr0"], addresses("bgbr0")

    link, addrs = in_fresh_netns(body)
    assert link["kind"] == "bridge" and link["up"]
    assert addrs == ["172.16.5.1/24"]


def test_claim_bridge_refuses_a_name_taken_by_another_kind_of_interface() -> None:
    def body() -> str:
        with IPRoute() as ipr:
            ipr.link("add", ifname="bgdummy", kind="tuntap", mode="tap")
        try:
            net.claim_bridge("bgdummy", "172.16.5.1/24", OWNER)
        except Conflict as exc:
            return str(exc)
        return "no error"

    assert "not a bridge" in in_fresh_netns(body)


def test_tap_is_created_on_the_bridge_up_and_owned_then_deleted_idempotently() -> None:
    def body() -> tuple[dict[str, Any], list[str], bool, bool, dict[str, Any]]:
        net.claim_bridge("bgbr0", "172.16.5.1/24", OWNER)
        net.create_tap("bgt00aa", "bgbr0", owner_uid=1000)
        tap = links()["bgt00aa"]
        ours = net.taps_on_our_bridge("bgbr0", OWNER)
        first, second = net.delete_tap("bgt00aa"), net.delete_tap("bgt00aa")
        return tap, ours, first, second, links()

    tap, ours, first, second, after = in_fresh_netns(body)
    assert tap["kind"] == "tun" and tap["master"] == "bgbr0" and tap["owner"] == 1000
    assert ours == ["bgt00aa"]
    assert (first, second) == (True, False)
    assert "bgt00aa" not in after


def test_taps_on_our_bridge_ignores_taps_without_our_prefix() -> None:
    def body() -> list[str]:
        net.claim_bridge("bgbr0", "172.16.5.1/24", OWNER)
        with IPRoute() as ipr:
            ipr.link("add", ifname="tap0", kind="tuntap", mode="tap")
            ipr.link("set", ifname="tap0", master=ipr.link_lookup(ifname="bgbr0")[0])
        net.create_tap("bgt01", "bgbr0")
        return net.taps_on_our_bridge("bgbr0", OWNER)

    assert in_fresh_netns(body) == ["bgt01"]


def test_teardown_refuses_interfaces_that_are_not_ours() -> None:
    with pytest.raises(InvalidInput):
        net.delete_tap("eth0")


def test_pool_keeps_idle_taps_hands_one_out_refills_and_drains_to_nothing() -> None:
    def body() -> dict[str, Any]:
        net.claim_bridge("bgbr0", "172.16.5.1/24", OWNER)
        pool = net.TapPool(OPS, "bgbr0", size=3)
        made = pool.fill()
        idle_before = net.taps_on_our_bridge("bgbr0", OWNER)  # nothing else is on the bridge
        taken = pool.acquire()
        refilled = pool.fill()  # tops up to 3 idle: 1 made means 2 were left after the take
        on_bridge = {n: links()[n]["master"] for n in net.taps_on_our_bridge("bgbr0", OWNER)}
        OPS.delete_tap(taken)  # what the daemon does when the VM is done with it
        pool.drain()
        return {
            "made": made, "idle_before": idle_before, "taken": taken,
            "refilled": refilled, "on_bridge": on_bridge,
            "left": net.taps_on_our_bridge("bgbr0", OWNER),
        }  # fmt: skip

    r = in_fresh_netns(body)
    assert r["made"] == 3 and len(r["idle_before"]) == 3
    assert r["taken"] in r["idle_before"]
    assert r["refilled"] == 1
    assert len(r["on_bridge"]) == 4 and set(r["on_bridge"].values()) == {"bgbr0"}
    assert r["left"] == []


def test_pool_makes_a_tap_on_the_spot_when_empty() -> None:
    def body() -> tuple[str, list[str]]:
        net.claim_bridge("bgbr0", "172.16.5.1/24", OWNER)
        pool = net.TapPool(OPS, "bgbr0", size=0)
        return pool.acquire(), net.taps_on_our_bridge("bgbr0", OWNER)

    name, ours = in_fresh_netns(body)
    assert ours == [name]


class _DiesMidCreate:
    """The real seam, except that it goes away after making the first TAP and before
    answering (a helper SIGKILLed mid-call), and stays away until ``back`` is set."""

    def __init__(self) -> None:
        self.killed = self.back = False

    def create_tap(self, name: str, bridge: str, owner_uid: int | None = None) -> None:
        if self.killed and not self.back:
            raise Unavailable("bangerd-root is not reachable")
        OPS.create_tap(name, bridge, owner_uid)
        if not self.killed:
            self.killed = True
            raise InternalError("bangerd-root sent no valid reply (did it stop mid-call?)")

    def delete_tap(self, name: str) -> bool:
        if self.killed and not self.back:
            raise Unavailable("bangerd-root is not reachable")
        return OPS.delete_tap(name)


def test_a_tap_made_by_a_create_that_failed_mid_call_is_deleted_once_the_seam_answers() -> None:
    def body() -> dict[str, Any]:
        net.claim_bridge("bgbr0", "172.16.5.1/24", OWNER)
        seam = _DiesMidCreate()
        pool = net.TapPool(seam, "bgbr0", size=0)  # type: ignore[arg-type]
        errors = []
        for _ in range(2):  # the second create finds the seam still gone
            try:
                pool.acquire()
            except BangerError as exc:
                errors.append(type(exc).__name__)
        orphans = net.taps_on_our_bridge("bgbr0", OWNER)
        seam.back = True
        fresh = pool.acquire()
        return {"errors": errors, "orphans": orphans, "fresh": fresh,
                "left": net.taps_on_our_bridge("bgbr0", OWNER)}

    r = in_fresh_netns(body)
    assert r["errors"] == ["InternalError", "Unavailable"]
    assert len(r["orphans"]) == 1, "the first create made its TAP before failing"
    assert r["left"] == [r["fresh"]], "the orphan is gone, the new TAP is there"


class _ResetsWhileAway(_DiesMidCreate):
    """As ``_DiesMidCreate``, but a delete while the helper is away fails with a plain
    ``OSError`` (a connection reset), not a banger error."""

    def delete_tap(self, name: str) -> bool:
        if self.killed and not self.back:
            raise ConnectionResetError(104, "Connection reset by peer")
        return OPS.delete_tap(name)


def test_a_doubtful_tap_is_kept_whatever_its_failed_delete_raised() -> None:
    """The names of doubtful TAPs were dropped when their delete raised anything but a
    ``BangerError``: the orphan then stayed on the bridge for good."""
    def body() -> dict[str, Any]:
        net.claim_bridge("bgbr0", "172.16.5.1/24", OWNER)
        seam = _ResetsWhileAway()
        pool = net.TapPool(seam, "bgbr0", size=0)  # type: ignore[arg-type]
        errors = []
        for _ in range(2):
            try:
                pool.acquire()
            except Exception as exc:
                errors.append(type(exc).__name__)
        seam.back = True
        fresh = pool.acquire()
        return {"errors": errors, "fresh": fresh,
                "left": net.taps_on_our_bridge("bgbr0", OWNER)}

    r = in_fresh_netns(body)
    assert r["errors"] == ["InternalError", "Unavailable"]
    assert r["left"] == [r["fresh"]], "the orphan is gone, the new TAP is there"


def test_the_host_namespace_is_untouched_by_these_tests() -> None:
    assert not [n for n in links() if n.startswith(("bgt", "bgbr"))]


def test_the_seam_runs_the_real_operations_and_refuses_foreign_interfaces() -> None:
    def body() -> dict[str, Any]:
        lo = links()["lo"]
        OPS.claim_bridge("bgbr0", "172.16.5.1/24", OWNER)
        OPS.create_tap("bgt0b", "bgbr0", owner_uid=1000)
        listed = OPS.taps_on_our_bridge("bgbr0", OWNER)
        refusals = []
        for call in (lambda: OPS.delete_tap("lo"), lambda: OPS.create_tap("lo", "bgbr0"),
                     lambda: OPS.create_tap("bgt0c", "bgbr0", owner_uid=-1),
                     lambda: OPS.claim_bridge("lo", "172.16.6.1/24", OWNER)):  # fmt: skip
            try:
                call()
            except (InvalidInput, Conflict) as exc:
                refusals.append(type(exc).__name__)
        made = links()
        deleted = OPS.delete_tap("bgt0b"), OPS.delete_tap("bgt0b")
        return {"listed": listed, "refusals": refusals, "made": made, "deleted": deleted,
                "lo": lo}  # fmt: skip

    r = in_fresh_netns(body)
    assert r["listed"] == ["bgt0b"] and r["made"]["bgt0b"]["owner"] == 1000
    assert r["refusals"] == ["InvalidInput"] * 3 + ["Conflict"]  # lo: a name, not a bridge
    assert "bgt0c" not in r["made"] and r["made"]["lo"] == r["lo"]
    assert r["deleted"] == (True, False)
