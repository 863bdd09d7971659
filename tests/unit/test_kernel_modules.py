"""Module load order from a kernel's modules.dep, and what the guest contract asks for."""

from __future__ import annotations

import pytest

from banger.core.errors import InvalidInput
from banger.kernels.modules import (
    CONTRACT_MODULES,
    missing_modules,
    module_load_order,
    module_name,
    parse_modules_builtin,
    parse_modules_dep,
    wanted_modules,
)

# A trimmed copy of Debian 6.1 cloud's modules.dep (ext4 made modular, one .xz module).
# Shaped like Debian 6.1 cloud's modules.dep (directories shortened; ext4 made modular and
# one module xz-compressed to cover those cases).
MODULES_DEP = """\
virtio/virtio.ko: virtio/virtio_ring.ko
virtio/virtio_ring.ko:
virtio/virtio_mmio.ko: virtio/virtio.ko virtio/virtio_ring.ko
block/virtio_blk.ko: virtio/virtio.ko virtio/virtio_ring.ko
net/virtio_net.ko: net/net_failover.ko core/failover.ko virtio/virtio.ko virtio/virtio_ring.ko
net/net_failover.ko: core/failover.ko
core/failover.ko:
vsock/vsock.ko:
vsock/vmw_vsock_virtio_transport.ko: vsock/vmw_vsock_virtio_transport_common.ko \
vsock/vsock.ko virtio/virtio.ko virtio/virtio_ring.ko
vsock/vmw_vsock_virtio_transport_common.ko: vsock/vsock.ko
fs/ext4/ext4.ko: fs/jbd2/jbd2.ko lib/crc16.ko fs/mbcache.ko
fs/jbd2/jbd2.ko:
fs/mbcache.ko:
lib/crc16.ko:
crypto/crc32c_generic.ko.xz:
char/virtio-rng.ko: virtio/virtio.ko virtio/virtio_ring.ko
"""


def names(paths: list[str]) -> list[str]:
    return [module_name(p) for p in paths]


def assert_deps_first(order: list[str], deps_text: str) -> None:
    deps = parse_modules_dep(deps_text)
    for i, name in enumerate(order):
        for dep in deps[name][1]:
            assert order.index(module_name(dep)) < i, f"{dep} must load before {name}"


def test_module_name_strips_directory_and_compression_suffix_and_normalises_dashes() -> None:
    assert module_name("kernel/drivers/net/virtio_net.ko") == "virtio_net"
    assert module_name("kernel/crypto/crc32c_generic.ko.xz") == "crc32c_generic"
    assert module_name("kernel/x/virtio-rng.ko.zst") == "virtio_rng"


def test_virtio_net_loads_after_virtio_core_and_failover_in_modprobe_order() -> None:
    order = names(module_load_order(MODULES_DEP, ["virtio_mmio", "virtio_blk", "virtio_net"]))
    assert order == [
        "virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover",
        "virtio_net",
    ]  # fmt: skip


def test_every_contract_module_comes_after_all_of_its_dependencies_once() -> None:
    order = names(module_load_order(MODULES_DEP, wanted_modules(parse_modules_dep(MODULES_DEP))))
    assert len(order) == len(set(order))
    assert_deps_first(order, MODULES_DEP)
    assert {"vsock", "vmw_vsock_virtio_transport", "ext4", "jbd2", "mbcache", "crc16"} <= set(order)


def test_modular_ext4_brings_crc32c_its_softdep_before_it() -> None:
    order = names(module_load_order(MODULES_DEP, wanted_modules(parse_modules_dep(MODULES_DEP))))
    assert order.index("crc32c_generic") < order.index("ext4")


def test_load_order_returns_the_paths_modules_dep_names() -> None:
    assert module_load_order(MODULES_DEP, ["crc32c_generic"]) == ["crypto/crc32c_generic.ko.xz"]


def test_wanted_names_missing_from_modules_dep_are_skipped_not_invented() -> None:
    assert module_load_order(MODULES_DEP, ["ext4_builtin_elsewhere", "virtio"]) == [
        "virtio/virtio_ring.ko",
        "virtio/virtio.ko",
    ]


def test_a_dependency_cycle_is_reported_with_its_path() -> None:
    text = "a.ko: b.ko\nb.ko: a.ko\n"
    with pytest.raises(InvalidInput, match="cycle: a -> b -> a"):
        module_load_order(text, ["a"])


def test_malformed_modules_dep_line_is_rejected_with_its_number() -> None:
    with pytest.raises(InvalidInput, match="line 2"):
        parse_modules_dep("a.ko:\nnot a module line\n")


def test_builtin_modules_count_as_present_and_only_truly_missing_ones_are_reported() -> None:
    deps = parse_modules_dep("kernel/drivers/block/virtio_blk.ko:\n")
    builtin = parse_modules_builtin("kernel/fs/ext4/ext4.ko\nkernel/virtio/virtio_mmio.ko\n")
    assert missing_modules(deps, builtin) == ["virtio_net", "vmw_vsock_virtio_transport"]


def test_only_the_mmio_transport_is_loaded_because_microvm_and_firecracker_have_no_pci() -> None:
    assert "virtio_mmio" in CONTRACT_MODULES
    assert not any(m.startswith("virtio_pci") for m in CONTRACT_MODULES)


def test_builtin_ext4_needs_no_crc32c_module() -> None:
    deps = parse_modules_dep("crypto/crc32c_generic.ko:\nblock/virtio_blk.ko:\n")
    assert "crc32c_generic" not in wanted_modules(deps)


def test_power_button_drivers_are_loaded_only_when_the_kernel_has_them() -> None:
    deps = {"virtio_mmio": (), "button": (), "evdev": ()}
    assert wanted_modules(deps)[-2:] == ["button", "evdev"]
    assert "button" not in wanted_modules({"virtio_mmio": ()})
