"""``banger kernel ...``."""

from __future__ import annotations

from pathlib import Path

import click

from banger.api.client import ref_path
from banger.api.models import KernelCatalog, KernelImportRequest, KernelInfo, KernelList, Operation
from banger.cli.context import CliContext, json_option, pass_ctx, quiet_option
from banger.cli.progress import follow
from banger.cli.render import console, print_fields, print_json, print_table
from banger.core.validate import validate_new_name


@click.group("kernel")
def kernel_group() -> None:
    """Guest kernels: pull from the catalog, import your own, list and delete.

    \b
    Example:
      banger kernel pull debian-cloud
    """


def _finish(ctx: CliContext, op: Operation, as_json: bool) -> None:
    done = follow(ctx.client(), op)
    info = KernelInfo.model_validate(done.result)
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        console().print(f"kernel {info.name} ({info.version}) ready at {info.path}")


@kernel_group.command("catalog")
@json_option
@pass_ctx
def kernel_catalog(ctx: CliContext, as_json: bool) -> None:
    """List the kernels banger can pull by name.

    \b
    Example:
      banger kernel catalog
    """
    catalog = ctx.client().get_model("/kernel-catalog", KernelCatalog)
    if as_json:
        print_json(catalog.model_dump(mode="json"))
        return
    print_table(
        ["NAME", "PULLED", "PACKAGE", "DESCRIPTION"],
        [[k.name, "yes" if k.pulled else "no", k.package, k.description] for k in catalog.kernels],
    )


@kernel_group.command("pull")
@click.argument("name")
@json_option
@pass_ctx
def kernel_pull(ctx: CliContext, name: str, as_json: bool) -> None:
    """Fetch catalog kernel NAME and prepare it (vmlinux, initramfs, manifest).

    \b
    Example:
      banger kernel pull debian-cloud
    """
    validate_new_name(name, "kernel")
    op = ctx.client().post_model(ref_path("kernel", name, "pull"), Operation)
    _finish(ctx, op, as_json)


@kernel_group.command("import")
@click.argument("name")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="A directory (boot/vmlinuz-*, lib/modules/<ver>) or a kernel .deb.",
)
@json_option
@pass_ctx
def kernel_import(ctx: CliContext, name: str, source: Path, as_json: bool) -> None:
    """Import a kernel from a directory or a .deb as NAME.

    \b
    Examples:
      banger kernel import mykernel --from ./linux-image-6.1.0-cloud-amd64.deb
      banger kernel import mykernel --from /srv/kernel-root
    """
    validate_new_name(name, "kernel")
    op = ctx.client().post_model(
        "/kernels/import", Operation,
        body=KernelImportRequest(name=name, source=str(source.absolute())),
    )
    _finish(ctx, op, as_json)


@kernel_group.command("list")
@json_option
@quiet_option
@pass_ctx
def kernel_list(ctx: CliContext, as_json: bool, quiet: bool) -> None:
    """List stored kernels (* marks the default).

    \b
    Example:
      banger kernel list -q
    """
    kernels = ctx.client().get_model("/kernels", KernelList).kernels
    if as_json:
        print_json([k.model_dump(mode="json") for k in kernels])
    elif quiet:
        for k in kernels:
            click.echo(k.name)
    else:
        print_table(
            ["NAME", "DEFAULT", "VERSION", "SOURCE"],
            [[k.name, "*" if k.is_default else "", k.version, k.source] for k in kernels],
        )


@kernel_group.command("show")
@click.argument("name")
@json_option
@pass_ctx
def kernel_show(ctx: CliContext, name: str, as_json: bool) -> None:
    """Show one kernel and its artifacts.

    \b
    Example:
      banger kernel show debian-cloud --json
    """
    k = ctx.client().get_model(ref_path("kernel", name), KernelInfo)
    if as_json:
        print_json(k.model_dump(mode="json"))
        return
    m = k.manifest
    files = ", ".join(f.name for f in m.files) if m else ""
    print_fields(
        [("name", k.name), ("version", k.version), ("default", k.is_default),
         ("source", k.source), ("path", k.path), ("files", files),
         ("modules", " ".join(m.modules) if m else ""), ("created", k.created_at)]
    )


@kernel_group.command("delete")
@click.argument("names", nargs=-1, required=True)
@pass_ctx
def kernel_delete(ctx: CliContext, names: tuple[str, ...]) -> None:
    """Delete kernels (refused while an image or VM uses one).

    \b
    Example:
      banger kernel delete mykernel
    """
    client = ctx.client()
    for name in names:
        client.request("DELETE", ref_path("kernel", name))
        console().print(f"deleted kernel {name}")
