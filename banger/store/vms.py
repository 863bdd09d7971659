"""The vms table: VM rows by id or name, state updates, guest IP allocation."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from typing import Any

from banger.core.errors import BangerError, Conflict, NotFound, Unavailable
from banger.core.publish import PortMap
from banger.core.states import check_vm_transition
from banger.core.workspace_state import WorkspaceState
from banger.store.codec import Table, Violation, utcnow
from banger.store.images import image_not_found
from banger.store.kernels import kernel_not_found
from banger.store.records import NetMode, VMRecord, VMState
from banger.store.repo import Repository, invalid, one_by_ref

VMS: Table[VMRecord] = Table(
    "vms",
    VMRecord,
    {
        "state": VMState,
        "net_mode": NetMode,
        "spec": "json",
        "workspace": WorkspaceState,
        "nat": "bool",
        "ports": PortMap,
        "created_at": "time",
        "updated_at": "time",
        "started_at": "time",
        "state_changed_at": "time",
    },
)


# Only ``transition`` writes these.
STATE_FIELDS = frozenset({"state", "state_reason", "state_changed_at"})


def vm_not_found(ref: str) -> NotFound:
    return NotFound(f"VM '{ref}' not found", hint="see the VMs: banger vm list")


class VMRepository(Repository[VMRecord]):
    table = VMS
    immutable = frozenset({"id", "created_at", "updated_at"})
    not_found = staticmethod(vm_not_found)

    def add(self, record: VMRecord) -> VMRecord:
        """Insert a VM; Conflict when its name, IP or MAC is taken, NotFound image/kernel."""
        now = utcnow()
        record = dataclasses.replace(
            record,
            created_at=record.created_at or now,
            updated_at=record.updated_at or now,
            state_changed_at=record.state_changed_at or now,
        )
        self._insert(record, lambda v: self._explain(v, record))
        return self.get_key(record.id)

    def find(self, ref: str) -> VMRecord | None:
        """A user's ref: exactly the VM's name or its id (never a prefix)."""
        return one_by_ref(self._select("id = ? OR name = ?", (ref, ref)), ref, "VM")

    def get(self, ref: str) -> VMRecord:
        found = self.find(ref)
        if found is None:
            raise vm_not_found(ref)
        return found

    def list(self, state: VMState | str | None = None) -> list[VMRecord]:
        if state is None:
            return self._select(order="created_at, name")
        return self._select("state = ?", (VMState(state).value,), order="created_at, name")

    def update(self, vm_id: str, **fields: Any) -> VMRecord:
        """Set ``fields`` (never the state: see ``transition``) and ``updated_at``."""
        self._check_mutable(fields)
        if STATE_FIELDS & fields.keys():
            raise TypeError("vms: the state changes only through transition()")
        return self._write(vm_id, None, fields)

    def transition(self, seen: VMRecord, to: VMState, *, reason: str, **fields: Any) -> VMRecord:
        """Move ``seen`` to state ``to`` (with ``fields``), recording when and why.

        A compare-and-set: it happens only if the VM is still in the state the caller
        saw (``seen.state``), else Conflict, so two requests cannot both win one
        transition; and only along ``VM_TRANSITIONS``, else Conflict.
        """
        self._check_mutable(fields)
        if STATE_FIELDS & fields.keys():
            raise TypeError("vms: pass the new state as `to` and the cause as `reason`")
        change = {"state": to, "state_reason": reason, "state_changed_at": utcnow()}
        return self._write(seen.id, seen.state, {**fields, **change})

    def _write(self, vm_id: str, expect: VMState | None, fields: dict[str, Any]) -> VMRecord:
        with self._store.transaction() as conn:
            current = self._select_one("id = ?", (vm_id,), conn)
            if current is None:
                raise vm_not_found(vm_id)
            if expect is not None:
                if current.state is not expect:
                    raise Conflict(
                        f"VM '{current.name}' is {current.state}, not {expect}",
                        hint=f"check its state: banger vm show {current.name}",
                    )
                check_vm_transition(current.name, current.state, fields["state"])
            merged = dataclasses.replace(current, **fields)
            self._update(
                conn, vm_id, {**fields, "updated_at": utcnow()}, lambda v: self._explain(v, merged)
            )
        return self.get_key(vm_id)

    def delete(self, vm_id: str, *, missing_ok: bool = False) -> None:
        """Delete the row (which releases its guest IP); NotFound unless ``missing_ok``."""
        with self._store.transaction() as conn:
            deleted = conn.execute("DELETE FROM vms WHERE id = ?", (vm_id,)).rowcount
        if not deleted and not missing_ok:
            raise vm_not_found(vm_id)

    def allocate_guest_ip(
        self,
        vm_id: str,
        network: ipaddress.IPv4Network,
        reserved: Iterable[ipaddress.IPv4Address | str] = (),
    ) -> str:
        """Give the VM the lowest free host address of ``network`` and return it.

        ``reserved`` holds addresses never handed out (the bridge's own). Runs in
        one write transaction, so concurrent callers never get the same address;
        the UNIQUE index on guest_ip is the backstop. A VM that already has an
        address in ``network`` keeps it.
        """
        skip = {ipaddress.IPv4Address(str(a)) for a in reserved}
        with self._store.transaction() as conn:
            vm = self._select_one("id = ?", (vm_id,), conn)
            if vm is None:
                raise vm_not_found(vm_id)
            if vm.guest_ip and ipaddress.IPv4Address(vm.guest_ip) in network:
                return vm.guest_ip
            ip = self._lowest_free_ip(conn, network, skip)
            self._update(
                conn,
                vm_id,
                {"guest_ip": ip, "updated_at": utcnow()},
                lambda v: self._explain(v, dataclasses.replace(vm, guest_ip=ip)),
            )
        return ip

    def free_guest_ip(self, network: ipaddress.IPv4Network,
                      reserved: Iterable[ipaddress.IPv4Address | str] = ()) -> str:
        """The lowest host address of ``network`` no VM has and not ``reserved`` (nothing
        is recorded: the caller holds it, e.g. a warm pool member until a VM row takes it)."""
        skip = {ipaddress.IPv4Address(str(a)) for a in reserved}
        return self._lowest_free_ip(self._store.connection(), network, skip)

    @staticmethod
    def _lowest_free_ip(conn: Any, network: ipaddress.IPv4Network,
                        skip: set[ipaddress.IPv4Address]) -> str:
        taken = skip | {
            ipaddress.IPv4Address(r[0])
            for r in conn.execute("SELECT guest_ip FROM vms WHERE guest_ip IS NOT NULL")
        }
        address = next((a for a in network.hosts() if a not in taken), None)
        if address is None:
            raise Unavailable(
                f"no free guest IP left in {network} ({len(taken)} in use or reserved)",
                hint="delete VMs you no longer need, or set a larger bridge_cidr",
            )
        return str(address)

    def _explain(self, violation: Violation, record: VMRecord) -> BangerError:
        if violation.column == "vms.name":
            return Conflict(
                f"VM '{record.name}' already exists",
                hint=f"pick another name, or remove it first: banger vm delete {record.name}",
            )
        if violation.column == "vms.id":
            return Conflict(f"VM id '{record.id}' already exists", hint="this is a bug")
        if violation.column == "vms.guest_ip":
            return Conflict(
                f"guest IP {record.guest_ip} is already used by another VM",
                hint="let banger allocate the address instead of choosing one",
            )
        if violation.column == "vms.mac":
            return Conflict(f"MAC address {record.mac} is already used by another VM")
        if violation.kind == "foreign_key":
            if record.image_id and self._store.images.find_key(record.image_id) is None:
                return image_not_found(record.image_id)
            if record.kernel_name and self._store.kernels.find(record.kernel_name) is None:
                return kernel_not_found(record.kernel_name)
        return invalid(violation, "VM")
