"""The helper's owner guard on real interfaces, each test in its own network namespace:
TAPs are made owned by the owner, and another uid's TAP or bridge is refused untouched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from banger.core.errors import Forbidden
from banger.helper.guard import Owner, helper_ops
from banger.host import net
from tests.support.netns import in_fresh_netns, links

UID = 4321
OWNER = Owner("someone", UID, UID, (Path("/nonexistent/state"), Path("/nonexistent/run")))
ALIAS = net.owner_alias(UID, "/nonexistent/state")
OTHER = net.owner_alias(UID + 1, "/other/state")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a network namespace"),
]


def test_a_tap_made_through_the_helper_belongs_to_its_owner() -> None:
    def body() -> tuple[object, bool]:
        ops = helper_ops(OWNER)
        ops.claim_bridge("bghbr0", "172.16.7.1/24", ALIAS)
        ops.create_tap("bgt0a", "bghbr0")  # no uid asked: the owner's anyway
        facts = net.link_facts("bgt0a")
        return facts, ops.delete_tap("bgt0a")

    facts, deleted = in_fresh_netns(body)
    assert facts == (None, UID) and deleted


def test_another_uids_tap_and_bridge_are_refused_and_left_alone() -> None:
    def body() -> tuple[list[str], set[str]]:
        net.claim_bridge("bghbr1", "172.16.8.1/24", OTHER)
        with IPRoute() as ipr:
            ipr.link("add", ifname="bgt0b", kind="tuntap", mode="tap", uid=UID + 1)
        ops = helper_ops(OWNER)
        refusals = []
        for call in (lambda: ops.delete_tap("bgt0b"),
                     lambda: ops.create_tap("bgt0c", "bghbr1"),
                     lambda: ops.nat_add("bghbr1", "172.16.8.2"),
                     lambda: ops.route_vm_domain("bghbr1", "172.16.8.1")):
            try:
                call()
            except Forbidden as exc:
                refusals.append(exc.message)
        return refusals, set(links())

    refusals, names = in_fresh_netns(body)
    assert len(refusals) == 4, refusals
    assert {"bgt0b", "bghbr1"} <= names and "bgt0c" not in names
