"""The JSON of OCI layouts and docker-save tars, parsed once into strict models.

Every document here comes from an image file or a registry: a damaged or hostile
one is one ``InvalidInput`` naming where it came from and its first bad field,
never a ``KeyError`` or ``AttributeError`` deeper in.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from banger.core.errors import InvalidInput
from banger.core.validate import first_validation_error

MEDIA_INDEX = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")

Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)
    what: ClassVar[str]


class Platform(_Strict):
    os: str = "linux"
    architecture: str | None = None  # none: any architecture


class Descriptor(_Strict):
    digest: Digest
    platform: Platform | None = None


class OciIndex(_Strict):
    what = "OCI index"
    manifests: tuple[Descriptor, ...] = ()


class ManifestKind(_Strict):
    """Just enough of a manifest blob to tell an image manifest from a nested index."""

    what = "OCI manifest"
    mediaType: str | None = None
    manifests: object = None

    @property
    def is_index(self) -> bool:
        return self.mediaType in MEDIA_INDEX or "manifests" in self.model_fields_set


class OciManifest(_Strict):
    what = "OCI manifest"
    config: Descriptor
    layers: tuple[Descriptor, ...] = ()


class RootFs(_Strict):
    diff_ids: tuple[Digest, ...] = ()


class ImageConfig(_Strict):
    """An image config (OCI or docker-save): only the layers' uncompressed digests matter."""

    what = "OCI config"
    rootfs: RootFs = RootFs()

    def diff_id(self, i: int) -> str | None:
        ids = self.rootfs.diff_ids
        return ids[i] if i < len(ids) else None


class DockerSaveImage(_Strict):
    Config: str  # docker's keys
    Layers: tuple[str, ...]


class DockerSaveManifest(RootModel[Annotated[tuple[DockerSaveImage, ...], Field(min_length=1)]]):
    model_config = ConfigDict(frozen=True, strict=True)
    what: ClassVar[str] = "docker-save manifest.json"


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: bytes, where: str, *, hint: str) -> M:
    """``data`` as ``model``; one ``InvalidInput`` naming ``where`` and the first bad field."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        what = getattr(model, "what", model.__name__)
        raise InvalidInput(
            f"malformed {what} in {where}: {first_validation_error(exc)}", hint=hint
        ) from None
