"""NAT for ``--nat`` guests: their addresses in banger's nftables set, kept in step with the store.

The table (``host/nat.py``) is made the first time the bridge comes up in a
daemon's life, and remade at daemon start with exactly the addresses of the
running NAT VMs, so whatever a killed daemon left is put right. After that a VM
adds its address when its network attaches and removes it on teardown: set
elements only. Every step goes through ``HostOps``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from banger.core.errors import BangerError, Unavailable
from banger.core.states import NetMode
from banger.host import nat
from banger.host.privileged import HostOps
from banger.host.probes import have_tool
from banger.store.db import Store
from banger.store.records import VMRecord

log = structlog.get_logger("banger.daemon.vm_nat")


@dataclass(frozen=True)
class NatStatus:
    """What doctor reports of NAT (docs/doctor.md)."""

    net_mode: NetMode
    table: str
    made: bool  # this daemon has made (or remade) its table
    guests: int
    error: str | None  # why the last table change failed


def holds_nat(vm: VMRecord) -> bool:
    """A VM whose address belongs in the set: NAT asked, a TAP attached, an address."""
    return vm.nat and vm.net_mode is NetMode.TAP and bool(vm.guest_ip) and bool(vm.tap_name)


class NatTable:
    def __init__(self, store: Store, bridge: str, ops: HostOps, mode: NetMode) -> None:
        self.store = store
        self.bridge = bridge
        self.ops = ops
        self.mode = mode
        self.error: str | None = None  # why the last table change failed, for doctor
        self._synced = False
        self._lock = asyncio.Lock()

    def check_available(self, vm_mode: NetMode | None = None) -> None:
        """Refuse ``--nat`` where this daemon (or a VM in ``vm_mode``) cannot have it."""
        if (vm_mode or self.mode) is not NetMode.TAP:
            who = ("this daemon runs user-mode networking (it lacks CAP_NET_ADMIN)"
                   if self.mode is not NetMode.TAP else "this VM has user-mode networking")
            raise Unavailable(
                f"--nat needs TAP networking, and {who}",
                hint="run bangerd as root or with CAP_NET_ADMIN (banger system install); "
                "or drop --nat: a user-mode guest reaches the network through its VMM itself",
            )
        if not have_tool("nft"):
            raise Unavailable("--nat needs nftables, and nft is not installed",
                              hint="install it: sudo apt-get install nftables")

    def status(self) -> NatStatus:
        """A snapshot for doctor (taken on the loop)."""
        return NatStatus(self.mode, nat.table_name(self.bridge), self._synced,
                         len(self.guests()), self.error)

    def guests(self) -> tuple[str, ...]:
        """What the set must hold, from the store."""
        return tuple(sorted(str(vm.guest_ip) for vm in self.store.vms.list() if holds_nat(vm)))

    async def sync(self) -> None:
        """Remake the table with exactly the store's NAT guests (daemon start)."""
        async with self._lock:
            await self._sync()

    async def _sync(self) -> None:
        guests = self.guests()
        await asyncio.to_thread(self.ops.nat_sync, self.bridge, guests)
        self._synced, self.error = True, None
        log.info("NAT table in step with the store", table=nat.table_name(self.bridge),
                 guests=list(guests))

    async def bridge_up(self) -> None:
        """Make the table at the first TAP use in this daemon's life (at daemon start, once
        reconcile has put the VMs right), from the store; its forward rules isolate
        non-NAT guests. Never raises: without nft there is no table, and ``--nat`` is
        refused at create.
        """
        async with self._lock:
            if self._synced:
                return
            if not have_tool("nft"):
                self.error = "nft is not installed"
                return
            try:
                await self._sync()
            except BangerError as exc:
                self.error = exc.message
                log.warning("cannot make the NAT table", error=exc.message)

    async def add(self, guest: str) -> None:
        """Let ``guest`` out (turning IPv4 forwarding on if it is off)."""
        async with self._lock:
            if not self._synced:
                await self._sync()
            if nat.ip_forwarding() is False:
                await asyncio.to_thread(self.ops.enable_ip_forward)
                log.info("IPv4 forwarding turned on for a NAT guest", guest=guest)
            await asyncio.to_thread(self.ops.nat_add, self.bridge, guest)

    async def remove(self, guest: str) -> None:
        """Take ``guest`` out of the set (idempotent; a failure is logged: teardown goes on).

        Before this daemon made the table (a teardown during reconcile) there may be no
        table at all; the resync that ends reconcile makes the set exact anyway.
        """
        async with self._lock:
            try:
                await asyncio.to_thread(self.ops.nat_remove, self.bridge, guest)
            except BangerError as exc:
                if self._synced:
                    self.error = exc.message
                    log.warning("cannot remove a guest from the NAT set", guest=guest,
                                error=exc.message)
