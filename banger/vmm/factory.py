"""Which backend runs this host's VMs: ``backend_for(name, host_facts)``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from banger.core.defaults import IMPLEMENTED_BACKENDS
from banger.core.errors import InvalidInput, Unavailable
from banger.core.vmspec import Accel
from banger.host.privileged import HostOps
from banger.host.probes import find_tool
from banger.vmm.base import Backend, choose_accel
from banger.vmm.firecracker import FIRECRACKER_BINARY, FIRECRACKER_RELEASES, FirecrackerBackend
from banger.vmm.qemu import QemuBackend


@dataclass(frozen=True)
class HostFacts:
    """What the host offers that decides the backend and how it runs guests."""

    accel: Accel  # kvm where a standard guest can run, else tcg
    firecracker: Path | None = None  # the firecracker binary on PATH

    @classmethod
    def probe(cls) -> HostFacts:
        return cls(accel=choose_accel(), firecracker=find_tool(FIRECRACKER_BINARY))

    def firecracker_missing(self) -> str | None:
        """What this host lacks to run Firecracker, or None when it has everything."""
        missing = [what for what, absent in (
            ("no firecracker binary on PATH", self.firecracker is None),
            ("no usable KVM (/dev/kvm: see banger doctor)", self.accel != "kvm"),
        ) if absent]
        return " and ".join(missing) or None


def backend_for(name: str, host: HostFacts, ops: HostOps | None = None) -> Backend:
    """The backend called ``name`` (``auto``: the best this host can run), set up for ``host``.

    ``auto`` is Firecracker when its binary and a usable KVM are present, else QEMU.
    ``ops`` is the daemon's privileged seam, through which the backend signals its VMMs.
    """
    if name == "auto":
        name = "firecracker" if host.firecracker_missing() is None else "qemu"
    if name == "qemu":
        return QemuBackend(accel=host.accel, host_ops=ops)
    if name == "firecracker":
        missing = host.firecracker_missing()
        if missing is not None or host.firecracker is None:
            raise Unavailable(
                f"the firecracker backend cannot run here: {missing}",
                hint=f'set backend = "auto" or "qemu", or use a KVM host with firecracker '
                f"from {FIRECRACKER_RELEASES}",
            )
        return FirecrackerBackend(os.fspath(host.firecracker), host_ops=ops)
    raise InvalidInput(
        f"unknown backend {name!r}", hint=f"use auto or one of: {', '.join(IMPLEMENTED_BACKENDS)}"
    )
