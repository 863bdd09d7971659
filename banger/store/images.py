"""The images table: stored images by id or name, at most one default."""

from __future__ import annotations

import builtins
import dataclasses

from banger.core.errors import BangerError, Conflict, NotFound
from banger.core.manifests import ImageManifest
from banger.store.codec import Table, Violation, utcnow
from banger.store.kernels import kernel_not_found
from banger.store.records import ImageRecord
from banger.store.repo import Repository, invalid, one_by_ref

IMAGES: Table[ImageRecord] = Table(
    "images",
    ImageRecord,
    {"path": "path", "is_default": "bool", "manifest": ImageManifest, "created_at": "time"},
)


def image_not_found(ref: str) -> NotFound:
    return NotFound(f"image '{ref}' not found", hint="see the stored images: banger image list")


class ImageRepository(Repository[ImageRecord]):
    table = IMAGES
    not_found = staticmethod(image_not_found)

    def add(self, record: ImageRecord) -> ImageRecord:
        """Insert an image; Conflict on a taken name/id or a second default, NotFound kernel."""
        if record.created_at is None:
            record = dataclasses.replace(record, created_at=utcnow())
        self._insert(record, lambda v: self._explain(v, record))
        return self.get_key(record.id)

    def find(self, ref: str) -> ImageRecord | None:
        """A user's ref: exactly the image's name or its id (never a prefix)."""
        return one_by_ref(self._select("id = ? OR name = ?", (ref, ref)), ref, "image")

    def get(self, ref: str) -> ImageRecord:
        found = self.find(ref)
        if found is None:
            raise image_not_found(ref)
        return found

    def list(self) -> list[ImageRecord]:
        return self._select(order="name")

    def get_default(self) -> ImageRecord | None:
        return self._select_one("is_default = 1")

    def set_default(self, ref: str) -> ImageRecord:
        """Make the image the one default (``banger image promote``)."""
        with self._store.transaction():
            image = self.get(ref)
            conn = self._store.connection()
            conn.execute("UPDATE images SET is_default = 0 WHERE is_default = 1")
            conn.execute("UPDATE images SET is_default = 1 WHERE id = ?", (image.id,))
        return self.get_key(image.id)

    def in_use_by_vms(self, image_id: str) -> builtins.list[str]:
        """Names of the VMs created from this image."""
        rows = self._store.read(
            "SELECT name FROM vms WHERE image_id = ? ORDER BY name", (image_id,)
        )
        return [r[0] for r in rows]

    def delete(self, ref: str) -> ImageRecord:
        """Delete the row and return it (its files are the caller's); Conflict while VMs use it."""
        with self._store.transaction() as conn:
            image = self.get(ref)
            users = self.in_use_by_vms(image.id)
            if users:
                names = ", ".join(f"'{n}'" for n in users)
                raise Conflict(
                    f"image '{image.name}' is in use by VM {names}",
                    hint="delete those VMs first: banger vm delete " + " ".join(users),
                )
            conn.execute("DELETE FROM images WHERE id = ?", (image.id,))
        return image

    def _explain(self, violation: Violation, record: ImageRecord) -> BangerError:
        if violation.column == "images.name":
            return Conflict(
                f"image '{record.name}' already exists",
                hint=f"pick another name, or delete it first: banger image delete {record.name}",
            )
        if violation.column == "images.id":
            return Conflict(f"image id '{record.id}' already exists", hint="this is a bug")
        if violation.column == "images.is_default":
            current = self.get_default()
            return Conflict(
                f"image '{current.name if current else '?'}' is already the default",
                hint=f"add it without is_default, then: banger image promote {record.name}",
            )
        if violation.kind == "foreign_key" and record.kernel_name is not None:
            return kernel_not_found(record.kernel_name)
        return invalid(violation, "image")
