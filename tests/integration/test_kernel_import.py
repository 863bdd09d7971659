"""Kernel import from Debian's real cloud kernel package, as a .deb and as a directory."""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from banger.core.errors import Conflict, InvalidInput, NotFound
from banger.core.manifests import KernelManifest
from banger.kernels.importer import delete_kernel, import_kernel
from banger.kernels.manifest import (
    INITRD,
    VMLINUX,
    VMLINUZ,
    load_manifest,
)
from banger.kernels.modules import module_load_order, module_name, read_modules_dep
from tests.support.cpio import read_newc
from tests.support.kernel import ensure_kernel_deb

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

VIRTIO_BOOT_ORDER = [
    "virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net",
]  # fmt: skip


@pytest.fixture(scope="module")
def deb() -> Path:
    return ensure_kernel_deb()


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


@pytest.fixture(scope="module")
def from_deb(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> KernelManifest:
    return import_kernel("cloud", deb, tmp_path_factory.mktemp("kernels"))


def subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(x in it for x in small)


def test_deb_import_stores_bzimage_elf_vmlinux_initrd_and_a_manifest(
    from_deb: KernelManifest, unpacked: Path
) -> None:
    d = from_deb.path
    stored = sorted(p.name for p in d.iterdir())
    assert stored == sorted([VMLINUZ, VMLINUX, INITRD, "manifest.json"])
    (bzimage,) = (unpacked / "boot").glob("vmlinuz-*")
    assert (d / VMLINUZ).read_bytes() == bzimage.read_bytes()
    elf = (d / VMLINUX).read_bytes()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2  # 64-bit
    assert len(elf) > 2 * bzimage.stat().st_size
    assert from_deb.version == bzimage.name.removeprefix("vmlinuz-")


def test_manifest_sha256_and_sizes_match_the_stored_files(from_deb: KernelManifest) -> None:
    for f in from_deb.files:
        data = (from_deb.path / f.name).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (f.sha256, f.size)
    assert load_manifest(from_deb.path) == from_deb  # what the daemon registers, read back


def test_initrd_holds_static_busybox_an_init_and_exactly_the_ordered_modules(
    from_deb: KernelManifest, unpacked: Path
) -> None:
    entries = {e.name: e for e in read_newc((from_deb.path / INITRD).read_bytes())}
    assert entries["bin/busybox"].data == Path("/bin/busybox").read_bytes()
    assert entries["init"].mode & stat.S_IXUSR
    shipped = sorted(
        n.removeprefix("lib/modules/").removesuffix(".ko")
        for n in entries
        if n.startswith("lib/modules/") and n.endswith(".ko")
    )
    assert shipped == sorted(from_deb.modules)
    init = entries["init"].data.decode()
    assert f"for m in {' '.join(from_deb.modules)}; do" in init
    for name in from_deb.modules:
        assert entries[f"lib/modules/{name}.ko"].data[:4] == b"\x7fELF"


def test_module_order_is_the_virtio_boot_order_with_vsock_and_deps_first(
    from_deb: KernelManifest, unpacked: Path
) -> None:
    order = list(from_deb.modules)
    assert subsequence(VIRTIO_BOOT_ORDER, order)
    vsock = ["vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"]
    assert subsequence(vsock, order)
    (mods,) = (unpacked / "lib/modules").iterdir()
    dep_text = read_modules_dep(mods, mods.name)
    assert [module_name(p) for p in module_load_order(dep_text, order)] == order
    assert "ext4" not in order  # built into Debian's cloud kernel, so not loaded


def test_gnu_cpio_lists_the_initrd(from_deb: KernelManifest) -> None:
    listing = subprocess.run(
        ["sh", "-c", 'zcat "$0" | cpio -it --quiet', str(from_deb.path / INITRD)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    expected = {
        "init",
        "bin/busybox",
        "bin/switch_root",
        "dev/console",
        "lib/modules/virtio_blk.ko",
    }
    assert expected <= set(listing)


def test_directory_import_of_the_unpacked_deb_gives_the_same_kernel(
    from_deb: KernelManifest, unpacked: Path, tmp_path: Path
) -> None:
    m = import_kernel("cloud-dir", unpacked, tmp_path)
    assert m.modules == from_deb.modules and m.version == from_deb.version
    assert {f.name: f.sha256 for f in m.files if f.name != INITRD} == {
        f.name: f.sha256 for f in from_deb.files if f.name != INITRD
    }
    assert (m.path / INITRD).read_bytes() == (from_deb.path / INITRD).read_bytes()  # reproducible
    assert m.source == str(unpacked)


def test_concurrent_imports_of_one_name_do_the_work_once_and_agree(
    deb: Path, tmp_path: Path
) -> None:
    results: list[KernelManifest] = []
    errors: list[BaseException] = []
    progress: list[str] = []
    kernels = tmp_path / "kernels"

    def worker() -> None:
        try:
            results.append(import_kernel("race", deb, kernels, progress=progress.append))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results[0] == results[1]
    assert sum(line.startswith("building initramfs") for line in progress) == 1
    assert "kernel race is already stored" in progress
    assert [p.name for p in kernels.iterdir()] == ["race"]
    assert list((tmp_path / "tmp").iterdir()) == []  # no staging dir, no lock file left
    assert stat.S_IMODE((kernels / "race").stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in (kernels / "race").iterdir()} == {0o600}


def test_the_same_name_from_another_source_conflicts_and_delete_frees_it(
    deb: Path, unpacked: Path, tmp_path: Path
) -> None:
    import_kernel("k", deb, tmp_path)
    with pytest.raises(Conflict, match="already exists"):
        import_kernel("k", unpacked, tmp_path)
    delete_kernel("k", tmp_path)
    assert list(tmp_path.iterdir()) == []  # the kernel's dir is gone, nothing else is left
    with pytest.raises(NotFound):
        delete_kernel("k", tmp_path)
    assert import_kernel("k", unpacked, tmp_path).source == str(unpacked)


def test_a_failed_import_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "src" / "boot").mkdir(parents=True)
    (tmp_path / "src" / "boot" / "vmlinuz-1.0").write_bytes(b"not a kernel" * 100)
    with pytest.raises(Exception, match="no vmlinux found"):
        import_kernel("broken", tmp_path / "src", tmp_path / "kernels")
    assert list((tmp_path / "kernels").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


SECRET = b"host-secret-7f3a9c1e"


def hostile_tree(tmp_path: Path, unpacked: Path, dep_lines: list[str], link: bool) -> Path:
    """A kernel tree (the real bzImage) whose modules.dep or modules reach a host file."""
    marker_dir = tmp_path / "host"
    marker_dir.mkdir()
    for module in ("virtio_blk", "virtio_net", "virtio_mmio"):
        marker = marker_dir / f"{module}.ko"
        marker.write_bytes(SECRET)
        marker.chmod(0o600)
    (bzimage,) = (unpacked / "boot").glob("vmlinuz-*")
    version = bzimage.name.removeprefix("vmlinuz-")
    tree = tmp_path / "pkg"
    mods = tree / "lib/modules" / version
    (mods / "kernel").mkdir(parents=True)
    (tree / "boot").mkdir()
    shutil.copyfile(bzimage, tree / "boot" / bzimage.name)
    if link:
        (mods / "kernel/virtio_mmio.ko").symlink_to(marker_dir / "virtio_mmio.ko")
    text = "\n".join(line.replace("HOST", str(marker_dir)) for line in dep_lines) + "\n"
    (mods / "modules.dep").write_text(text)
    return tree


def as_deb(tree: Path) -> Path:
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN/control").write_text(
        "Package: linux-image-hostile\nVersion: 1\nArchitecture: amd64\n"
        "Maintainer: t <t@t>\nDescription: hostile\n"
    )
    deb = tree.with_suffix(".deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return deb


HOSTILE = {
    "dotdot": (["../../../../../../../../../../HOST/virtio_blk.ko:"], False, "'..' is not a name"),
    "absolute": (["HOST/virtio_net.ko:"], False, "not a relative path"),
    "symlink": (["kernel/virtio_mmio.ko:"], True, "resolves outside"),
}


@pytest.mark.parametrize("packaging", ["deb", "dir"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_package_reaching_outside_itself_is_refused_and_leaks_nothing(
    tmp_path: Path, unpacked: Path, case: str, packaging: str
) -> None:
    lines, link, error = HOSTILE[case]
    source = hostile_tree(tmp_path, unpacked, lines, link)
    if packaging == "deb":
        source = as_deb(source)
    state = tmp_path / "state"
    with pytest.raises(InvalidInput, match=error):
        import_kernel("hostile", source, state / "kernels")
    assert list((state / "kernels").iterdir()) == []
    assert list((state / "tmp").iterdir()) == []
    for f in state.rglob("*"):
        assert not f.is_file() or SECRET not in f.read_bytes(), f


def relink_in_deb(deb: Path, member: str, target: str) -> None:
    """Rewrite ``member`` of ``deb``'s data tar as a hard link to ``target`` (dpkg-deb -b
    cannot make one that leaves the package), keeping the .deb well formed."""
    work = deb.parent / "ar"
    work.mkdir()
    subprocess.run(["ar", "x", str(deb.resolve())], cwd=work, check=True)
    (data_name,) = [p.name for p in work.iterdir() if p.name.startswith("data.tar")]
    out = io.BytesIO()
    with tarfile.open(work / data_name) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for info in src:
            if info.name.removeprefix("./") == member:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, target, 0
                dst.addfile(info)
            else:
                dst.addfile(info, src.extractfile(info) if info.isfile() else None)
    (work / data_name).unlink()
    (work / "data.tar").write_bytes(out.getvalue())
    (control,) = [p.name for p in work.iterdir() if p.name.startswith("control.tar")]
    deb.unlink()
    subprocess.run(["ar", "rc", str(deb.resolve()), "debian-binary", control, "data.tar"],
                   cwd=work, check=True)
    shutil.rmtree(work)


@pytest.mark.parametrize("target", ["HOST/virtio_net.ko", "../../../../../../HOST/virtio_net.ko"])
def test_a_deb_hard_link_to_a_host_file_is_refused_and_leaks_nothing(
    tmp_path: Path, unpacked: Path, target: str
) -> None:
    tree = hostile_tree(tmp_path, unpacked, ["kernel/virtio_net.ko:"], False)
    (module,) = [p for p in (tree / "lib/modules").iterdir()]
    (module / "kernel/virtio_net.ko").write_bytes(b"placeholder")
    deb = as_deb(tree)
    relink_in_deb(deb, f"lib/modules/{module.name}/kernel/virtio_net.ko",
                  target.replace("HOST", str(tmp_path / "host")))
    state = tmp_path / "state"
    with pytest.raises(InvalidInput, match="hard link"):
        import_kernel("hostile", deb, state / "kernels")
    assert list((state / "kernels").iterdir()) == []
    for f in state.rglob("*"):
        assert not f.is_file() or SECRET not in f.read_bytes(), f
