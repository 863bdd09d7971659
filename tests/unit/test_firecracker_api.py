"""Firecracker's API calls for a VMSpec, by contract: every path and method exists in
Firecracker's OpenAPI spec and every body validates against its schema (strictly: no
field Firecracker does not know). The spec lives in ../shared/reference/ (skip when absent)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput
from banger.core.vmspec import RootDisk, UserNet, VMSpec, kernel_cmdline
from banger.vmm import firecracker_api as api
from banger.vmm.firecracker import firecracker_argv, ownership_markers
from tests.support.firecracker_spec import SpecValidator, load_spec
from tests.unit.test_qemu_vmspec import VM, make_spec

SNAP = Path("/var/lib/banger/snapshots/0123456789abcdef/state")
RAM = SNAP.with_name("ram")  # the daemon's name for the guest's memory (vm_restore.RAM)


def fc_spec(**overrides: object) -> VMSpec:
    base = dict(root=RootDisk(VM / "root.raw", "raw"), accel="kvm")
    return make_spec(**{**base, **overrides})


def every_call() -> list[api.ApiCall]:
    """Every request the backend can send, for every shape of spec."""
    calls: list[api.ApiCall] = []
    template = fc_spec(snapshot_role="template", memory_file=RAM)
    for spec in (fc_spec(), fc_spec(net=None, initrd=None), template):
        calls += api.boot_calls(spec)
        calls.append(api.snapshot_load(replace(spec, snapshot_role="clone", memory_file=RAM),
                                       SNAP))
    calls += [api.pause(), api.snapshot_create(template, SNAP), api.grow_work_disk(),
              api.action("SendCtrlAltDel"), api.action("FlushMetrics")]
    return calls


@pytest.fixture(scope="module", params=[api.SPEC_VERSION, "1.17.0-dev"])
def validator(request: pytest.FixtureRequest) -> SpecValidator:
    """The release the bodies are written against, and Firecracker's main branch: the
    next release must keep accepting them."""
    return SpecValidator(load_spec(request.param))


@pytest.mark.parametrize("call", every_call(), ids=lambda c: f"{c.method} {c.path}")
def test_every_request_exists_in_the_spec_and_its_body_validates(
    validator: SpecValidator, call: api.ApiCall
) -> None:
    assert validator.errors(call.method, call.path, call.body) == []


@pytest.mark.parametrize("bad", [
    api.ApiCall("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mb": 1024}),  # a typo
    api.ApiCall("PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 1024}),
    api.ApiCall("PUT", "/snapshot/create", {"snapshot_type": "Incremental",
                                             "snapshot_path": "s", "mem_file_path": "m"}),
    api.ApiCall("PATCH", "/vm", {"state": "Stopped"}),
    api.ApiCall("POST", "/actions", {"action_type": "InstanceStart"}),
    api.ApiCall("PUT", "/snapshot/save", {"snapshot_path": "s"}),
    api.ApiCall("PUT", "/actions", None),
], ids=lambda c: f"{c.method} {c.path}")
def test_the_validator_refuses_what_firecracker_would(
    validator: SpecValidator, bad: api.ApiCall
) -> None:
    assert validator.errors(bad.method, bad.path, bad.body)


def test_a_boot_is_configured_in_order_and_ends_with_instance_start() -> None:
    spec = fc_spec()
    calls = api.boot_calls(spec)
    assert [(c.method, c.path) for c in calls] == [
        ("PUT", "/machine-config"), ("PUT", "/serial"), ("PUT", "/boot-source"),
        ("PUT", "/drives/root"), ("PUT", "/drives/work"), ("PUT", "/network-interfaces/net0"),
        ("PUT", "/actions"),
    ]
    assert calls[0].body == {"vcpu_count": 2, "mem_size_mib": 1024, "smt": False}
    assert calls[2].body == {"kernel_image_path": str(spec.kernel),
                             "initrd_path": str(spec.initrd), "boot_args": kernel_cmdline(spec)}
    assert calls[3].body == {"drive_id": "root", "path_on_host": "root.disk",
                             "is_root_device": True, "is_read_only": False}
    assert calls[5].body == {"iface_id": "net0", "host_dev_name": "bgt0a1b2c3d4e5f",
                             "guest_mac": "02:aa:bb:cc:dd:ee"}
    assert calls[-1].body == {"action_type": "InstanceStart"}


def test_disks_are_relative_links_in_the_run_dir_so_a_clone_opens_its_own() -> None:
    spec = fc_spec()
    assert api.disk_links(spec) == {"root.disk": spec.root.path, "work.disk": spec.work_disk}
    drives = [c.body for c in api.boot_calls(spec) if c.path.startswith("/drives/")]
    assert all(b is not None and not b["path_on_host"].startswith("/") for b in drives)


def test_only_snapshot_roles_get_the_vsock_control_channel() -> None:
    assert not any(c.path == "/vsock" for c in api.boot_calls(fc_spec()))
    vsock = [c for c in api.boot_calls(fc_spec(snapshot_role="template")) if c.path == "/vsock"]
    assert [c.body for c in vsock] == [{"guest_cid": 3, "uds_path": "agent.sock"}]
    assert fc_spec().agent_socket.name == "agent.sock"  # relative to the run dir: the same


def test_a_snapshot_is_a_full_one_with_ram_in_the_templates_memory_file() -> None:
    template = fc_spec(snapshot_role="template", memory_file=RAM)
    assert api.snapshot_create(template, SNAP).body == {
        "snapshot_type": "Full", "snapshot_path": str(SNAP), "mem_file_path": str(RAM)}
    assert api.pause().body == {"state": "Paused"}


def test_a_save_or_load_without_a_memory_file_is_refused_before_any_call() -> None:
    for spec in (fc_spec(), fc_spec(snapshot_role="clone")):
        with pytest.raises(InvalidInput, match="no memory file") as err:
            api.snapshot_load(spec, SNAP)
        assert err.value.hint
    with pytest.raises(InvalidInput, match="no memory file"):
        api.snapshot_create(fc_spec(snapshot_role="template"), SNAP)


def test_a_clone_loads_from_file_resumes_and_takes_its_own_tap() -> None:
    spec = fc_spec(snapshot_role="clone", memory_file=RAM)
    assert api.snapshot_load(spec, SNAP).body == {
        "snapshot_path": str(SNAP),
        "mem_backend": {"backend_type": "File", "backend_path": str(RAM)},
        "resume_vm": False,
        "network_overrides": [{"iface_id": "net0", "host_dev_name": "bgt0a1b2c3d4e5f"}],
    }


@pytest.mark.parametrize(("overrides", "message"), [
    ({"root": RootDisk(VM / "root.qcow2", "qcow2")}, "raw disks only"),
    ({"net": UserNet(ssh_host_port=2222, mac="02:00:00:00:00:01")}, "no user-mode networking"),
    ({"accel": "tcg"}, "under KVM only"),
])
def test_a_spec_firecracker_cannot_run_is_refused_before_any_call(
    overrides: dict[str, object], message: str
) -> None:
    spec = fc_spec(**overrides)
    for build in (api.boot_calls, lambda s: api.snapshot_load(s, SNAP)):
        with pytest.raises(InvalidInput, match=message) as err:
            build(spec)
        assert err.value.hint


def test_the_argv_names_the_pidfile_through_the_api_socket() -> None:
    spec = fc_spec()
    argv = firecracker_argv(spec, binary="/usr/bin/firecracker")
    assert argv == ["/usr/bin/firecracker", "--api-sock", str(spec.api_socket),
                    "--id", spec.vm_id]
    assert all(any(m in a for a in argv) for m in ownership_markers(spec))
    other = firecracker_argv(replace(spec, run_dir=spec.run_dir.with_name("other")))
    assert not all(any(m in a for a in other) for m in ownership_markers(spec))
