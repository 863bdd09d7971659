"""Firecracker's API calls for a ``VMSpec``, as data (pure: no I/O).

``boot_calls`` is the ordered configuration of a fresh Firecracker process up to
``InstanceStart``; the snapshot helpers are the calls of a save and a restore.
Every body is checked against Firecracker's OpenAPI spec by
``tests/contract/test_firecracker_api.py`` (spec version ``SPEC_VERSION``).

Paths a snapshot records are relative. Firecracker has no way to point a
restored VM at other disks (``/snapshot/load`` overrides only TAPs and the
vsock socket), so the drives and the vsock socket are named relative to the
VMM's working directory, the VM's own run dir, where ``root.disk`` and
``work.disk`` are links to the VM's own files (``disk_links``). A clone started
in its run dir therefore opens its own disks: the jailer's chroot trick,
without a jail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from banger.core.errors import InvalidInput
from banger.core.vmspec import AGENT_SOCKET, TapNet, VMSpec, kernel_cmdline

SPEC_VERSION = "1.16.1"  # the OpenAPI spec the bodies are written against
ROOT_DRIVE, WORK_DRIVE, NET_IFACE = "root", "work", "net0"
ROOT_LINK, WORK_LINK = "root.disk", "work.disk"  # in the run dir (the VMM's cwd)
AGENT_PORT = 52  # the guest's vsock port of the banger agent
GUEST_CID = 3  # the first CID a guest may have

Method = Literal["GET", "PUT", "PATCH"]


@dataclass(frozen=True)
class ApiCall:
    """One request: method, path and JSON body (None: no body)."""

    method: Method
    path: str
    body: dict[str, Any] | None = None


def disk_links(spec: VMSpec) -> dict[str, Path]:
    """Link names in the run dir -> the VM's disks (``ROOT_LINK`` is ``/dev/vda``)."""
    return {ROOT_LINK: spec.root.path, WORK_LINK: spec.work_disk}


def memory_file(spec: VMSpec) -> Path:
    """The file of a template's or clone's RAM (``VMSpec.memory_file``: the daemon names it)."""
    if spec.snapshot_role is None or spec.memory_file is None:
        raise InvalidInput(f"VM {spec.name} has no memory file: it is no snapshot's template "
                           "or clone", hint="launch it with a snapshot role and memory file")
    return spec.memory_file


def _require_firecracker_shape(spec: VMSpec) -> None:
    if spec.root.format != "raw":
        raise InvalidInput(f"Firecracker opens raw disks only, not {spec.root.format}",
                           hint="use the raw root overlay of the firecracker traits")
    if spec.net is not None and not isinstance(spec.net, TapNet):
        raise InvalidInput("Firecracker has no user-mode networking",
                           hint="use a TAP on the bridge (network mode tap)")
    if spec.accel != "kvm":
        raise InvalidInput("Firecracker runs guests under KVM only", hint="use the qemu backend")


def _drive(drive_id: str, link: str, *, root: bool) -> ApiCall:
    body = {"drive_id": drive_id, "path_on_host": link, "is_root_device": root,
            "is_read_only": False}
    return ApiCall("PUT", f"/drives/{drive_id}", body)


def boot_calls(spec: VMSpec) -> list[ApiCall]:
    """Configure a fresh Firecracker for ``spec`` and start the guest, in order."""
    _require_firecracker_shape(spec)
    boot: dict[str, Any] = {"kernel_image_path": str(spec.kernel),
                            "boot_args": kernel_cmdline(spec)}
    if spec.initrd is not None:
        boot["initrd_path"] = str(spec.initrd)
    calls = [
        ApiCall("PUT", "/machine-config", {"vcpu_count": spec.vcpu,
                                           "mem_size_mib": spec.memory_mib, "smt": False}),
        ApiCall("PUT", "/serial", {"serial_out_path": str(spec.console_log)}),
        ApiCall("PUT", "/boot-source", boot),
        _drive(ROOT_DRIVE, ROOT_LINK, root=True),
        _drive(WORK_DRIVE, WORK_LINK, root=False),
    ]
    if isinstance(spec.net, TapNet):
        calls.append(ApiCall("PUT", f"/network-interfaces/{NET_IFACE}", {
            "iface_id": NET_IFACE, "host_dev_name": spec.net.tap_name,
            "guest_mac": spec.net.mac}))
    if spec.snapshot_role is not None:  # the control channel, as on QEMU (vmm/channel.py)
        calls.append(ApiCall("PUT", "/vsock", {"guest_cid": GUEST_CID,
                                               "uds_path": AGENT_SOCKET}))
    calls.append(action("InstanceStart"))
    return calls


def action(kind: Literal["InstanceStart", "SendCtrlAltDel", "FlushMetrics"]) -> ApiCall:
    return ApiCall("PUT", "/actions", {"action_type": kind})


def pause() -> ApiCall:
    return ApiCall("PATCH", "/vm", {"state": "Paused"})


def resume() -> ApiCall:
    return ApiCall("PATCH", "/vm", {"state": "Resumed"})


def snapshot_create(template: VMSpec, state: Path) -> ApiCall:
    """Save a paused guest: device state to ``state``, RAM to the template's memory file."""
    return ApiCall("PUT", "/snapshot/create", {
        "snapshot_type": "Full", "snapshot_path": str(state),
        "mem_file_path": str(memory_file(template))})


def snapshot_load(spec: VMSpec, state: Path) -> ApiCall:
    """Load ``state`` and the clone ``spec``'s memory file into a fresh Firecracker, paused
    (``resume()`` runs it, as QEMU's clones wait for ``cont``).

    The clone's TAP replaces the template's (``network_overrides``, 1.16+); its
    disks and vsock socket are the relative names the template used.
    """
    _require_firecracker_shape(spec)
    body: dict[str, Any] = {
        "snapshot_path": str(state),
        "mem_backend": {"backend_type": "File", "backend_path": str(memory_file(spec))},
        "resume_vm": False,
    }
    if isinstance(spec.net, TapNet):
        body["network_overrides"] = [{"iface_id": NET_IFACE, "host_dev_name": spec.net.tap_name}]
    return ApiCall("PUT", "/snapshot/load", body)


def grow_work_disk() -> ApiCall:
    """Re-read the work disk's size (a clone's own disk is not the template's)."""
    return ApiCall("PATCH", f"/drives/{WORK_DRIVE}", {"drive_id": WORK_DRIVE,
                                                     "path_on_host": WORK_LINK})
