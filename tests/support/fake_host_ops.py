"""A ``HostOps`` that runs nothing and records every call: the seam's test double.

It keeps an in-memory bridge and TAP table so the daemon's network code can
run against it; tests read ``calls`` to see exactly what crossed the seam.
"""

from __future__ import annotations

import signal
from typing import Any

from banger.core.errors import Conflict
from banger.host.jailer import JailedVmm


class RecordingHostOps:
    def __init__(self, *, network: bool = True) -> None:
        self.network = network
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.bridges: dict[str, str] = {}  # name -> owner
        self.taps: dict[str, str] = {}  # name -> bridge
        self.nat: dict[str, set[str]] = {}  # bridge -> the guests in its NAT set
        self.ip_forward = False

    def _record(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    def can_manage_network(self) -> bool:
        self._record("can_manage_network")
        return self.network

    def claim_bridge(self, name: str, cidr: str, owner: str, *, create: bool = True) -> bool:
        self._record("claim_bridge", name, cidr, owner, create)
        if self.bridges.get(name, owner) != owner:
            raise Conflict(f"bridge_name {name}: that bridge belongs to another banger daemon")
        if name not in self.bridges and not create:
            return False
        self.bridges[name] = owner
        return True

    def create_tap(self, name: str, bridge: str, owner_uid: int | None = None) -> None:
        self._record("create_tap", name, bridge, owner_uid)
        self.taps[name] = bridge

    def delete_tap(self, name: str) -> bool:
        self._record("delete_tap", name)
        return self.taps.pop(name, None) is not None

    def taps_on_our_bridge(self, bridge: str, owner: str) -> list[str]:
        self._record("taps_on_our_bridge", bridge, owner)
        if self.bridges.get(bridge) != owner:
            return []
        return sorted(t for t, b in self.taps.items() if b == bridge)

    def signal_vmm(self, pid: int, start_time: int, markers: tuple[str, ...],
                   sig: signal.Signals) -> bool:
        self._record("signal_vmm", pid, start_time, markers, sig)
        return True

    def route_vm_domain(self, bridge: str, resolver: str) -> None:
        self._record("route_vm_domain", bridge, resolver)

    def revert_resolver(self, bridge: str) -> None:
        self._record("revert_resolver", bridge)

    def nat_sync(self, bridge: str, guests: tuple[str, ...]) -> None:
        self._record("nat_sync", bridge, guests)
        self.nat[bridge] = set(guests)

    def nat_add(self, bridge: str, guest: str) -> None:
        self._record("nat_add", bridge, guest)
        self.nat.setdefault(bridge, set()).add(guest)

    def nat_remove(self, bridge: str, guest: str) -> None:
        self._record("nat_remove", bridge, guest)
        self.nat.get(bridge, set()).discard(guest)

    def enable_ip_forward(self) -> None:
        self._record("enable_ip_forward")
        self.ip_forward = True

    def attach_loop(self, backing: str, read_only: bool) -> str:
        self._record("attach_loop", backing, read_only)
        return "/dev/loop7"

    def detach_loop(self, device: str) -> bool:
        self._record("detach_loop", device)
        return True

    def create_snapshot(self, name: str, origin: str, cow: str) -> str:
        self._record("create_snapshot", name, origin, cow)
        return f"/dev/mapper/{name}"

    def remove_snapshot(self, name: str) -> bool:
        self._record("remove_snapshot", name)
        return True

    def launch_jailed(self, jail_id: str, uid: int, gid: int) -> JailedVmm:
        self._record("launch_jailed", jail_id, uid, gid)
        root = f"/run/banger-root/jail/firecracker/{jail_id}/root"
        return JailedVmm(4242, f"{root}/run/firecracker.socket", root)

    def remove_jail(self, jail_id: str, uid: int) -> bool:
        self._record("remove_jail", jail_id, uid)
        return True
