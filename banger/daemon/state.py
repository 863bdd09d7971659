"""The daemon's long-lived objects, built once at start and shared by every request."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from banger.config import Settings
from banger.daemon.dns_service import DnsService
from banger.daemon.image_service import ImageService
from banger.daemon.kernel_service import KernelService
from banger.daemon.operations import OperationRegistry
from banger.daemon.session_service import SessionService
from banger.daemon.ssh_config_service import SSHConfigService
from banger.daemon.vm_create import VMCreator
from banger.daemon.vm_idle import IdleStopper
from banger.daemon.vm_network import VMNetwork
from banger.daemon.vm_runtime import VMRuntime
from banger.daemon.vm_service import VMService
from banger.daemon.vm_stats import VMStatsService
from banger.daemon.workspace_service import WorkspaceService
from banger.host import net
from banger.host.install import helper_socket_for
from banger.host.privileged import host_ops_for
from banger.store.db import Store
from banger.vmm.factory import HostFacts, backend_for


@dataclass
class Daemon:
    settings: Settings
    store: Store
    operations: OperationRegistry
    kernels: KernelService
    images: ImageService
    vms: VMService
    creator: VMCreator
    workspaces: WorkspaceService
    ssh_config: SSHConfigService
    dns: DnsService
    stats: VMStatsService
    idle: IdleStopper
    sessions: SessionService
    allowed_uids: frozenset[int]
    started_at: float = field(default_factory=time.monotonic)
    request_shutdown: Callable[[], None] = lambda: None

    @classmethod
    def build(cls, settings: Settings, store: Store, operations: OperationRegistry,
              allowed_uids: frozenset[int]) -> Daemon:
        paths = settings.paths
        kernels = KernelService(store, paths.kernels, paths.cache_dir)
        images = ImageService(store, kernels, paths.images, paths.cache_dir)
        owner = net.owner_alias(os.getuid(), str(paths.state_dir.resolve()))
        host_ops = host_ops_for(helper_socket_for(settings.helper_socket))
        backend = backend_for(settings.backend, HostFacts.probe(), host_ops)
        network = VMNetwork(store, settings.bridge_name, settings.bridge_cidr, owner,
                            backend.traits.net_kinds, host_ops)
        vms = VMService(VMRuntime(settings, store, network, backend))
        workspaces = WorkspaceService(vms.rt)
        creator = VMCreator(vms, images, workspaces)
        dns = DnsService(settings, store, network)
        stats = VMStatsService(vms.rt)
        sessions = SessionService(vms.rt)
        idle = IdleStopper(vms, stats, operations, settings.auto_stop_stale_after,
                           banger_sessions=sessions.running_count)
        return cls(settings, store, operations, kernels, images, vms, creator, workspaces,
                   SSHConfigService(vms.rt), dns, stats, idle, sessions, allowed_uids)
