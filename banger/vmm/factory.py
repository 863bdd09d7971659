"""Which backend runs this host's VMs: ``backend_for(name, host_facts)``."""

from __future__ import annotations

from dataclasses import dataclass

from banger.core.defaults import IMPLEMENTED_BACKENDS
from banger.core.errors import InvalidInput, Unavailable
from banger.core.vmspec import Accel
from banger.host.privileged import HostOps
from banger.vmm.base import Backend, choose_accel
from banger.vmm.qemu import QemuBackend
from banger.vmm.traits import TRAITS


@dataclass(frozen=True)
class HostFacts:
    """What the host offers that decides the backend and how it runs guests."""

    accel: Accel  # kvm where a standard guest can run, else tcg

    @classmethod
    def probe(cls) -> HostFacts:
        return cls(accel=choose_accel())


def backend_for(name: str, host: HostFacts, ops: HostOps | None = None) -> Backend:
    """The backend called ``name`` (``auto``: the best this host can run), set up for ``host``.

    ``ops`` is the daemon's privileged seam, through which the backend signals its VMMs.
    """
    chosen = IMPLEMENTED_BACKENDS[0] if name == "auto" else name
    if chosen == "qemu":
        return QemuBackend(accel=host.accel, host_ops=ops)
    if chosen in TRAITS:
        raise Unavailable(
            f"the {chosen} backend is not in this release",
            hint=f'set backend = "auto" or one of: {", ".join(IMPLEMENTED_BACKENDS)}',
        )
    raise InvalidInput(
        f"unknown backend {name!r}", hint=f"use auto or one of: {', '.join(IMPLEMENTED_BACKENDS)}"
    )
