"""FirecrackerBackend end to end against a fake Firecracker (tests/support/fake_firecracker.py).

The fake is a real process on the real API socket that checks every request
against Firecracker's OpenAPI spec and Firecracker's ordering rules, so this
runs the backend's own code for spawn, pidfile, adoption, the API sequence of
a launch, a snapshot save and a clone's load (with the daemon's restore steps
and the control channel over the fake's hybrid vsock), faults, and stop. No
guest runs: this is the contract, not Firecracker (docs/backends.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from banger.core.errors import Conflict, HostToolError, SnapshotUnusable
from banger.core.vmspec import RootDisk, TapNet, VMSpec
from banger.daemon import vm_restore
from banger.host import proc_identity as proc
from banger.vmm import firecracker_api as api
from banger.vmm.base import Backend, SnapshotCapable, StopOutcome
from banger.vmm.firecracker import FirecrackerBackend
from banger.vmm.firecracker_client import FirecrackerClient, FirecrackerFault
from tests.support.fake_firecracker import (
    FakeFirecrackerApi,
    serve_in_thread,
    write_fake_binary,
)
from tests.support.firecracker_spec import SpecValidator, load_spec


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short private dir: socket paths must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="bfc") as d:
        yield Path(d)


def make_spec(root: Path, name: str = "fc", **overrides: Any) -> VMSpec:
    vm = root / f"vm-{name}"
    vm.mkdir(exist_ok=True)
    for disk in ("root.raw", "work.ext4"):
        (vm / disk).write_bytes(b"\0" * 4096)
    (root / "vmlinux").write_bytes(b"kernel")
    spec = VMSpec(
        vm_id=f"fc{os.urandom(3).hex()}", name=name, vcpu=2, memory_mib=256,
        kernel=root / "vmlinux", root=RootDisk(vm / "root.raw", "raw"),
        work_disk=vm / "work.ext4", console_log=vm / "console.log", vmm_log=vm / "vmm.log",
        run_dir=root / f"run-{name}", accel="kvm",
        net=TapNet(tap_name=f"tap-{name}", mac="02:00:00:00:00:07", guest_ip="172.16.0.7/24",
                   gateway="172.16.0.1"),
    )
    return replace(spec, **overrides)


class Rig:
    """A backend whose ``firecracker`` is the fake, and what the fake was asked."""

    def __init__(self, root: Path, faults: dict[str, Any] | None = None) -> None:
        load_spec()  # skip here, naming the spec, when it is absent
        self.record = root / "requests.jsonl"
        self.backend = FirecrackerBackend(
            os.fspath(write_fake_binary(root, record=self.record, faults=faults or {})),
            launch_timeout=15.0)

    def requests(self) -> list[tuple[str, str, Any]]:
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [(r["method"], r["path"], r["body"]) for r in map(json.loads, lines)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_launch_configures_and_starts_the_guest_in_order_then_ctrl_alt_del_stops_it(
    short_dir: Path,
) -> None:
    rig, spec = Rig(short_dir), make_spec(short_dir)
    backend: Backend = rig.backend
    handle = run(backend.launch(spec))
    try:
        assert handle.running() and proc.read_pidfile(spec.pidfile) == handle.pid
        assert backend.adopt(spec.pidfile, spec) == handle
        # The fake runs in the run dir, where the relative drive names lead to the VM's disks.
        assert os.readlink(spec.run_dir / "root.disk") == str(spec.root.path)
        assert rig.requests() == [(c.method, c.path, c.body) for c in api.boot_calls(spec)]
        with pytest.raises(Conflict, match="already has a running Firecracker"):
            run(backend.launch(spec))
    finally:
        outcome = run(backend.shutdown(handle, graceful=True, timeout=10))
    assert outcome is StopOutcome.POWERDOWN
    assert rig.requests()[-1] == ("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    assert not handle.running()
    assert not any(spec.run_dir.iterdir())  # socket, pidfile and disk links are gone


def test_a_guest_that_ignores_ctrl_alt_del_is_killed(short_dir: Path) -> None:
    rig = Rig(short_dir, {"ignore SendCtrlAltDel": True})
    spec = make_spec(short_dir)
    handle = run(rig.backend.launch(spec))
    assert run(rig.backend.shutdown(handle, graceful=True, timeout=0.5)) is StopOutcome.KILLED
    assert not handle.running() and not spec.pidfile.exists()


def test_a_refused_boot_call_fails_the_launch_with_firecrackers_message_and_leaves_nothing(
    short_dir: Path,
) -> None:
    rig = Rig(short_dir, {"PUT /drives/root": [400, "Unable to open the block device."]})
    spec = make_spec(short_dir)
    with pytest.raises(HostToolError, match="Unable to open the block device") as err:
        run(rig.backend.launch(spec))
    assert "PUT /drives/root (400)" in err.value.message and "\n" not in err.value.message
    assert not spec.pidfile.exists() and not any(spec.run_dir.iterdir())
    assert [p for _, p, _ in rig.requests()][-1] == "/drives/root"


def test_a_binary_that_never_listens_fails_the_launch_and_is_killed(short_dir: Path) -> None:
    exe = short_dir / "firecracker"
    exe.write_text("#!/bin/sh\necho 'no KVM here' >&2\nexec sleep 60\n")
    exe.chmod(0o755)
    backend = FirecrackerBackend(os.fspath(exe), launch_timeout=0.5)
    spec = make_spec(short_dir)
    with pytest.raises(HostToolError, match="never listened.*no KVM here"):
        run(backend.launch(spec))
    assert not spec.pidfile.exists()


def snapshot_pair(rig: Rig, root: Path) -> tuple[VMSpec, VMSpec, Path]:
    """A template saved to ``<root>/snap/state`` and ``ram``, and a clone's spec."""
    (root / "snap").mkdir()
    state, ram = root / "snap" / "state", root / "snap" / "ram"
    template = make_spec(root, "tpl", snapshot_role="template", memory_file=ram)
    clone = make_spec(root, "clone", snapshot_role="clone", memory_file=ram)
    backend: SnapshotCapable = rig.backend
    handle = run(rig.backend.launch(template))
    try:
        assert run(backend.save_state(handle, state)) == state.stat().st_size
        assert ram.stat().st_size == template.memory_mib << 20  # the ram the daemon checks
    finally:
        run(rig.backend.shutdown(handle, graceful=False, timeout=0))
    return template, clone, state


def test_a_snapshot_pauses_then_saves_state_and_ram_and_a_clone_loads_it(
    short_dir: Path,
) -> None:
    rig = Rig(short_dir)
    template, clone, state = snapshot_pair(rig, short_dir)
    saved = rig.requests()
    assert saved[-2:] == [("PATCH", "/vm", {"state": "Paused"}),
                          ("PUT", "/snapshot/create", api.snapshot_create(template, state).body)]
    assert ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "agent.sock"}) in saved
    handle = run(rig.backend.launch(clone))  # no configuration: a load must come first
    try:
        assert len(rig.requests()) == len(saved)
        run(rig.backend.restore_state(handle, state))
        run(rig.backend.resume(handle))  # loaded paused, as a QEMU clone waits for cont
        run(rig.backend.announce_work_disk(handle, 4096))
        run(rig.backend.pause(handle))  # a warm pool member waits so
        assert rig.requests()[len(saved):] == [
            ("PUT", "/snapshot/load", api.snapshot_load(clone, state).body),
            ("PATCH", "/vm", {"state": "Resumed"}),
            ("PATCH", "/drives/work", {"drive_id": "work", "path_on_host": "work.disk"}),
            ("PATCH", "/vm", {"state": "Paused"}),
        ]
        assert rig.requests()[len(saved)][2]["network_overrides"] == [
            {"iface_id": "net0", "host_dev_name": "tap-clone"}]
    finally:
        run(rig.backend.shutdown(handle, graceful=False, timeout=0))


def warmed(rig: Rig, root: Path) -> Path:
    """A snapshot made as the daemon makes one: boot the template, ping and quiesce its
    agent over its channel, close it, save (device state ``state``, RAM ``ram``)."""
    snap = root / "snap"
    snap.mkdir()
    template = make_spec(root, "tpl", snapshot_role="template",
                         memory_file=snap / vm_restore.RAM)
    handle = run(rig.backend.launch(template))

    async def build() -> None:
        channel = await rig.backend.agent_channel(template)
        try:
            assert await channel.request("ping", timeout=10) == "pong"
            assert await channel.request("quiesce", timeout=10) == "quiesced"
        finally:
            await channel.close()
        await rig.backend.save_state(handle, snap / vm_restore.STATE)

    try:
        run(build())
    finally:
        run(rig.backend.shutdown(handle, graceful=False, timeout=0))
    return snap


def _sequence(rig: Rig) -> list[str]:
    return [f"{m} {p}" for m, p, _ in rig.requests()
            if p.startswith(("CONNECT", "/snapshot", "/vm", "/actions"))
            or f"{m} {p}" == "PATCH /drives/work"]


def test_a_template_build_then_a_clones_restore_over_the_vsock_channel(short_dir: Path) -> None:
    rig = Rig(short_dir)
    snap = warmed(rig, short_dir)
    saved = _sequence(rig)
    assert saved == ["PUT /actions", "VSOCK CONNECT 52", "PATCH /vm", "PUT /snapshot/create"]
    clone = vm_restore.clone_spec(make_spec(short_dir, "clone"), snap)  # ram: the whole RAM
    handle = run(rig.backend.launch(clone))
    try:
        run(vm_restore.restore_clone(rig.backend, handle, clone, snap))
    finally:
        run(rig.backend.shutdown(handle, graceful=False, timeout=0))
    # the channel connects once the clone runs: a load resets vsock connections
    assert _sequence(rig)[len(saved):] == [
        "PUT /snapshot/load", "PATCH /vm", "PATCH /drives/work", "VSOCK CONNECT 52"]


def test_a_held_clone_keeps_its_vsock_connection_across_a_pause(short_dir: Path) -> None:
    rig = Rig(short_dir)
    snap = warmed(rig, short_dir)
    saved = len(_sequence(rig))
    clone = vm_restore.clone_spec(make_spec(short_dir, "clone"), snap)
    handle = run(rig.backend.launch(clone))

    async def fill_then_claim() -> None:
        channel = await vm_restore.load_clone(rig.backend, handle, clone, snap)
        try:
            await vm_restore.give_identity(rig.backend, handle, clone, channel, hold=True)
            await rig.backend.pause(handle)  # a warm pool member
            await vm_restore.give_name(rig.backend, handle, clone.name, channel)
        finally:
            await channel.close()

    try:
        run(fill_then_claim())
    finally:
        run(rig.backend.shutdown(handle, graceful=False, timeout=0))
    assert _sequence(rig)[saved:] == [
        "PUT /snapshot/load", "PATCH /vm", "PATCH /drives/work", "VSOCK CONNECT 52",
        "PATCH /vm", "PATCH /vm"]


def test_saving_over_an_existing_file_is_refused_before_any_call(short_dir: Path) -> None:
    rig = Rig(short_dir)
    spec = make_spec(short_dir, snapshot_role="template", memory_file=short_dir / "ram")
    state = short_dir / "state"
    (short_dir / "ram").write_bytes(b"old")
    handle = run(rig.backend.launch(spec))
    try:
        with pytest.raises(Conflict, match="never written over"):
            run(rig.backend.save_state(handle, state))
        assert ("PATCH", "/vm", {"state": "Paused"}) not in rig.requests()
    finally:
        run(rig.backend.shutdown(handle, graceful=False, timeout=0))


@pytest.mark.parametrize("fault", ["refused", "truncated"])
def test_a_load_firecracker_refuses_is_snapshot_unusable_with_its_reason(
    short_dir: Path, fault: str
) -> None:
    rig = Rig(short_dir)
    _, clone, state = snapshot_pair(rig, short_dir)
    if fault == "refused":
        faults = {"PUT /snapshot/load": [400, "Snapshot version mismatch: 4.0.0 vs 5.0.0"]}
        rig = Rig(short_dir, faults)
        reason = "Snapshot version mismatch"
    else:
        api.memory_file(clone).unlink()  # a save cut short
        reason = "lacks ram"
    handle = run(rig.backend.launch(clone))
    try:
        with pytest.raises(SnapshotUnusable, match=reason) as err:
            run(rig.backend.restore_state(handle, state))
        assert "\n" not in err.value.message
    finally:
        run(rig.backend.shutdown(handle, graceful=False, timeout=0))


def test_only_a_clone_launch_can_take_a_state_and_only_a_template_be_saved(
        short_dir: Path) -> None:
    rig = Rig(short_dir)
    spec = make_spec(short_dir)
    handle = run(rig.backend.launch(spec))
    try:
        with pytest.raises(SnapshotUnusable, match="not launched as a clone"):
            run(rig.backend.restore_state(handle, short_dir / "state"))
        with pytest.raises(SnapshotUnusable, match="not launched as a template"):
            run(rig.backend.save_state(handle, short_dir / "state"))
        assert ("PATCH", "/vm", {"state": "Paused"}) not in rig.requests()
    finally:
        run(rig.backend.shutdown(handle, graceful=False, timeout=0))


def test_vmm_version_is_the_first_line_of_firecracker_version(short_dir: Path) -> None:
    assert Rig(short_dir).backend.vmm_version() == "Firecracker v1.16.1"


# ---------------------------------------------------------------- the client, in process


@pytest.fixture
def served(short_dir: Path) -> Iterator[tuple[FakeFirecrackerApi, FirecrackerClient]]:
    fake = FakeFirecrackerApi(SpecValidator(load_spec()))
    sock = short_dir / "api.sock"
    server = serve_in_thread(sock, fake)
    try:
        yield fake, FirecrackerClient(sock, timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_firecrackers_order_is_enforced_and_reported_with_its_fault_message(
    served: tuple[FakeFirecrackerApi, FirecrackerClient],
) -> None:
    fake, client = served
    with pytest.raises(FirecrackerFault, match="without kernel configuration") as err:
        run(client.call(api.action("InstanceStart")))
    assert err.value.status == 400 and err.value.call.path == "/actions"
    with pytest.raises(FirecrackerFault, match="pause it first"):
        run(client.call(api.ApiCall("PUT", "/snapshot/create", {
            "snapshot_type": "Full", "snapshot_path": "/nonexistent/state",
            "mem_file_path": "/nonexistent/ram"})))
    assert run(client.call(api.ApiCall("GET", "/version"))) == {"firecracker_version": "1.16.1"}


def test_a_hostile_fault_message_reaches_the_user_as_one_bounded_printable_line(
    served: tuple[FakeFirecrackerApi, FirecrackerClient],
) -> None:
    fake, client = served
    fake.faults["PATCH /vm"] = [500, "line one\n\x1b[31mred\x1b[0m\r\n" + "x" * 5000]
    with pytest.raises(FirecrackerFault) as err:
        run(client.call(api.pause()))
    assert err.value.fault.startswith("line one ?[31mred?[0m") and len(err.value.fault) <= 300
    assert err.value.message.isprintable()


def test_a_dead_socket_is_a_host_tool_error_naming_it(short_dir: Path) -> None:
    sock = short_dir / "gone.sock"
    with pytest.raises(HostToolError, match="cannot reach Firecracker's API") as err:
        run(FirecrackerClient(sock, timeout=1).call(api.pause()))
    assert str(sock) in err.value.message


def test_signals_go_only_to_the_proven_vmm(short_dir: Path) -> None:
    rig, spec = Rig(short_dir), make_spec(short_dir)
    handle = run(rig.backend.launch(spec))
    try:
        spec.pidfile.write_text("1\n")  # the pidfile no longer names it: no signal
        with pytest.raises(Exception, match="refusing to signal"):
            rig.backend.kill(handle, signal.SIGTERM)
        spec.pidfile.write_text(f"{handle.pid}\n")
        assert rig.backend.kill(handle, signal.SIGKILL)
        assert run(rig.backend.wait_exit(handle, timeout=5))
    finally:
        run(rig.backend.shutdown(handle, graceful=False, timeout=0))
