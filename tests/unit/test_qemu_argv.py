"""The QEMU command line, golden: every flag a VM's behaviour depends on is pinned here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from banger.core.vmspec import RootDisk, UserNet
from banger.vmm.qemu import ownership_markers, qemu_argv
from tests.unit.test_qemu_vmspec import make_spec

CMDLINE = (
    "console=ttyS0 root=/dev/vda rw reboot=k panic=-1 quiet banger.hostname=devbox "
    "banger.ip=172.16.0.7/24 banger.gw=172.16.0.1 banger.dns=172.16.0.1"
)

GOLDEN_TAP_TCG = [
    "/usr/bin/qemu-system-x86_64",
    "-name", "guest=devbox",
    "-M", "microvm,pit=on,pic=on,rtc=on",
    "-accel", "tcg",
    "-cpu", "qemu64,+rdrand",
    "-smp", "2",
    "-m", "1024M",
    "-nodefaults", "-no-user-config", "-display", "none",
    "-no-reboot",
    "-kernel", "/var/lib/banger/kernels/deb/vmlinuz",
    "-initrd", "/var/lib/banger/kernels/deb/initrd.img",
    "-append", CMDLINE,
    "-drive", "id=root,if=none,file=/var/lib/banger/vms/0123abcd/root.qcow2,format=qcow2,"
    "discard=unmap",
    "-device", "virtio-blk-device,drive=root,bus=virtio-mmio-bus.23",
    "-drive", "id=work,if=none,file=/var/lib/banger/vms/0123abcd/work.ext4,format=raw,"
    "discard=unmap",
    "-device", "virtio-blk-device,drive=work,bus=virtio-mmio-bus.22",
    "-netdev", "tap,id=net0,ifname=bgt0a1b2c3d4e5f,script=no,downscript=no",
    "-device", "virtio-net-device,netdev=net0,mac=02:aa:bb:cc:dd:ee,bus=virtio-mmio-bus.21",
    "-chardev", "file,id=console,path=/var/lib/banger/vms/0123abcd/console.log",
    "-serial", "chardev:console",
    "-chardev", "socket,id=qmp,path=/run/banger/vms/0123abcd/qmp.sock,server=on,wait=off",
    "-mon", "chardev=qmp,mode=control",
    "-pidfile", "/run/banger/vms/0123abcd/vmm.pid",
    "-daemonize",
    "-D", "/var/lib/banger/vms/0123abcd/vmm.log",
]  # fmt: skip


def test_tap_vm_under_tcg_matches_the_golden_argv() -> None:
    assert qemu_argv(make_spec(), qemu_binary="/usr/bin/qemu-system-x86_64") == GOLDEN_TAP_TCG


def test_kvm_adds_host_cpu_right_after_the_accelerator() -> None:
    argv = qemu_argv(make_spec(accel="kvm"))
    i = argv.index("-accel")
    assert argv[i : i + 4] == ["-accel", "kvm", "-cpu", "host"]


def test_tcg_gives_the_guest_rdrand_but_never_the_host_cpu() -> None:
    argv = qemu_argv(make_spec())
    assert argv[argv.index("-cpu") + 1] == "qemu64,+rdrand"


def test_user_networking_forwards_ssh_to_a_loopback_port_only() -> None:
    argv = qemu_argv(make_spec(net=UserNet(ssh_host_port=40022, mac="02:00:00:00:00:01")))
    assert argv[argv.index("-netdev") + 1] == "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"
    assert "banger.ip=10.0.2.15/24" in argv[argv.index("-append") + 1]


def test_raw_root_overlay_is_passed_as_raw() -> None:
    spec = make_spec(root=RootDisk(Path("/vms/x/root.ext4"), "raw"))
    argv = qemu_argv(spec)
    assert "id=root,if=none,file=/vms/x/root.ext4,format=raw,discard=unmap" in argv


def test_no_network_means_no_nic_and_no_initrd_means_no_initrd_flag() -> None:
    argv = qemu_argv(make_spec(net=None, initrd=None))
    assert "-netdev" not in argv and "-initrd" not in argv
    assert not any("virtio-net" in a for a in argv)


def test_commas_in_paths_are_escaped_for_qemu_options() -> None:
    spec = make_spec(work_disk=Path("/vms/a,b/work.ext4"), run_dir=Path("/run/a,b"))
    argv = qemu_argv(spec)
    assert "id=work,if=none,file=/vms/a,,b/work.ext4,format=raw,discard=unmap" in argv
    assert "socket,id=qmp,path=/run/a,,b/qmp.sock,server=on,wait=off" in argv
    assert argv[argv.index("-pidfile") + 1] == "/run/a,b/vmm.pid"  # a plain argument


def test_root_and_work_disks_have_fixed_slots_so_the_guest_sees_vda_then_vdb() -> None:
    argv = qemu_argv(make_spec())
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices[0].endswith("drive=root,bus=virtio-mmio-bus.23")
    assert devices[1].endswith("drive=work,bus=virtio-mmio-bus.22")


def test_ownership_markers_appear_in_the_argv() -> None:
    spec = make_spec()
    argv = qemu_argv(spec)
    for marker in ownership_markers(spec):
        assert any(marker in a for a in argv)


def test_markers_of_one_vm_do_not_match_a_vm_whose_id_extends_it() -> None:
    a = make_spec(run_dir=Path("/run/banger/vms/abc"))
    b = make_spec(run_dir=Path("/run/banger/vms/abcd"))
    argv_b = qemu_argv(b)
    assert not all(any(m in arg for arg in argv_b) for m in ownership_markers(a))


def test_argv_is_deterministic() -> None:
    spec = make_spec()
    assert qemu_argv(spec) == qemu_argv(replace(spec))


def test_a_snapshot_template_maps_its_memory_file_shared_and_a_clone_private() -> None:
    ram = Path("/var/lib/banger/snapshots/0123/ram")
    for role, share in (("template", "on"), ("clone", "off")):
        argv = qemu_argv(replace(make_spec(), snapshot_role=role, memory_file=ram))
        assert argv[argv.index("-M") + 1] == "microvm,pit=on,pic=on,rtc=on,memory-backend=ram"
        assert argv[argv.index("-object") + 1] == (
            f"memory-backend-file,id=ram,size=1024M,mem-path={ram},share={share}")


def test_a_vm_without_a_memory_file_has_no_memory_backend() -> None:
    argv = qemu_argv(make_spec())
    assert "-object" not in argv and "memory-backend" not in " ".join(argv)


# Devices that discard guest RAM: under QEMU 7.2 a discard on a MAP_PRIVATE memory file punches
# a hole through to the file, so one clone would zero the snapshot's memory under every other.
RAM_DISCARDING = ("balloon", "virtio-mem", "free-page-reporting", "free-page-hint")


def test_a_clone_has_exactly_the_golden_devices_and_none_that_discards_ram() -> None:
    ram = Path("/var/lib/banger/snapshots/0123/ram")
    argv = qemu_argv(replace(make_spec(), snapshot_role="clone", memory_file=ram))
    devices = [argv[i + 1].split(",")[0] for i, a in enumerate(argv) if a == "-device"]
    assert devices == ["virtio-blk-device", "virtio-blk-device", "virtio-net-device",
                       "virtio-serial-device", "virtserialport"]
    assert argv.count("-object") == 1
    assert not [a for a in argv if any(word in a for word in RAM_DISCARDING)]
