"""VMSpec validation and the guest kernel command line (golden)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput
from banger.core.vmspec import RootDisk, TapNet, UserNet, VMSpec, kernel_cmdline

VM = Path("/var/lib/banger/vms/0123abcd")
RUN = Path("/run/banger/vms/0123abcd")


def make_spec(**overrides: object) -> VMSpec:
    base = VMSpec(
        vm_id="0123abcd",
        name="devbox",
        vcpu=2,
        memory_mib=1024,
        kernel=Path("/var/lib/banger/kernels/deb/vmlinuz"),
        initrd=Path("/var/lib/banger/kernels/deb/initrd.img"),
        root=RootDisk(VM / "root.qcow2", "qcow2"),
        work_disk=VM / "work.ext4",
        console_log=VM / "console.log",
        vmm_log=VM / "vmm.log",
        run_dir=RUN,
        net=TapNet(
            tap_name="bgt0a1b2c3d4e5f",
            mac="02:aa:bb:cc:dd:ee",
            guest_ip="172.16.0.7/24",
            gateway="172.16.0.1",
            dns=("172.16.0.1",),
        ),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_cmdline_carries_hostname_address_gateway_and_dns() -> None:
    assert kernel_cmdline(make_spec()) == (
        "console=ttyS0 root=/dev/vda rw reboot=k panic=-1 quiet banger.hostname=devbox "
        "banger.ip=172.16.0.7/24 banger.gw=172.16.0.1 banger.dns=172.16.0.1"
    )


def test_cmdline_with_user_networking_uses_slirp_addresses_and_init_and_extras() -> None:
    spec = make_spec(
        net=UserNet(ssh_host_port=2222, mac="02:00:00:00:00:01"),
        init="/usr/lib/banger/init",
        cmdline_extra=("loglevel=4",),
        quiet=False,
    )
    assert kernel_cmdline(spec) == (
        "console=ttyS0 root=/dev/vda rw reboot=k panic=-1 banger.hostname=devbox "
        "banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 banger.dns=10.0.2.3 "
        "banger.init=/usr/lib/banger/init loglevel=4"
    )


def test_cmdline_without_network_has_no_address_keys() -> None:
    line = kernel_cmdline(make_spec(net=None))
    assert "banger.ip" not in line and "banger.gw" not in line
    assert line.endswith("banger.hostname=devbox")


def test_cmdline_joins_several_dns_servers_with_commas() -> None:
    net = TapNet("bgt1", "02:00:00:00:00:01", "172.16.0.9/24", "172.16.0.1", ("1.1.1.1", "9.9.9.9"))
    assert "banger.dns=1.1.1.1,9.9.9.9" in kernel_cmdline(make_spec(net=net))


@pytest.mark.parametrize("extra", ["two words", 'quote"d', "", "tab\there"])
def test_cmdline_refuses_arguments_that_would_split_or_inject(extra: str) -> None:
    with pytest.raises(InvalidInput):
        kernel_cmdline(make_spec(cmdline_extra=(extra,)))


def test_cmdline_refuses_more_than_the_kernel_accepts() -> None:
    with pytest.raises(InvalidInput, match="2047"):
        kernel_cmdline(make_spec(cmdline_extra=("x" * 2100,)))


def test_spec_refuses_relative_paths() -> None:
    with pytest.raises(InvalidInput, match="absolute"):
        make_spec(work_disk=Path("work.ext4"))


def test_spec_refuses_a_socket_path_longer_than_sun_path() -> None:
    with pytest.raises(InvalidInput, match="socket path"):
        make_spec(run_dir=Path("/" + "r" * 120))


@pytest.mark.parametrize("mac", ["03:00:00:00:00:01", "02:00:00:00:00", "02-00-00-00-00-01", "zz"])
def test_net_refuses_multicast_or_malformed_macs(mac: str) -> None:
    with pytest.raises(InvalidInput, match="MAC"):
        UserNet(ssh_host_port=2222, mac=mac)


def test_tap_net_refuses_a_gateway_outside_the_guest_network() -> None:
    with pytest.raises(InvalidInput, match="outside"):
        TapNet("bgt1", "02:00:00:00:00:01", "172.16.0.9/24", "10.0.0.1")


def test_tap_net_requires_a_prefix_length() -> None:
    with pytest.raises(InvalidInput, match="prefix"):
        TapNet("bgt1", "02:00:00:00:00:01", "172.16.0.9", "172.16.0.1")


def test_spec_refuses_zero_vcpus_and_tiny_memory() -> None:
    with pytest.raises(InvalidInput, match="vcpu"):
        make_spec(vcpu=0)
    with pytest.raises(InvalidInput, match="memory"):
        make_spec(memory_mib=16)


def test_runtime_files_live_in_the_run_dir() -> None:
    spec = make_spec()
    assert (spec.qmp_socket, spec.pidfile, spec.api_socket) == (
        RUN / "qmp.sock",
        RUN / "vmm.pid",
        RUN / "vmm.pid.sock",
    )


def test_a_memory_file_belongs_to_snapshot_templates_and_clones_only() -> None:
    with pytest.raises(InvalidInput, match="snapshot templates and clones only"):
        replace(make_spec(), memory_file=Path("/var/lib/banger/snapshots/0123/ram"))
    with pytest.raises(InvalidInput, match="absolute"):
        replace(make_spec(), snapshot_role="clone", memory_file=Path("ram"))
