"""TAP/bridge name grammar, MAC allocation and loopback ports (no root needed)."""

from __future__ import annotations

import socket

import pytest

from banger.core.errors import InvalidInput
from banger.core.vmspec import UserNet
from banger.host.net import (
    allocate_mac,
    free_loopback_port,
    new_tap_name,
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


def test_free_loopback_port_is_one_a_server_can_bind_at_once() -> None:
    port = free_loopback_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
