"""Wire models shared by the daemon and its client (``/v1``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress

from banger.core.defaults import DEFAULT_IMAGE_SOURCE
from banger.core.manifests import ImageManifest, KernelManifest
from banger.core.publish import PublishedPort
from banger.core.sessions import ARGS_MAX, SEND_BYTES_MAX, SessionInfo
from banger.core.states import OperationState
from banger.core.workspace import WorkspaceMode
from banger.core.workspace_state import WorkspaceState


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestModel(WireModel):
    """A request body: strict types, so ``true`` or ``"2"`` is never read as a count."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorBody(WireModel):
    code: str
    message: str
    op_id: str | None = None
    hint: str | None = None


class Ping(WireModel):
    version: str
    commit: str
    build_time: str
    api_version: str
    pid: int = Field(ge=2)  # the CLI may signal it (daemon stop): never 0, 1 or negative
    uptime_seconds: float
    socket: str
    log_file: str


class CheckStatus(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


class DoctorCheck(WireModel):
    name: str
    status: CheckStatus
    detail: str
    hint: str | None = None


class DoctorReport(WireModel):
    checks: list[DoctorCheck]


class StageState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Stage(WireModel):
    name: str
    state: StageState
    detail: str | None = None
    started_at: datetime
    finished_at: datetime | None = None


class CatalogKernel(WireModel):
    name: str
    description: str
    package: str
    pulled: bool


class KernelCatalog(WireModel):
    kernels: list[CatalogKernel]


class KernelInfo(WireModel):
    name: str
    version: str
    source: str
    path: str
    is_default: bool
    created_at: datetime | None = None
    manifest: KernelManifest | None = None


class KernelList(WireModel):
    kernels: list[KernelInfo]


class KernelImportRequest(RequestModel):
    name: str
    source: str


class ImageInfo(WireModel):
    id: str
    name: str
    source: str
    path: str
    kernel_name: str | None
    is_default: bool
    size_bytes: int
    created_at: datetime | None = None
    manifest: ImageManifest | None = None


class ImageList(WireModel):
    images: list[ImageInfo]


class ImageBuildRequest(RequestModel):
    name: str | None = None
    source: str = DEFAULT_IMAGE_SOURCE
    packages: list[str] = []
    size: str | None = None


class ImagePullRequest(RequestModel):
    ref: str
    name: str | None = None


class ImageImportRequest(RequestModel):
    path: str
    name: str | None = None


class CachePruneRequest(RequestModel):
    dry_run: bool = False


class CachePruneResult(WireModel):
    bytes: int
    blobs: int
    dry_run: bool
    snapshots: int = 0  # stale warm snapshots removed (docs/snapshots.md)


class ImageWarmRequest(RequestModel):
    vcpu: int | None = None
    memory_mib: int | None = None


class SnapshotInfo(WireModel):
    id: str
    image_name: str | None = None
    vcpu: int
    memory_mib: int
    state_bytes: int
    save_seconds: float | None = None
    current: bool  # its key still matches the image, kernel and VMM
    stale: str | None = None  # why it is not current (image deleted, kernel or VMM changed)


class SnapshotList(WireModel):
    snapshots: list[SnapshotInfo]


class VMInfo(WireModel):
    id: str
    name: str
    state: str
    backend: str
    image_id: str | None
    image_name: str | None = None
    kernel_name: str | None
    vcpu: int
    memory_mib: int
    disk_bytes: int
    net_mode: str
    guest_ip: str | None
    ssh_host: str | None = None
    ssh_port: int | None
    tap_name: str | None
    pid: int | None
    last_error: str | None
    state_reason: str | None = None  # why the last change of state happened
    state_changed_at: datetime | None = None
    created_at: datetime | None
    started_at: datetime | None
    workspace: WorkspaceState | None = None
    nat: bool = False
    ports: list[PublishedPort] = []
    started_from: str | None = None  # "snapshot <id>" or "cold (<why>)"


class VMList(WireModel):
    vms: list[VMInfo]


# What a finished operation hands back: the kernel, image, VM or warm snapshot it made or changed.
OperationResult = KernelInfo | ImageInfo | VMInfo | SnapshotInfo


class Operation(WireModel):
    id: str
    kind: str
    target: str | None = None
    state: OperationState
    stages: list[Stage] = []
    result: OperationResult | None = None
    error: ErrorBody | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    revision: int = 0


class OperationList(WireModel):
    operations: list[Operation]


class WorkspaceRequest(RequestModel):
    """``vm workspace prepare`` (and ``vm run PATH``): ``path`` is absolute, on the host."""

    path: str
    mode: WorkspaceMode = Field(default=WorkspaceMode.GIT, strict=False)  # "git" in JSON
    include_untracked: bool = False
    branch: str | None = None
    from_ref: str | None = None


class WorkspaceEntry(WireModel):
    path: str  # non-UTF-8 bytes shown as \\xNN escapes
    kind: str  # file, exec, link or dir
    size: int


class WorkspacePlanInfo(WireModel):
    """What a prepare would ship (``--dry-run``)."""

    top: Path
    mode: WorkspaceMode
    head_commit: str | None
    branch: str | None
    entries: list[WorkspaceEntry]
    files: int
    bytes: int


class WorkspaceInfo(WireModel):
    """A VM's workspace, and whether the host repository moved on since it was prepared."""

    vm: str
    workspace: WorkspaceState
    host_head: str | None  # the host repository's HEAD now (None: unreadable or none)
    head_moved: bool


class ChangedFile(WireModel):
    status: str  # git's letter: A, M, D, R100, T ...
    path: str  # as the guest reported it, escaped for display
    old_path: str | None = None  # for renames and copies


class WorkspaceExport(WireModel):
    """The guest's changes as a patch (``git apply``-able on the host), and the files it touches."""

    vm: str
    base: str  # the tree or commit the patch starts from
    files: list[ChangedFile]
    patch_b64: str


class WorkspaceExportRequest(RequestModel):
    base_commit: str | None = None


class VMCreateRequest(RequestModel):
    name: str | None = None
    image: str | None = None
    vcpu: int | None = None
    memory_mib: int | None = None
    disk: str | None = None
    start: bool = True
    workspace: WorkspaceRequest | None = None  # prepared once the VM is up
    nat: bool = False
    publish: list[str] = Field(default=[], max_length=64)  # core/publish.py parses each
    cold: bool = False  # boot even when a warm snapshot matches (docs/snapshots.md)


class VMSetRequest(RequestModel):
    vcpu: int | None = None
    memory_mib: int | None = None
    disk: str | None = None
    nat: bool | None = None


class GuestPort(WireModel):
    """One listening socket in a guest (``vm ports``), from ``ss`` inside it."""

    proto: str = Field(pattern=r"^(tcp|udp)$")
    address: str  # as the guest listens: 0.0.0.0, ::, 127.0.0.1, ...
    port: int = Field(ge=1, le=65535)
    process: str | None = None
    endpoint: str  # NAME.vm:PORT
    url: str | None = None  # http://NAME.vm:PORT/ when the port answers HTTP


class VMPorts(WireModel):
    vm: str
    ports: list[GuestPort]
    unparsed: int = 0  # lines of the guest's answer that were not understood


class VMKillRequest(RequestModel):
    signal: str = "KILL"


class SSHTarget(WireModel):
    """How to reach a running VM over SSH; the CLI builds the ``ssh`` argv from it."""

    host: IPvAnyAddress
    port: int = Field(ge=1, le=65535)
    user: str = Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    key: Path
    known_hosts: Path
    control_path: Path | None = None


class SSHConfigRequest(RequestModel):
    install: bool


class SSHConfigResult(WireModel):
    user_config: Path
    managed: Path
    installed: bool
    changed: bool


class LogChunk(WireModel):
    text: str
    offset: int


class HostUsage(WireModel):
    """A VM as the host sees it: its VMM process, its TAP, its files."""

    cpu_percent: float | None = None  # of one CPU over the sample (200 = two CPUs busy)
    rss_bytes: int | None = None  # the VMM's resident memory
    tap_rx_bytes: int | None = None  # what the guest sent (the TAP's rx)
    tap_tx_bytes: int | None = None  # what the guest received
    disk_bytes: int = 0  # allocated to the VM's files (overlay, work disk, logs)


class GuestDisk(WireModel):
    mount: str
    total_bytes: int
    used_bytes: int
    available_bytes: int


class GuestUsage(WireModel):
    """What the guest says of itself (one command over its SSH connection, parsed strictly)."""

    load: list[float] | None = None  # 1, 5 and 15 minutes
    mem_total_bytes: int | None = None
    mem_available_bytes: int | None = None
    mem_used_bytes: int | None = None
    uptime_seconds: float | None = None
    boot_id: str | None = None
    disks: list[GuestDisk] = []  # "/" and "/root" (when it is its own filesystem)
    ssh_sessions: int | None = None
    unparsed: int = 0  # sections and lines of its answer that were not understood


class VMStats(WireModel):
    vm: str
    state: str
    host: HostUsage
    guest: GuestUsage | None = None
    guest_error: str | None = None  # why there is no guest view ("not running", no answer)


class VMHealth(WireModel):
    vm: str
    state: str
    healthy: bool  # its sshd answered a command
    uptime_seconds: float | None = None
    boot_id: str | None = None
    error: str | None = None


class TopHost(WireModel):
    cpus: int
    memory_mib: int | None
    vcpus_reserved: int  # by running VMs
    memory_mib_reserved: int
    fs_total_bytes: int  # the filesystem holding banger's state
    fs_free_bytes: int
    banger_bytes: int  # allocated under banger's state dir (images, kernels, VMs)


class TopVM(WireModel):
    name: str
    state: str
    vcpu: int
    memory_mib: int
    started_at: datetime | None = None
    host: HostUsage
    guest: GuestUsage | None = None  # refreshed every few seconds, not every call
    guest_error: str | None = None


class TopView(WireModel):
    host: TopHost
    vms: list[TopVM]


class SessionStartRequest(RequestModel):
    """``vm session start``: the command (argv), checked again by the daemon."""

    name: str | None = None
    cwd: str | None = None  # default: the workspace if one was prepared, else /root
    pipe: bool = False
    command: list[str] = Field(min_length=1, max_length=ARGS_MAX)


SEND_B64_MAX = (SEND_BYTES_MAX + 2) // 3 * 4


class SessionSendRequest(RequestModel):
    data_b64: str = Field(max_length=SEND_B64_MAX)


class SessionSent(WireModel):
    vm: str
    name: str
    bytes: int


class SessionList(WireModel):
    vm: str
    sessions: list[SessionInfo]
    unparsed: int = 0  # records of the guest's answer that were not understood


class SessionOutput(WireModel):
    """A chunk of a session's output: ``data_b64`` covers offsets ``start`` to ``next``."""

    session: SessionInfo
    since: int  # what was asked
    start: int  # where the chunk starts (> since when older output was rotated away)
    next: int
    data_b64: str
