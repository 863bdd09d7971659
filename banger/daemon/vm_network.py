"""How a VM reaches the network: a TAP on banger's bridge, or the VMM's user-mode networking.

TAP mode needs CAP_NET_ADMIN (root, or the root helper in a system install);
without it VMs fall back to user-mode networking with SSH forwarded to a
loopback port (``vm show`` says which a VM has). Every privileged step (the
bridge, TAPs, the reap) goes through the ``HostOps`` it is given, so it runs the
same whichever transport (in-process or the root helper) carries it out.

The bridge is this daemon's alone (see ``host.net``): it is claimed when a VM is
created or first boots, and adopted (if it already exists) at daemon start, so a
second daemon on the same ``bridge_name`` is refused before it reserves anything.

A VM's network is also its NAT (``vm_nat.py``: its address in banger's nftables
set) and its published ports: in TAP mode a forwarder on the daemon's loop per
port (``host/portfwd.py``), in user-mode networking the VMM's own forwarding. ``attach``
sets all of it up and ``detach`` gives it all back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable

import structlog

from banger.core.errors import BangerError, Conflict
from banger.core.publish import PublishedPort
from banger.core.states import NetMode, VMState
from banger.core.vmspec import NetSpec, TapNet, UserNet
from banger.daemon.background import BackgroundTasks
from banger.daemon.vm_nat import NatTable
from banger.host import net, portfwd
from banger.host.portfwd import Forward
from banger.host.privileged import HostOps
from banger.store.db import Store
from banger.store.records import VMRecord

log = structlog.get_logger("banger.daemon.vm_network")

TAP_POOL_SIZE = 2


def choose_net_mode(kinds: frozenset[NetMode], net_admin: bool) -> NetMode:
    """TAP when the backend offers it and we may make TAPs, else the backend's user mode."""
    if NetMode.TAP in kinds and (net_admin or NetMode.USER not in kinds):
        return NetMode.TAP  # a TAP-only backend without CAP_NET_ADMIN fails at the bridge
    if NetMode.USER in kinds:
        return NetMode.USER
    raise ValueError(f"a backend offers no network kind: {sorted(kinds)}")


class VMNetwork:
    def __init__(
        self,
        store: Store,
        bridge_name: str,
        bridge_cidr: str,
        owner: str,
        kinds: frozenset[NetMode],
        ops: HostOps,
    ) -> None:
        self.store = store
        self.bridge_name = bridge_name
        self.bridge = ipaddress.IPv4Interface(bridge_cidr)
        self.owner = owner
        self.ops = ops
        self.mode = choose_net_mode(kinds, ops.can_manage_network())
        self._pool: net.TapPool | None = None
        self._ready = asyncio.Lock()
        self._tasks = BackgroundTasks()
        self.nat = NatTable(store, bridge_name, ops, self.mode)
        self._on_bridge: list[Callable[[], Awaitable[None]]] = [self.nat.bridge_up]
        self._forwards: dict[str, list[Forward]] = {}  # TAP mode: vm id -> its published ports
        self._held: set[str] = set()  # addresses held by no row: warm pool members (vm_pool.py)

    def on_bridge_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call ``callback`` after every successful claim of the bridge (it must be
        idempotent and must not raise): services that listen on the bridge start there."""
        self._on_bridge.append(callback)

    async def _bridge_up(self) -> None:
        for callback in self._on_bridge:
            await callback()

    async def _tap_pool(self) -> net.TapPool:
        """Create the bridge and the idle TAP pool on first use."""
        async with self._ready:
            if self._pool is None:
                self._pool = await asyncio.to_thread(self._make_pool)
                await self._bridge_up()
            return self._pool

    def _make_pool(self) -> net.TapPool:
        """Bridge up and an empty pool (pyroute2 is blocking: run in a thread)."""
        self._claim()
        return net.TapPool(self.ops, self.bridge_name, size=TAP_POOL_SIZE)

    def _claim(self, create: bool = True) -> bool:
        return self.ops.claim_bridge(self.bridge_name, str(self.bridge), self.owner, create=create)

    async def claim_bridge(self) -> None:
        """TAP mode: make the bridge ours, or raise ``Conflict`` naming the config key to change."""
        if self.mode is NetMode.TAP:
            await asyncio.to_thread(self._claim)
            await self._bridge_up()

    def allocate_ip(self, vm_id: str) -> str | None:
        """Reserve the VM's guest address (TAP mode only); kept until the VM is deleted."""
        if self.mode is not NetMode.TAP:
            return None
        return self.store.vms.allocate_guest_ip(
            vm_id, self.bridge.network, reserved={str(self.bridge.ip), *self._held}
        )

    def hold_ip(self) -> str | None:
        """TAP mode: a guest address for something with no row yet (a warm pool member);
        ``allocate_ip`` never hands it out until ``release_ip``."""
        if self.mode is not NetMode.TAP:
            return None
        ip = self.store.vms.free_guest_ip(
            self.bridge.network, reserved={str(self.bridge.ip), *self._held})
        self._held.add(ip)
        return ip

    def release_ip(self, ip: str | None) -> None:
        """Stop holding ``ip`` (its pool member is gone, or a VM row now has it)."""
        self._held.discard(ip or "")

    def check_ports_free(self, ports: tuple[PublishedPort, ...]) -> None:
        """Conflict when a host port to publish is taken now (create, and user-mode start)."""
        for port in ports:
            portfwd.check_free(port)

    async def attach(self, vm: VMRecord) -> tuple[NetSpec, str | None, int]:
        """The VM's network for one boot: its spec, its TAP (if any) and its SSH port.

        In TAP mode also its NAT and its published ports; a failure gives back what
        this attach took.
        """
        mac = vm.mac or net.allocate_mac(vm.id)
        if vm.net_mode is NetMode.USER:
            await asyncio.to_thread(self.check_ports_free, vm.published)
            port = net.free_loopback_port()
            return UserNet(ssh_host_port=port, mac=mac, forwards=vm.published), None, port
        pool = await self._tap_pool()
        assert vm.guest_ip is not None
        async with contextlib.AsyncExitStack() as undo:
            tap = await asyncio.to_thread(pool.acquire)
            undo.push_async_callback(self.detach, tap, None)
            self._tasks.spawn(pool.arefill(), name="refill the TAP pool")
            await self.open_rules(vm)
            undo.pop_all()
        spec = TapNet(
            tap_name=tap,
            mac=mac,
            guest_ip=f"{vm.guest_ip}/{self.bridge.network.prefixlen}",
            gateway=str(self.bridge.ip),
            dns=(str(self.bridge.ip),),  # bangerd answers there (daemon/dns_service.py)
        )
        return spec, tap, 22

    async def open_rules(self, vm: VMRecord) -> None:
        """A TAP-networked VM's NAT and published ports (at its attach, or when a warm pool
        member becomes it); all or none. With user-mode networking there are none to add
        (the VMM forwards ports from its argv)."""
        if vm.net_mode is NetMode.USER:
            if vm.nat or vm.published:
                raise ValueError("user-mode networking forwards ports at the VMM's launch")
            return
        assert vm.guest_ip is not None
        if vm.nat:
            self.nat.check_available()
        async with contextlib.AsyncExitStack() as undo:
            if vm.nat:
                await self.nat.add(vm.guest_ip)
                undo.push_async_callback(self.nat.remove, vm.guest_ip)
            await self._open_forwards(vm)
            undo.pop_all()

    async def attach_template(self, mac: str) -> tuple[TapNet | UserNet, str | None]:
        """A snapshot template's network: the same kind its clones get, no address
        (the template is never reached; each clone gets its own over the channel)."""
        if self.mode is NetMode.USER:
            return UserNet(ssh_host_port=net.free_loopback_port(), mac=mac), None
        pool = await self._tap_pool()
        tap = await asyncio.to_thread(pool.acquire)
        self._tasks.spawn(pool.arefill(), name="refill the TAP pool")
        unused = f"{self.bridge.network.network_address}/{self.bridge.network.prefixlen}"
        return TapNet(tap_name=tap, mac=mac, guest_ip=unused, gateway=str(self.bridge.ip)), tap

    async def _open_forwards(self, vm: VMRecord) -> None:
        """Bind the VM's published ports (all or none: Conflict names the taken one)."""
        await self._close_forwards(vm.id)
        assert vm.guest_ip is not None
        opened: list[Forward] = []
        try:
            for port in vm.published:
                opened.append(await Forward.open(port, vm.guest_ip))
        except BaseException:
            for forward in opened:
                await forward.close()
            raise
        if opened:
            self._forwards[vm.id] = opened

    async def _close_forwards(self, vm_id: str) -> None:
        for forward in self._forwards.pop(vm_id, []):
            await forward.close()

    async def reconcile(self) -> None:
        """Daemon start: adopt an existing bridge of ours (stamp it, pin its MAC), delete its
        TAPs that no VM holds (a killed daemon's idle pool), remake the NAT table from the
        store, and publish the running VMs' ports again."""
        if self.mode is not NetMode.TAP:
            return
        in_use = {vm.tap_name for vm in self.store.vms.list() if vm.tap_name}

        def reap() -> bool:
            try:
                if not self._claim(create=False):
                    return False
            except Conflict as exc:  # refused again, to the user, at the first vm create
                log.warning("not using the bridge", error=str(exc), hint=exc.hint)
                return False
            for tap in self.ops.taps_on_our_bridge(self.bridge_name, self.owner):
                if tap not in in_use:
                    self.ops.delete_tap(tap)
            return True

        if not await asyncio.to_thread(reap):
            return
        await self._bridge_up()  # the NAT table first (``nat.bridge_up``)
        for vm in self.store.vms.list(VMState.RUNNING):
            if vm.tap_name and vm.published:
                try:
                    await self._open_forwards(vm)
                except BangerError as exc:
                    log.warning("cannot publish a running VM's ports", vm=vm.name,
                                error=exc.message, hint=exc.hint)

    async def detach(self, tap_name: str | None, vm: VMRecord | None = None) -> None:
        """Give back a VM's TAP, and with ``vm`` its published ports and NAT (idempotent)."""
        if vm is not None:
            await self._close_forwards(vm.id)
            if vm.nat and vm.guest_ip and vm.net_mode is NetMode.TAP:
                await self.nat.remove(vm.guest_ip)
        if tap_name:
            await asyncio.to_thread(self.ops.delete_tap, tap_name)

    def ssh_endpoint(self, vm: VMRecord) -> tuple[str, int]:
        if vm.net_mode is NetMode.USER:
            assert vm.ssh_port is not None
            return "127.0.0.1", vm.ssh_port
        assert vm.guest_ip is not None
        return vm.guest_ip, 22

    async def close(self) -> None:
        for vm_id in list(self._forwards):
            await self._close_forwards(vm_id)
        await self._tasks.aclose()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.drain)
