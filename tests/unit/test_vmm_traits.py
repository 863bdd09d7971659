"""Backends own their facts: the traits table, the factory's choice, and what the daemon derives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import banger.daemon
from banger.config import Paths
from banger.core.errors import InvalidInput, Unavailable
from banger.core.signals import VMM_SIGNALS, parse_vmm_signal
from banger.core.states import NetMode
from banger.daemon.vm_layout import VMFiles, boot_kernel
from banger.daemon.vm_network import choose_net_mode
from banger.store.records import KernelRecord
from banger.vmm.base import Backend, SnapshotCapable
from banger.vmm.factory import HostFacts, backend_for
from banger.vmm.firecracker import FirecrackerBackend
from banger.vmm.qemu import QemuBackend
from banger.vmm.traits import TRAITS, BackendTraits, GuestStop, KernelForm

QEMU = TRAITS["qemu"]
FIRECRACKER = TRAITS["firecracker"]


def test_the_traits_table_golden() -> None:
    assert QEMU == BackendTraits(
        name="qemu", root_overlay="qcow2",
        kernel_forms=(KernelForm.VMLINUX, KernelForm.BZIMAGE),
        net_kinds=frozenset({NetMode.TAP, NetMode.USER}), can_snapshot=True,
        guest_stop=GuestStop.ACPI_POWERDOWN,
    )  # fmt: skip
    assert FIRECRACKER == BackendTraits(
        name="firecracker", root_overlay="reflink", kernel_forms=(KernelForm.VMLINUX,),
        net_kinds=frozenset({NetMode.TAP}), can_snapshot=True,
        guest_stop=GuestStop.CTRL_ALT_DEL,
    )  # fmt: skip
    assert (QEMU.root_format, FIRECRACKER.root_format) == ("qcow2", "raw")
    assert all(name == traits.name for name, traits in TRAITS.items())


FC_BIN = Path("/opt/fc/firecracker")


@pytest.mark.parametrize("accel", ["kvm", "tcg"])
@pytest.mark.parametrize("name", ["auto", "qemu"])
def test_auto_and_qemu_give_qemu_running_guests_the_host_way(name: str, accel: str) -> None:
    backend = backend_for(name, HostFacts(accel=accel))  # type: ignore[arg-type]
    assert isinstance(backend, QemuBackend) and isinstance(backend, Backend)
    assert backend.accel == accel and backend.traits is QEMU and backend.name == QEMU.name


@pytest.mark.parametrize("name", ["auto", "firecracker"])
def test_firecracker_is_built_where_its_binary_and_kvm_are(name: str) -> None:
    backend = backend_for(name, HostFacts(accel="kvm", firecracker=FC_BIN))
    assert isinstance(backend, FirecrackerBackend) and isinstance(backend, Backend)
    assert isinstance(backend, SnapshotCapable)
    assert backend.traits is FIRECRACKER and backend.accel == "kvm"
    assert backend.binary == str(FC_BIN)


def test_auto_takes_qemu_when_kvm_is_unusable_even_with_a_firecracker_binary() -> None:
    backend = backend_for("auto", HostFacts(accel="tcg", firecracker=FC_BIN))
    assert isinstance(backend, QemuBackend) and backend.accel == "tcg"


@pytest.mark.parametrize(("host", "named"), [
    (HostFacts(accel="tcg", firecracker=FC_BIN), ["no usable KVM"]),
    (HostFacts(accel="kvm"), ["no firecracker binary on PATH"]),
    (HostFacts(accel="tcg"), ["no firecracker binary on PATH", "no usable KVM"]),
])
def test_a_firecracker_backend_this_host_cannot_run_is_refused_naming_what_is_missing(
    host: HostFacts, named: list[str]
) -> None:
    with pytest.raises(Unavailable, match="the firecracker backend cannot run here") as err:
        backend_for("firecracker", host)
    assert all(n in err.value.message for n in named) and "\n" not in err.value.message
    assert '"qemu"' in (err.value.hint or "")


@pytest.mark.parametrize("name", ["vmware", "", "QEMU", "qemu; rm -rf /"])
def test_an_unknown_backend_name_is_invalid_input(name: str) -> None:
    with pytest.raises(InvalidInput, match="unknown backend") as err:
        backend_for(name, HostFacts(accel="tcg"))
    assert "auto" in (err.value.hint or "")


@pytest.mark.parametrize(
    ("stored", "traits", "booted"),
    [
        (("vmlinux", "vmlinuz"), QEMU, "vmlinux"),
        (("vmlinuz",), QEMU, "vmlinuz"),
        ((), QEMU, "vmlinuz"),  # nothing stored: the launch fails naming a real form
        (("vmlinuz",), FIRECRACKER, "vmlinux"),  # it cannot boot a bzImage
    ],
)
def test_the_kernel_file_follows_the_backends_forms(
    tmp_path: Path, stored: tuple[str, ...], traits: BackendTraits, booted: str
) -> None:
    for name in stored:
        (tmp_path / name).write_bytes(b"kernel")
    kernel = KernelRecord("k", "6.1", "test", tmp_path)
    assert boot_kernel(kernel, traits) == tmp_path / booted


def test_the_root_overlay_file_is_named_by_the_backends_format(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "state", tmp_path / "cache", tmp_path / "run")
    assert VMFiles.of(paths, "abc", QEMU.root_format).root == paths.vms / "abc" / "root.qcow2"
    assert VMFiles.of(paths, "abc", FIRECRACKER.root_format).root.name == "root.raw"


@pytest.mark.parametrize(
    ("kinds", "net_admin", "mode"),
    [
        (QEMU.net_kinds, True, NetMode.TAP),
        (QEMU.net_kinds, False, NetMode.USER),
        (FIRECRACKER.net_kinds, True, NetMode.TAP),
        (FIRECRACKER.net_kinds, False, NetMode.TAP),  # no fallback: the bridge step says why
        (frozenset({NetMode.USER}), True, NetMode.USER),
    ],
)
def test_the_network_mode_is_one_the_backend_offers(
    kinds: frozenset[NetMode], net_admin: bool, mode: NetMode
) -> None:
    assert choose_net_mode(kinds, net_admin) is mode


@pytest.mark.parametrize(("name", "number"), [("KILL", 9), ("sigterm", 15), ("SigHup", 1)])
def test_vmm_signals_parse_in_any_spelling(name: str, number: int) -> None:
    assert parse_vmm_signal(name) == number


@pytest.mark.parametrize("name", ["STOP", "9", "SIGSEGV", "KILL;reboot", "", "SIG"])
def test_signals_outside_the_list_are_invalid_input(name: str) -> None:
    with pytest.raises(InvalidInput, match="unknown signal") as err:
        parse_vmm_signal(name)
    assert " ".join(VMM_SIGNALS) in (err.value.hint or "")


def test_the_daemon_never_names_a_vmm_or_a_disk_format() -> None:
    daemon_dir = Path(banger.daemon.__file__).parent
    named = {
        path.name: line.strip()
        for path in sorted(daemon_dir.glob("*.py"))
        if path.name != "doctor.py"  # it reports on the host's tools by name
        for line in path.read_text().splitlines()
        if re.search(r"qemu|qcow", line, re.IGNORECASE)
    }
    assert named == {}
