"""TAP/bridge name grammar, MAC allocation, bridge owner tags and loopback ports (no root)."""

from __future__ import annotations

import socket

import pytest

from banger.core.errors import InvalidInput
from banger.core.vmspec import UserNet
from banger.host.net import (
    allocate_mac,
    bridge_mac,
    free_loopback_port,
    new_tap_name,
    owner_alias,
    validate_bridge_name,
    validate_tap_name,
)


def test_new_tap_names_carry_our_prefix_fit_ifnamsiz_and_differ() -> None:
    names = {new_tap_name() for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.startswith("bgt") and len(name) == 15
        assert validate_tap_name(name) == name


@pytest.mark.parametrize(
    "name", ["eth0", "bgt", "bgt0123456789abc", "bgtXYZ", "bgt-1", "banger0", "bgt12 ", ""]
)
def test_tap_names_outside_our_grammar_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate_tap_name(name)


@pytest.mark.parametrize("name", ["", "a" * 16, "br 0", "br/0", "br:0"])
def test_bridge_names_must_be_short_interface_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate_bridge_name(name)


def test_mac_is_deterministic_per_vm_and_differs_between_vms() -> None:
    assert allocate_mac("vm-1") == allocate_mac("vm-1")
    assert allocate_mac("vm-1") != allocate_mac("vm-2")


def test_mac_is_locally_administered_unicast_and_valid_for_a_nic() -> None:
    for vm_id in ("a", "b", "0123abcd", "x" * 64):
        mac = allocate_mac(vm_id)
        first = int(mac[:2], 16)
        assert first & 0b10 and not first & 0b01
        UserNet(ssh_host_port=2222, mac=mac)  # passes the NIC's own validation


OWNER = owner_alias(1000, "/home/u/.local/state/banger")


def test_owner_alias_is_uid_and_a_hash_of_the_state_dir_golden() -> None:
    assert OWNER == "banger:1000:a5ed7449a266"
    assert owner_alias(1000, "/other/state") != OWNER
    assert owner_alias(1001, "/home/u/.local/state/banger") != OWNER


def test_bridge_mac_is_pinned_per_bridge_and_owner_golden() -> None:
    assert bridge_mac("banger0", OWNER) == "06:8f:9e:5d:02:b6"
    assert bridge_mac("banger0", OWNER) == bridge_mac("banger0", OWNER)  # stable across restarts
    assert bridge_mac("banger1", OWNER) != bridge_mac("banger0", OWNER)
    assert bridge_mac("banger0", owner_alias(0, "/root/state")) != bridge_mac("banger0", OWNER)


@pytest.mark.parametrize("name", ["banger0", "b", "x" * 15, "bgt0a1b2c"])
def test_bridge_mac_is_locally_administered_unicast_and_never_a_guest_mac(name: str) -> None:
    mac = bridge_mac(name, OWNER)
    first = int(mac[:2], 16)
    assert first & 0b10 and not first & 0b01
    UserNet(ssh_host_port=2222, mac=mac)
    # Guest MACs all start 02, bridges 06: no VM id can ever produce a bridge's MAC.
    assert {allocate_mac(str(i))[:3] for i in range(200)} == {"02:"}
    assert not mac.startswith("02:")


def test_free_loopback_port_is_one_a_server_can_bind_at_once() -> None:
    port = free_loopback_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
