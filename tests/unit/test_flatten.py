"""Layer flattening: whiteouts, opaque dirs, links, devices, metadata and unsafe names."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput
from banger.images.flatten import Entry, EntryKind, entries_under, flatten_layers
from banger.images.oci import LayerBlob
from tests.support.oci_builder import Member, layer_tar


def blob(members: list[Member], *, compress: bool = False, name: str = "layer") -> LayerBlob:
    tar = layer_tar(members)
    data = gzip.compress(tar) if compress else tar
    return LayerBlob(
        name=name,
        open=lambda: io.BytesIO(data),
        digest="sha256:" + hashlib.sha256(data).hexdigest(),
        diff_id="sha256:" + hashlib.sha256(tar).hexdigest(),
    )


def flatten(tmp_path: Path, *layers: list[Member]) -> tuple[Path, dict[str, Entry]]:
    tree = tmp_path / "tree"
    tree.mkdir()
    return tree, flatten_layers([blob(m, compress=i % 2 == 0) for i, m in enumerate(layers)], tree)


def test_every_entry_keeps_uid_gid_mode_and_type_from_the_tar_headers(tmp_path: Path) -> None:
    tree, entries = flatten(tmp_path, [
        Member("bin", "dir", mode=0o755),
        Member("bin/su", data=b"elf", mode=0o4755, uid=0, gid=0),
        Member("home/u/f", data=b"x", mode=0o640, uid=1000, gid=1001),
        Member("tmp", "dir", mode=0o1777),
        Member("dev/sda", "block", mode=0o660, gid=6, major=8, minor=0),
        Member("run/fifo", "fifo", mode=0o600),
    ])
    assert entries["bin/su"] == Entry("bin/su", EntryKind.FILE, 0o4755, 0, 0)
    assert entries["home/u/f"] == Entry("home/u/f", EntryKind.FILE, 0o640, 1000, 1001)
    assert entries["home/u"] == Entry("home/u", EntryKind.DIR, 0o755, 0, 0)  # implied parent
    assert entries["tmp"].mode == 0o1777
    assert entries["dev/sda"] == Entry("dev/sda", EntryKind.BLOCK, 0o660, 0, 6, 8, 0)
    assert entries["run/fifo"].kind == EntryKind.FIFO
    assert (tree / "bin/su").read_bytes() == b"elf"
    # Devices and FIFOs are metadata only; nothing is mknod'ed on the host.
    assert not os.path.lexists(tree / "dev/sda") and not os.path.lexists(tree / "run/fifo")
    # On disk: real permission bits, no setuid, always owner-writable.
    assert (tree / "bin/su").stat().st_mode & 0o7777 == 0o755
    assert (tree / "home/u/f").stat().st_mode & 0o777 == 0o640


def test_whiteout_removes_a_lower_layer_file_and_its_metadata(tmp_path: Path) -> None:
    tree, entries = flatten(
        tmp_path,
        [Member("etc/a", data=b"1"), Member("etc/b", data=b"2"), Member("etc/d/x", data=b"3")],
        [Member("etc/.wh.a"), Member("etc/.wh.d")],
    )
    assert "etc/a" not in entries and not (tree / "etc/a").exists()
    assert "etc/d" not in entries and "etc/d/x" not in entries and not (tree / "etc/d").exists()
    assert (tree / "etc/b").read_bytes() == b"2"
    assert not [p for p in tree.rglob(".wh.*")]


def test_opaque_dir_drops_lower_layers_but_keeps_entries_of_its_own_layer(
    tmp_path: Path,
) -> None:
    tree, entries = flatten(
        tmp_path,
        [Member("srv/old", data=b"o"), Member("srv/sub/deep", data=b"d"),
         Member("keep", data=b"k")],
        [Member("srv/mine", data=b"m"), Member("srv/.wh..wh..opq"), Member("srv/later", data=b"l")],
    )
    assert sorted(k for k in entries if k.startswith("srv/")) == ["srv/later", "srv/mine"]
    assert sorted(p.name for p in (tree / "srv").iterdir()) == ["later", "mine"]
    assert "keep" in entries


def test_later_layer_replaces_file_with_dir_and_dir_with_symlink(tmp_path: Path) -> None:
    tree, entries = flatten(
        tmp_path,
        [Member("a", data=b"file"), Member("b/inner", data=b"x")],
        [Member("a", "dir", mode=0o711), Member("b", "symlink", link="a")],
    )
    assert entries["a"].kind == EntryKind.DIR and entries["a"].mode == 0o711
    assert entries["b"].kind == EntryKind.SYMLINK and "b/inner" not in entries
    assert os.readlink(tree / "b") == "a"


def test_directories_merge_and_take_the_newest_metadata(tmp_path: Path) -> None:
    _, entries = flatten(
        tmp_path,
        [Member("d", "dir", mode=0o755), Member("d/one", data=b"1")],
        [Member("d", "dir", mode=0o700, uid=5), Member("d/two", data=b"2")],
    )
    assert entries["d"] == Entry("d", EntryKind.DIR, 0o700, 5, 0)
    assert {"d/one", "d/two"} <= entries.keys()


def test_hard_link_shares_the_inode_and_metadata_of_its_target(tmp_path: Path) -> None:
    tree, entries = flatten(tmp_path, [
        Member("bin/su", data=b"elf", mode=0o4755),
        Member("bin/su2", "hardlink", link="bin/su"),
    ])
    assert os.stat(tree / "bin/su").st_ino == os.stat(tree / "bin/su2").st_ino
    assert entries["bin/su2"] == Entry("bin/su2", EntryKind.FILE, 0o4755, 0, 0)


def test_hard_link_to_a_missing_target_names_the_entry(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="'bin/x'.*hard link to missing 'nope'"):
        flatten(tmp_path, [Member("bin/x", "hardlink", link="nope")])


def test_paths_through_symlinks_resolve_inside_the_root_never_the_host(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    tree, entries = flatten(tmp_path, [
        Member("abs", "symlink", link=str(outside)),
        Member("up", "symlink", link="../../../../.."),
        Member("abs/pwned", data=b"1"),
        Member("up/escaped", data=b"2"),
    ])
    assert not outside.exists()
    inside = str(outside).lstrip("/") + "/pwned"
    assert (tree / inside).read_bytes() == b"1" and inside in entries
    assert (tree / "escaped").read_bytes() == b"2" and "escaped" in entries


def test_usrmerge_style_symlinked_dirs_are_followed(tmp_path: Path) -> None:
    tree, entries = flatten(
        tmp_path,
        [Member("usr/bin", "dir", mode=0o755), Member("bin", "symlink", link="usr/bin")],
        [Member("bin/tool", data=b"t", mode=0o755)],
    )
    assert (tree / "usr/bin/tool").read_bytes() == b"t"
    assert "usr/bin/tool" in entries and "bin/tool" not in entries


@pytest.mark.parametrize(
    "name, reason",
    [("../x", "'..' is not a name"), ("a/../../x", "'..' is not a name"),
     ("/etc/passwd", "absolute"),
     ("etc/new\nline", "debugfs"), ('etc/"quoted"', "debugfs"), ("etc/back\\slash", "debugfs"),
     ("etc/tab\tname", "debugfs"), ("etc/" + "n" * 256, "longer than 255")],
)
def test_unsafe_names_are_rejected_naming_the_entry_and_layer(
    tmp_path: Path, name: str, reason: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        flatten(tmp_path, [Member("ok", data=b"")], [Member(name, data=b"x")])
    assert repr(name) in str(err.value) and reason in str(err.value)
    assert "layer" in str(err.value) and err.value.hint


def test_unsafe_hard_link_target_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"'\.\./etc/shadow'"):
        flatten(tmp_path, [Member("x", "hardlink", link="../etc/shadow")])


def test_layer_with_a_wrong_digest_is_rejected(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    good = blob([Member("a", data=b"1")])
    bad = LayerBlob("layer 1", good.open, digest="sha256:" + "0" * 64, diff_id=good.diff_id)
    with pytest.raises(InvalidInput, match="layer 1: digest mismatch"):
        flatten_layers([bad], tree)


def test_zstd_layers_are_read(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("zstd") is None:
        pytest.skip("zstd not installed")
    tar = layer_tar([Member("z", data=b"zstd!")])
    data = subprocess.run(["zstd", "-q", "-c"], input=tar, capture_output=True, check=True).stdout
    tree = tmp_path / "tree"
    tree.mkdir()
    layer = LayerBlob("z", lambda: io.BytesIO(data), "sha256:" + hashlib.sha256(data).hexdigest(),
                      "sha256:" + hashlib.sha256(tar).hexdigest())
    entries = flatten_layers([layer], tree)
    assert (tree / "z").read_bytes() == b"zstd!" and "z" in entries


def test_entries_under_reroots_a_subtree() -> None:
    entries = [Entry("root", EntryKind.DIR, 0o700, 0, 0),
               Entry("root/.profile", EntryKind.FILE, 0o644, 0, 0),
               Entry("rootless", EntryKind.FILE, 0o644, 0, 0)]
    assert entries_under(entries, "root") == [
        Entry("", EntryKind.DIR, 0o700, 0, 0), Entry(".profile", EntryKind.FILE, 0o644, 0, 0)]
