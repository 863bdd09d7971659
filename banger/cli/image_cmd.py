"""``banger image ...``."""

from __future__ import annotations

from pathlib import Path

import click

from banger.api.client import ref_path
from banger.api.models import (
    CachePruneRequest,
    CachePruneResult,
    ImageBuildRequest,
    ImageImportRequest,
    ImageInfo,
    ImageList,
    ImagePullRequest,
    ImageWarmRequest,
    Operation,
    SnapshotInfo,
    SnapshotList,
)
from banger.cli.context import CliContext, json_option, pass_ctx, quiet_option
from banger.cli.progress import follow
from banger.cli.render import console, print_fields, print_json, print_table
from banger.core.defaults import DEFAULT_IMAGE_SOURCE
from banger.core.validate import (
    format_size,
    parse_memory_mib,
    parse_size,
    validate_new_name,
    validate_vcpu,
)


@click.group("image")
def image_group() -> None:
    """Golden images: build with mmdebstrap, pull from OCI registries, import, list.

    \b
    Example:
      banger image build
    """


def _finish(ctx: CliContext, op: Operation, as_json: bool) -> None:
    done = follow(ctx.client(), op)
    info = ImageInfo.model_validate(done.result)
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        default = " (default)" if info.is_default else ""
        console().print(f"image {info.name} ({info.id}) ready{default}")


@image_group.command("build")
@click.argument("name", required=False)
@click.option("--from", "source", default=DEFAULT_IMAGE_SOURCE, show_default=True,
              help="Distribution and suite to bootstrap.")
@click.option("--packages", default="", help="Extra Debian packages, comma-separated.")
@click.option("--size", help="rootfs size, e.g. 4G (default: content plus headroom).")
@json_option
@pass_ctx
def image_build(
    ctx: CliContext, name: str | None, source: str, packages: str, size: str | None,
    as_json: bool,
) -> None:
    """Build a golden Debian image (and the default kernel, on first use).

    Without NAME the image is named after --from (debian-bookworm).

    \b
    Examples:
      banger image build
      banger image build dev --packages build-essential,python3 --size 4G
    """
    if name is not None:
        validate_new_name(name, "image")
    if size is not None:
        parse_size(size)
    body = ImageBuildRequest(name=name, source=source, size=size,
                             packages=[p for p in packages.split(",") if p])
    _finish(ctx, ctx.client().post_model("/images/build", Operation, body=body), as_json)


@image_group.command("pull")
@click.argument("ref")
@click.option("--name", help="Image name (default: from the reference).")
@json_option
@pass_ctx
def image_pull(ctx: CliContext, ref: str, name: str | None, as_json: bool) -> None:
    """Pull an image from an OCI/Docker registry.

    \b
    Example:
      banger image pull docker.io/library/debian:bookworm --name deb
    """
    if name is not None:
        validate_new_name(name, "image")
    body = ImagePullRequest(ref=ref, name=name)
    op = ctx.client().post_model("/images/pull", Operation, body=body)
    _finish(ctx, op, as_json)


@image_group.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="Image name (default: from the file name).")
@json_option
@pass_ctx
def image_import(ctx: CliContext, path: Path, name: str | None, as_json: bool) -> None:
    """Import a docker-save tar, an OCI layout dir, a rootfs tarball or an ext4 file.

    \b
    Example:
      banger image import ./rootfs.tar.gz --name mine
    """
    if name is not None:
        validate_new_name(name, "image")
    body = ImageImportRequest(path=str(path.absolute()), name=name)
    _finish(ctx, ctx.client().post_model("/images/import", Operation, body=body), as_json)


@image_group.command("list")
@json_option
@quiet_option
@pass_ctx
def image_list(ctx: CliContext, as_json: bool, quiet: bool) -> None:
    """List images (* marks the default).

    \b
    Example:
      banger image list
    """
    images = ctx.client().get_model("/images", ImageList).images
    if as_json:
        print_json([i.model_dump(mode="json") for i in images])
    elif quiet:
        for i in images:
            click.echo(i.name)
    else:
        print_table(
            ["NAME", "DEFAULT", "ID", "KERNEL", "SIZE", "SOURCE"],
            [[i.name, "*" if i.is_default else "", i.id, i.kernel_name or "(default)",
              format_size(i.size_bytes) if i.size_bytes else "", i.source] for i in images],
        )
        snaps = ctx.client().get_model("/snapshots", SnapshotList).snapshots
        if snaps:
            click.echo("\nwarm snapshots:")
            print_table(["ID", "IMAGE", "VCPU", "MEMORY", "SAVED", "STATE"],
                        [[s.id, s.image_name or "", s.vcpu, f"{s.memory_mib} MiB",
                          format_size(s.state_bytes), f"stale: {s.stale}" if s.stale else "ready"]
                         for s in snaps])


@image_group.command("warm")
@click.argument("ref", required=False)
@click.option("--vcpu", type=int, help="vCPUs of the VMs it serves (default: config).")
@click.option("--memory", help="Memory of the VMs it serves, MiB or with a unit (default: config).")
@json_option
@pass_ctx
def image_warm(ctx: CliContext, ref: str | None, vcpu: int | None, memory: str | None,
               as_json: bool) -> None:
    """Boot IMAGE once and save it, so VMs of this shape start from the snapshot.

    \b
    Example:
      banger image warm --vcpu 2 --memory 1G
    """
    client = ctx.client()
    if ref is None:
        default = [i for i in client.get_model("/images", ImageList).images if i.is_default]
        if not default:
            raise click.UsageError("no default image: name one, or banger image promote NAME")
        ref = default[0].name
    body = ImageWarmRequest(vcpu=validate_vcpu(vcpu) if vcpu is not None else None,
                            memory_mib=parse_memory_mib(memory) if memory is not None else None)
    done = follow(client, client.post_model(ref_path("image", ref, "warm"), Operation, body=body))
    info = SnapshotInfo.model_validate(done.result)
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        console().print(f"snapshot {info.id} of {info.image_name}: {info.vcpu} vCPU, "
                        f"{info.memory_mib} MiB, {format_size(info.state_bytes)} saved")


@image_group.command("show")
@click.argument("ref")
@json_option
@pass_ctx
def image_show(ctx: CliContext, ref: str, as_json: bool) -> None:
    """Show one image by name or id.

    \b
    Example:
      banger image show debian-bookworm
    """
    i = ctx.client().get_model(ref_path("image", ref), ImageInfo)
    if as_json:
        print_json(i.model_dump(mode="json"))
        return
    m = i.manifest
    print_fields(
        [("name", i.name), ("id", i.id), ("default", i.is_default), ("source", i.source),
         ("kernel", i.kernel_name or "(default)"), ("path", i.path),
         ("size", format_size(i.size_bytes) if i.size_bytes else "?"),
         ("init", m.init_profile if m else None), ("packages", " ".join(m.packages) if m else ""),
         ("created", i.created_at)]
    )


@image_group.command("delete")
@click.argument("refs", nargs=-1, required=True)
@pass_ctx
def image_delete(ctx: CliContext, refs: tuple[str, ...]) -> None:
    """Delete images (refused while a VM uses one).

    \b
    Example:
      banger image delete old-image
    """
    client = ctx.client()
    for ref in refs:
        info = ImageInfo.model_validate(client.request("DELETE", ref_path("image", ref)))
        console().print(f"deleted image {info.name} ({info.id})")


@image_group.command("promote")
@click.argument("ref")
@pass_ctx
def image_promote(ctx: CliContext, ref: str) -> None:
    """Make an image the default for new VMs.

    \b
    Example:
      banger image promote dev
    """
    info = ctx.client().post_model(ref_path("image", ref, "promote"), ImageInfo)
    console().print(f"image {info.name} is now the default")


@image_group.group("cache")
def image_cache() -> None:
    """The OCI blob cache.

    \b
    Example:
      banger image cache prune --dry-run
    """


@image_cache.command("prune")
@click.option("--dry-run", is_flag=True, help="Only report what would be freed.")
@json_option
@pass_ctx
def image_cache_prune(ctx: CliContext, dry_run: bool, as_json: bool) -> None:
    """Delete cached OCI blobs (safe while a pull runs).

    \b
    Example:
      banger image cache prune
    """
    result = ctx.client().post_model(
        "/images/cache/prune", CachePruneResult, body=CachePruneRequest(dry_run=dry_run)
    )
    if as_json:
        print_json(result.model_dump())
        return
    verb = "would free" if dry_run else "freed"
    snaps = f", and {result.snapshots} stale snapshots" if result.snapshots else ""
    console().print(f"{verb} {format_size(result.bytes) if result.bytes else '0'} "
                    f"in {result.blobs} blobs{snaps}")
