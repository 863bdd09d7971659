"""Frozen rows of the state database, as the repositories hand them out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from banger.core.manifests import ImageManifest, KernelManifest
from banger.core.publish import PortMap, PublishedPort
from banger.core.states import NetMode, OperationState, VMState
from banger.core.workspace_state import WorkspaceState


@dataclass(frozen=True)
class KernelRecord:
    """A stored kernel; ``path`` is its directory under the state dir."""

    name: str
    version: str
    source: str
    path: Path
    is_default: bool = False
    manifest: KernelManifest | None = None
    created_at: datetime | None = None  # set by ``add`` when None


@dataclass(frozen=True)
class ImageRecord:
    """A stored image; ``kernel_name`` None means "the default kernel"."""

    id: str
    name: str
    source: str
    path: Path
    kernel_name: str | None = None
    is_default: bool = False
    size_bytes: int = 0
    manifest: ImageManifest | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class VMRecord:
    """A VM row; ``spec`` holds whatever the create request asked for, verbatim."""

    id: str
    name: str
    backend: str
    vcpu: int
    memory_mib: int
    disk_bytes: int
    image_id: str | None = None
    kernel_name: str | None = None
    state: VMState = VMState.CREATING
    state_reason: str | None = None  # why the last transition happened
    state_changed_at: datetime | None = None  # set by ``add`` and ``transition``
    net_mode: NetMode = NetMode.TAP
    guest_ip: str | None = None
    mac: str | None = None
    tap_name: str | None = None
    ssh_port: int | None = None
    pid: int | None = None
    last_error: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    workspace: WorkspaceState | None = None
    nat: bool = False  # its traffic leaves the host, masqueraded (TAP mode)
    ports: PortMap | None = None  # its published ports
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    started_from: str | None = None  # "snapshot <id>" or "cold (<why>)"
    snapshot_id: str | None = None  # the warm snapshot its root overlay is backed by

    @property
    def published(self) -> tuple[PublishedPort, ...]:
        return self.ports.ports if self.ports is not None else ()


@dataclass(frozen=True)
class OperationRecord:
    """A long-running daemon operation; ``stages`` is a JSON list, ``error`` a wire error."""

    id: str
    kind: str
    target: str | None = None
    state: OperationState = OperationState.PENDING
    stages: list[Any] = field(default_factory=list)
    result: Any = None
    error: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
