"""The daemon's network code reaches the host only through its ``HostOps``.

Netlink is made to explode, so anything that went around the seam fails the
test; the recording fake (behind the same validation the daemon gets) shows
every call that crossed it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.core.states import NetMode
from banger.core.vmspec import TapNet, UserNet
from banger.daemon import vm_nat
from banger.daemon.vm_network import TAP_POOL_SIZE, VMNetwork
from banger.host import net
from banger.host.privileged import CheckedHostOps
from banger.store.db import Store
from banger.store.records import VMRecord
from tests.support.fake_host_ops import RecordingHostOps

OWNER = net.owner_alias(1000, "/home/u/.local/state/banger")
OTHER = net.owner_alias(1234, "/home/someone/state")
BRIDGE, CIDR = "banger0", "172.16.0.1/24"


class NoNetlink:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("netlink used directly, not through HostOps")


@pytest.fixture(autouse=True)
def no_netlink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(net, "IPRoute", NoNetlink)
    monkeypatch.setattr(vm_nat, "have_tool", lambda name: name == "nft")
    monkeypatch.setattr(net, "have_net_admin", lambda: pytest.fail("capability probed directly"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "state.db")
    yield opened
    opened.close()


@pytest.fixture
def fake() -> RecordingHostOps:
    return RecordingHostOps()


def network(store: Store, fake: RecordingHostOps) -> VMNetwork:
    return VMNetwork(store, BRIDGE, CIDR, OWNER, frozenset({NetMode.TAP, NetMode.USER}),
                     CheckedHostOps(fake))


def add_vm(store: Store, name: str, **fields: Any) -> VMRecord:
    return store.vms.add(VMRecord(id=f"vm-{name}", name=name, backend="qemu", vcpu=1,
                                  memory_mib=256, disk_bytes=1 << 30, **fields))  # fmt: skip


async def settle() -> None:
    """Let the background pool refill finish."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.gather(*others)


def test_a_tap_vm_is_attached_detached_and_the_pool_drained_through_the_seam(
    store: Store, fake: RecordingHostOps
) -> None:
    async def scenario() -> tuple[Any, str | None, list[str], dict[str, str]]:
        vms = network(store, fake)
        vm = add_vm(store, "box")
        vms.allocate_ip(vm.id)
        spec, tap, port = await vms.attach(store.vms.get_key(vm.id))
        await settle()
        idle = sorted(t for t in fake.taps if t != tap)
        await vms.detach(tap)
        left = dict(fake.taps)
        await vms.close()
        return (spec, port), tap, idle, left

    (spec, port), tap, idle, left = asyncio.run(scenario())
    assert isinstance(spec, TapNet) and spec.tap_name == tap and port == 22
    assert spec.guest_ip == "172.16.0.2/24" and spec.gateway == "172.16.0.1"
    assert fake.bridges == {BRIDGE: OWNER}
    assert len(idle) == TAP_POOL_SIZE and set(left) == set(idle)
    assert fake.taps == {}
    assert fake.methods() == [
        "can_manage_network", "claim_bridge", "nat_sync", *["create_tap"] * (1 + TAP_POOL_SIZE),
        "delete_tap", *["delete_tap"] * TAP_POOL_SIZE,
    ]  # fmt: skip
    assert ("claim_bridge", (BRIDGE, CIDR, OWNER, True)) in fake.calls
    assert all(args[1] == BRIDGE for m, args in fake.calls if m == "create_tap")


def test_closing_while_the_pool_refills_leaves_no_idle_tap_behind(
    store: Store, fake: RecordingHostOps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``close`` waits for the refill's thread, so ``drain`` sees the TAP it was making."""
    refilling = threading.Event()
    real = fake.create_tap

    def slow_create_tap(name: str, bridge: str, owner_uid: int | None = None) -> None:
        if fake.methods().count("create_tap"):  # the first is the VM's own (empty pool)
            refilling.set()
            time.sleep(0.2)  # netlink taking its time
        real(name, bridge, owner_uid)

    monkeypatch.setattr(fake, "create_tap", slow_create_tap)

    async def scenario() -> str | None:
        vms = network(store, fake)
        vm = add_vm(store, "box")
        vms.allocate_ip(vm.id)
        _, tap, _ = await vms.attach(store.vms.get_key(vm.id))
        assert await asyncio.to_thread(refilling.wait, 5)
        await vms.close()
        await asyncio.sleep(0.5)  # a fill thread left running would make TAPs now
        return tap

    tap = asyncio.run(scenario())
    assert tap is not None and set(fake.taps) == {tap}  # the VM's TAP only: no idle one


def test_reconcile_reaps_only_idle_taps_of_our_bridge(
    store: Store, fake: RecordingHostOps
) -> None:
    fake.bridges.update({BRIDGE: OWNER, "banger1": OTHER})
    fake.taps.update({"bgt0a": BRIDGE, "bgt0b": BRIDGE, "bgt0c": "banger1"})
    add_vm(store, "held", tap_name="bgt0a")

    asyncio.run(network(store, fake).reconcile())

    assert fake.taps == {"bgt0a": BRIDGE, "bgt0c": "banger1"}
    assert fake.calls[1:] == [
        ("claim_bridge", (BRIDGE, CIDR, OWNER, False)),
        ("taps_on_our_bridge", (BRIDGE, OWNER)),
        ("delete_tap", ("bgt0b",)),
        ("nat_sync", (BRIDGE, ())),  # the NAT table, from the store (no NAT VM runs)
    ]


def test_reconcile_on_a_bridge_another_daemon_owns_reaps_nothing(
    store: Store, fake: RecordingHostOps
) -> None:
    fake.bridges[BRIDGE] = OTHER
    fake.taps.update({"bgt0a": BRIDGE})

    asyncio.run(network(store, fake).reconcile())

    assert fake.taps == {"bgt0a": BRIDGE}
    assert fake.methods() == ["can_manage_network", "claim_bridge"]


def test_without_network_privileges_a_vm_gets_user_networking_and_no_host_call(
    store: Store,
) -> None:
    fake = RecordingHostOps(network=False)

    async def scenario() -> tuple[Any, str | None, int]:
        vms = network(store, fake)
        await vms.claim_bridge()
        await vms.reconcile()
        vm = add_vm(store, "box", net_mode=NetMode.USER)
        assert vms.allocate_ip(vm.id) is None
        return await vms.attach(vm)

    spec, tap, port = asyncio.run(scenario())
    assert isinstance(spec, UserNet) and tap is None and spec.ssh_host_port == port
    assert fake.methods() == ["can_manage_network"]


def test_an_address_held_for_a_pool_member_is_never_allocated_to_a_vm(
    store: Store, fake: RecordingHostOps
) -> None:
    vms = network(store, fake)
    held = vms.hold_ip()
    assert held == "172.16.0.2"  # the lowest after the bridge's own
    assert vms.hold_ip() == "172.16.0.3"  # a second member: not the first one's
    vm = add_vm(store, "box")
    assert vms.allocate_ip(vm.id) == "172.16.0.4"
    vms.release_ip(held)
    other = add_vm(store, "other")
    assert vms.allocate_ip(other.id) == held  # released: free again
