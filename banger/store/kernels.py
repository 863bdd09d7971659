"""The kernels table: stored kernels by name, at most one default."""

from __future__ import annotations

import dataclasses

from banger.core.errors import BangerError, Conflict, NotFound
from banger.core.manifests import KernelManifest
from banger.store.codec import Table, Violation, utcnow
from banger.store.records import KernelRecord
from banger.store.repo import Repository, invalid

KERNELS: Table[KernelRecord] = Table(
    "kernels",
    KernelRecord,
    {"path": "path", "is_default": "bool", "manifest": KernelManifest, "created_at": "time"},
)


def kernel_not_found(name: str) -> NotFound:
    return NotFound(f"kernel '{name}' not found", hint="see the stored kernels: banger kernel list")


class KernelRepository(Repository[KernelRecord]):
    table = KERNELS
    key = "name"
    immutable = frozenset({"name", "created_at"})
    not_found = staticmethod(kernel_not_found)

    def add(self, record: KernelRecord) -> KernelRecord:
        """Insert a kernel; Conflict when the name is taken or a second default is added."""
        if record.created_at is None:
            record = dataclasses.replace(record, created_at=utcnow())
        self._insert(record, lambda v: self._explain(v, record))
        return self.get(record.name)

    def find(self, name: str) -> KernelRecord | None:
        return self._select_one("name = ?", (name,))

    def get(self, name: str) -> KernelRecord:
        found = self.find(name)
        if found is None:
            raise kernel_not_found(name)
        return found

    def list(self) -> list[KernelRecord]:
        return self._select(order="name")

    def get_default(self) -> KernelRecord | None:
        return self._select_one("is_default = 1")

    def set_default(self, name: str) -> KernelRecord:
        """Make ``name`` the one default kernel (atomically un-defaulting the previous one)."""
        with self._store.transaction() as conn:
            if self._select_one("name = ?", (name,), conn) is None:
                raise kernel_not_found(name)
            conn.execute("UPDATE kernels SET is_default = 0 WHERE is_default = 1")
            conn.execute("UPDATE kernels SET is_default = 1 WHERE name = ?", (name,))
        return self.get(name)

    def delete(self, name: str) -> None:
        """Delete a kernel row; Conflict while an image or a VM still refers to it."""
        with self._store.transaction() as conn:
            if self._select_one("name = ?", (name,), conn) is None:
                raise kernel_not_found(name)
            query = "SELECT name FROM {} WHERE kernel_name = ? ORDER BY name"
            images = [r[0] for r in conn.execute(query.format("images"), (name,))]
            vms = [r[0] for r in conn.execute(query.format("vms"), (name,))]
            if images or vms:
                users = [f"image '{n}'" for n in images] + [f"VM '{n}'" for n in vms]
                raise Conflict(
                    f"kernel '{name}' is in use by {', '.join(users)}",
                    hint="delete those first, or keep the kernel",
                )
            conn.execute("DELETE FROM kernels WHERE name = ?", (name,))

    def _explain(self, violation: Violation, record: KernelRecord) -> BangerError:
        if violation.column == "kernels.name":
            return Conflict(
                f"kernel '{record.name}' already exists",
                hint=f"pick another name, or delete it first: banger kernel delete {record.name}",
            )
        if violation.column == "kernels.is_default":
            current = self.get_default()
            return Conflict(
                f"kernel '{current.name if current else '?'}' is already the default",
                hint="add the kernel without is_default, then make it the default",
            )
        return invalid(violation, "kernel")
