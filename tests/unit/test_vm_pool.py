"""Which creates a warm pool member can serve (daemon/vm_pool.py ``why_not_served``)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from banger.core.publish import parse_publish_list
from banger.daemon.vm_create import CreatePlan
from banger.daemon.vm_pool import Shape, WarmPool, why_not_served
from banger.store.records import ImageRecord

IMAGE = ImageRecord("img000000001", "img", "test", Path("/nonexistent"))
SHAPE = Shape(IMAGE.id, "k", 2, 1024, 8 << 30, "snap", ())
PLAIN = CreatePlan(name="box", vcpu=2, memory_mib=1024, disk_bytes=8 << 30, image=IMAGE,
                   start=True)


NAT = {"nat": True}
PUBLISH = {"ports": tuple(parse_publish_list(["8080:80"]))}


@pytest.mark.parametrize("change", [{}, NAT, PUBLISH])
def test_a_create_of_the_default_shape_is_served_with_nat_or_ports_on_taps(
        change: dict[str, object]) -> None:
    plan = dataclasses.replace(PLAIN, **change)  # type: ignore[arg-type]
    assert why_not_served(plan, IMAGE, SHAPE, user_net=False) is None


@pytest.mark.parametrize(("change", "user_net", "why"), [
    ({"start": False}, False, "created without starting"),
    ({"cold": True}, False, "--cold"),
    (NAT, True, "user-mode networking"),
    (PUBLISH, True, "user-mode networking"),
    ({"vcpu": 1}, False, "vCPUs or memory"),
    ({"memory_mib": 2048}, False, "vCPUs or memory"),
    ({"disk_bytes": 9 << 30}, False, "--disk"),
])
def test_a_create_a_member_cannot_be_says_why(change: dict[str, object], user_net: bool,
                                               why: str) -> None:
    plan = dataclasses.replace(PLAIN, **change)  # type: ignore[arg-type]
    found = why_not_served(plan, IMAGE, SHAPE, user_net=user_net)
    assert found is not None and why in found, found


def test_another_image_is_not_served() -> None:
    other = dataclasses.replace(IMAGE, id="img000000002")
    assert "image" in (why_not_served(PLAIN, other, SHAPE, user_net=False) or "")
    assert "image" in (why_not_served(PLAIN, None, SHAPE, user_net=False) or "")


def test_discarding_stale_members_skips_one_a_create_took_meanwhile() -> None:
    """Discarding one member awaits; a create may take the next one then: it is the
    create's now, neither removed twice (ValueError killed the pool's fill task) nor
    discarded under it."""
    first, second = (SimpleNamespace(shape="old", vm=SimpleNamespace(id=i)) for i in "ab")
    discarded: list[str] = []

    async def discard(member: SimpleNamespace) -> None:
        discarded.append(member.vm.id)
        pool._members.remove(second)  # a create's take() while this one was discarded

    pool = SimpleNamespace(_members=[first, second], discard=discard)
    asyncio.run(WarmPool._discard_stale(pool, None))  # type: ignore[arg-type]
    assert discarded == ["a"] and pool._members == []
