"""NAT: the nftables documents (golden), the seam's validators, and the daemon's set kept in
step with the store through a recording ``HostOps``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.core.errors import InvalidInput, Unavailable
from banger.core.states import NetMode, VMState
from banger.daemon import vm_nat
from banger.daemon.vm_network import VMNetwork
from banger.host import nat, net
from banger.host.privileged import CheckedHostOps
from banger.store.db import Store
from banger.store.records import VMRecord
from tests.support.fake_host_ops import RecordingHostOps

OWNER = net.owner_alias(1000, "/home/u/.local/state/banger")
BRIDGE, CIDR = "banger0", "172.16.0.1/24"
T = {"family": "ip", "table": "banger_banger0"}


def _rule(chain: str, *expr: Any) -> dict[str, Any]:
    return {"add": {"rule": {**T, "chain": chain, "expr": list(expr)}}}


def _meta(key: str, op: str) -> dict[str, Any]:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": "banger0"}}


SADDR_IN_SET = {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                          "right": "@nat_guests"}}
GOLDEN_TABLE = {"nftables": [
    {"metainfo": {"json_schema_version": 1}},
    {"add": {"table": {"family": "ip", "name": "banger_banger0"}}},
    {"delete": {"table": {"family": "ip", "name": "banger_banger0"}}},
    {"add": {"table": {"family": "ip", "name": "banger_banger0"}}},
    {"add": {"set": {**T, "name": "nat_guests", "type": "ipv4_addr"}}},
    {"add": {"chain": {**T, "name": "postrouting", "type": "nat", "hook": "postrouting",
                       "prio": 100, "policy": "accept"}}},
    _rule("postrouting", SADDR_IN_SET, _meta("oifname", "!="), {"masquerade": None}),
    {"add": {"chain": {**T, "name": "forward", "type": "filter", "hook": "forward",
                       "prio": 0, "policy": "accept"}}},
    _rule("forward", _meta("iifname", "=="), _meta("oifname", "=="), {"accept": None}),
    _rule("forward", _meta("iifname", "=="), SADDR_IN_SET, {"accept": None}),
    _rule("forward", _meta("oifname", "=="),
          {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                     "right": ["established", "related"]}}, {"accept": None}),
    _rule("forward", _meta("iifname", "=="), {"drop": None}),
    _rule("forward", _meta("oifname", "=="), {"drop": None}),
    {"add": {"element": {**T, "name": "nat_guests", "elem": ["172.16.0.2", "172.16.0.9"]}}},
]}


def test_the_table_document_is_exactly_the_golden_one() -> None:
    assert nat.table_document(BRIDGE, ("172.16.0.2", "172.16.0.9")) == GOLDEN_TABLE
    empty = nat.table_document(BRIDGE, ())
    assert empty["nftables"] == GOLDEN_TABLE["nftables"][:-1]  # no empty element list


def test_adding_and_removing_a_guest_change_set_elements_only() -> None:
    element = {**T, "name": "nat_guests", "elem": ["172.16.0.5"]}
    assert nat.add_document(BRIDGE, "172.16.0.5")["nftables"][1:] == [{"add": {"element": element}}]
    assert nat.remove_document(BRIDGE, "172.16.0.5")["nftables"][1:] == [
        {"add": {"element": element}}, {"delete": {"element": element}},
    ]  # add first: deleting an element that is not there would fail the transaction


def test_set_elements_are_read_from_nft_json() -> None:
    listing = json.dumps({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"set": {"family": "ip", "name": "nat_guests", "elem": ["172.16.0.9", "172.16.0.2",
                                                               {"prefix": "x"}]}},
    ]}).encode()
    assert nat.parse_set_elements(listing) == ("172.16.0.2", "172.16.0.9")


@pytest.mark.parametrize("guest", [
    "172.16.0.2; flush ruleset", "172.16.0.2/24", "0.0.0.0", "127.0.0.1", "224.0.0.1",
    "255.255.255.255", "::1", "", 3232235522, None, "172.016.0.2",
])
def test_the_seam_refuses_a_hostile_guest_address(guest: Any) -> None:
    fake = RecordingHostOps()
    ops = CheckedHostOps(fake)
    for call in (lambda: ops.nat_add(BRIDGE, guest), lambda: ops.nat_remove(BRIDGE, guest),
                 lambda: ops.nat_sync(BRIDGE, (guest,))):
        with pytest.raises(InvalidInput):
            call()
    assert fake.calls == []


@pytest.mark.parametrize("guests", [
    ["172.16.0.2"], ("172.16.0.2", "172.16.0.2"), tuple(f"10.0.{i // 250}.{i % 250 + 1}"
                                                        for i in range(70000)),
])
def test_the_seam_refuses_a_hostile_guest_list(guests: Any) -> None:
    fake = RecordingHostOps()
    with pytest.raises(InvalidInput):
        CheckedHostOps(fake).nat_sync(BRIDGE, guests)
    assert fake.calls == []


@pytest.mark.parametrize("bridge", ["banger0 ", "x" * 16, "br;0", "", "br\n0"])
def test_the_seam_refuses_a_hostile_bridge_name(bridge: str) -> None:
    fake = RecordingHostOps()
    with pytest.raises(InvalidInput):
        CheckedHostOps(fake).nat_add(bridge, "172.16.0.2")
    assert fake.calls == []


# -- the daemon's set follows the store -------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "state.db")
    yield opened
    opened.close()


@pytest.fixture(autouse=True)
def nft_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm_nat, "have_tool", lambda name: name == "nft")
    monkeypatch.setattr(net, "IPRoute", None)  # netlink only through the seam
    monkeypatch.setattr(nat, "ip_forwarding", lambda path=None: False)


def _network(store: Store, fake: RecordingHostOps, mode: NetMode = NetMode.TAP) -> VMNetwork:
    return VMNetwork(store, BRIDGE, CIDR, OWNER, frozenset({mode}), CheckedHostOps(fake))


def _vm(store: Store, name: str, **fields: Any) -> VMRecord:
    return store.vms.add(VMRecord(id=f"vm-{name}", name=name, backend="qemu", vcpu=1,
                                  memory_mib=256, disk_bytes=1 << 30, **fields))


def test_a_nat_vm_adds_its_address_when_attached_and_removes_it_when_detached(
    store: Store,
) -> None:
    fake = RecordingHostOps()

    async def scenario() -> tuple[set[str], set[str]]:
        network = _network(store, fake)
        vm = _vm(store, "box", nat=True)
        network.allocate_ip(vm.id)
        plain = _vm(store, "plain")
        network.allocate_ip(plain.id)
        vm = store.vms.get_key(vm.id)
        _, tap, _ = await network.attach(vm)
        _, plain_tap, _ = await network.attach(store.vms.get_key(plain.id))
        during = set(fake.nat[BRIDGE])
        await network.detach(tap, vm)
        await network.detach(plain_tap, store.vms.get_key(plain.id))
        await network.close()
        return during, set(fake.nat[BRIDGE])

    during, after = asyncio.run(scenario())
    assert during == {"172.16.0.2"} and after == set()
    assert fake.ip_forward  # turned on for the NAT guest
    nat_calls = [(m, a) for m, a in fake.calls if m.startswith("nat_") or m == "enable_ip_forward"]
    assert nat_calls == [
        ("nat_sync", (BRIDGE, ())), ("enable_ip_forward", ()),
        ("nat_add", (BRIDGE, "172.16.0.2")), ("nat_remove", (BRIDGE, "172.16.0.2")),
    ]  # the plain VM crossed no NAT call


def test_reconcile_makes_the_set_exactly_the_running_nat_vms(store: Store) -> None:
    fake = RecordingHostOps()
    fake.bridges[BRIDGE] = OWNER
    fake.nat[BRIDGE] = {"172.16.0.7", "172.16.0.3"}  # a killed daemon's leftovers
    for name, ip, tap, nat_on in (("a", "172.16.0.3", "bgt0a", True),
                                  ("b", "172.16.0.4", "bgt0b", True),
                                  ("c", "172.16.0.5", "bgt0c", False),
                                  ("d", "172.16.0.6", None, True)):
        _vm(store, name, guest_ip=ip, tap_name=tap, nat=nat_on, state=VMState.RUNNING)
        if tap:
            fake.taps[tap] = BRIDGE
    asyncio.run(_network(store, fake).reconcile())
    assert fake.nat[BRIDGE] == {"172.16.0.3", "172.16.0.4"}


def test_nat_without_tap_networking_or_nft_is_refused_naming_the_fix(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = _network(store, RecordingHostOps(network=False), NetMode.USER)
    with pytest.raises(Unavailable) as err:
        user.nat.check_available()
    assert "CAP_NET_ADMIN" in err.value.message and "system install" in (err.value.hint or "")
    monkeypatch.setattr(vm_nat, "have_tool", lambda name: False)
    with pytest.raises(Unavailable) as err:
        _network(store, RecordingHostOps()).nat.check_available()
    assert "nftables" in (err.value.hint or "")
