"""The daemon's long-lived objects, built once at start and shared by every request."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from banger.config import Settings
from banger.daemon.image_service import ImageService
from banger.daemon.kernel_service import KernelService
from banger.daemon.operations import OperationRegistry
from banger.store.db import Store


@dataclass
class Daemon:
    settings: Settings
    store: Store
    operations: OperationRegistry
    kernels: KernelService
    images: ImageService
    allowed_uids: frozenset[int]
    started_at: float = field(default_factory=time.monotonic)
    request_shutdown: Callable[[], None] = lambda: None

    @classmethod
    def build(cls, settings: Settings, store: Store, operations: OperationRegistry,
              allowed_uids: frozenset[int]) -> Daemon:
        paths = settings.paths
        kernels = KernelService(store, paths.kernels, paths.cache_dir)
        images = ImageService(store, kernels, paths.images, paths.cache_dir)
        return cls(settings, store, operations, kernels, images, allowed_uids)
