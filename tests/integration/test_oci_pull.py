"""Pull a small OCI image from a local registry through banger and inspect the ext4 it made."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from banger.core.errors import InvalidInput, NotFound
from banger.images.importer import import_image, pull_image
from banger.images.manifest import ROOTFS_NAME, WORK_SEED_NAME
from banger.images.oci import blob_dir, prune_blob_cache
from tests.support.image import read_image_json
from tests.support.oci_builder import Member, OciImage, bootable_base

pytestmark = pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs e2fsprogs")

TRUE = Path("/bin/true").read_bytes()


def sample_layers() -> list[list[Member]]:
    """Two layers exercising ownership, setuid, whiteouts, opaque dirs and links."""
    layer1 = bootable_base([
        Member("bin/suid-true", data=TRUE, mode=0o4755, uid=0, gid=0),
        Member("home", "dir", mode=0o755),
        Member("home/dev", "dir", mode=0o750, uid=1000, gid=1000),
        Member("home/dev/notes.txt", data=b"mine\n", mode=0o640, uid=1000, gid=1000),
        Member("etc", "dir", mode=0o755),
        Member("etc/doomed.conf", data=b"deleted by layer 2\n"),
        Member("etc/kept.conf", data=b"kept\n"),
        Member("srv", "dir", mode=0o755),
        Member("srv/old.txt", data=b"hidden by the opaque dir\n"),
        Member("srv/sub", "dir", mode=0o755),
        Member("srv/sub/deep.txt", data=b"also hidden\n"),
        Member("dev", "dir", mode=0o755),
        Member("dev/null", "char", mode=0o666, major=1, minor=3),
        Member("root", "dir", mode=0o700),
        Member("root/.profile", data=b"# profile\n", mode=0o644),
    ])
    layer2 = [
        Member("etc/.wh.doomed.conf"),
        Member("srv/.wh..wh..opq"),
        Member("srv/new.txt", data=b"from layer 2\n", mode=0o600, uid=33, gid=33),
        Member("usr/bin", "dir", mode=0o755),
        Member("usr/bin/true-link", "symlink", link="../../bin/suid-true", mode=0o777),
        Member("bin/hard-true", "hardlink", link="bin/suid-true", mode=0o4755),
        Member("tmp", "dir", mode=0o1777),
    ]
    return [layer1, layer2]




def stat_path(image: Path, path: str) -> dict[str, str] | None:
    """Parse ``debugfs -R 'stat PATH'`` into its fields (None when missing)."""
    proc = subprocess.run(
        ["debugfs", "-R", f"stat {path}", str(image)], capture_output=True, text=True, check=True
    )
    if "File not found" in proc.stderr or not proc.stdout.strip():
        return None
    def field(name: str) -> str:
        return re.search(rf"\b{name}:\s+(\S+)", proc.stdout)[1]  # type: ignore[index]

    return {
        "type": re.search(r"Type: (\w[\w ]*?)\s{2,}", proc.stdout)[1],  # type: ignore[index]
        "mode": field("Mode"),
        "uid": field("User"),
        "gid": field("Group"),
        "links": field("Links"),
        "inode": field("Inode"),
        "raw": proc.stdout,
    }


def leftovers(images_dir: Path) -> list[str]:
    return sorted(p.name for p in images_dir.iterdir()) if images_dir.exists() else []


def push(layout: Path, registry: str, repo_tag: str) -> None:
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
         f"oci:{layout}:latest", f"docker://{registry}/{repo_tag}"],
        check=True, capture_output=True, timeout=120,
    )


@pytest.fixture(scope="module")
def pulled(registry: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The test image, pushed to the registry and pulled back through banger once."""
    root = tmp_path_factory.mktemp("oci-pull")
    OciImage(sample_layers()).write_layout(root / "layout")
    push(root / "layout", registry, "test:1")
    stages: list[str] = []
    started = time.monotonic()
    manifest = pull_image(f"{registry}/test:1", root / "images", root / "cache",
                          name="test", kernel_name=None, progress=stages.append)
    seconds = time.monotonic() - started
    print(f"\npull+import of the test image: {seconds:.2f}s", file=sys.stderr)
    return {"root": root, "manifest": manifest, "dir": root / "images" / manifest.id,
            "stages": stages, "seconds": seconds}


def rootfs(pulled: dict[str, object]) -> Path:
    return Path(str(pulled["dir"])) / ROOTFS_NAME


def test_pull_publishes_rootfs_work_seed_and_manifest(pulled: dict[str, object]) -> None:
    image_dir = Path(str(pulled["dir"]))
    expected = ["image.json", ROOTFS_NAME, WORK_SEED_NAME]
    assert sorted(p.name for p in image_dir.iterdir()) == expected
    manifest = read_image_json(image_dir)
    assert manifest.name == "test"
    assert manifest.source.startswith("oci:127.0.0.1:") and "@sha256:" in manifest.source
    assert not [p for p in image_dir.parent.iterdir() if p.name.startswith(".")]
    assert any(s.startswith("flatten: layer 2") for s in pulled["stages"])  # type: ignore[attr-defined]


def test_setuid_root_binary_keeps_uid_0_and_mode_04755(pulled: dict[str, object]) -> None:
    st = stat_path(rootfs(pulled), "/bin/suid-true")
    assert st is not None
    assert (st["type"], st["mode"], st["uid"], st["gid"]) == ("regular", "04755", "0", "0")


def test_file_owned_by_uid_1000_keeps_its_owner_and_mode(pulled: dict[str, object]) -> None:
    st = stat_path(rootfs(pulled), "/home/dev/notes.txt")
    assert st is not None and (st["uid"], st["gid"], st["mode"]) == ("1000", "1000", "0640")
    home = stat_path(rootfs(pulled), "/home/dev")
    assert home is not None and (home["uid"], home["mode"]) == ("1000", "0750")


def test_whiteout_deletes_the_file_from_the_lower_layer(pulled: dict[str, object]) -> None:
    assert stat_path(rootfs(pulled), "/etc/doomed.conf") is None
    assert stat_path(rootfs(pulled), "/etc/kept.conf") is not None


def test_opaque_dir_hides_lower_layer_entries_but_keeps_its_own(pulled: dict[str, object]) -> None:
    assert stat_path(rootfs(pulled), "/srv/old.txt") is None
    assert stat_path(rootfs(pulled), "/srv/sub") is None
    new = stat_path(rootfs(pulled), "/srv/new.txt")
    assert new is not None and (new["uid"], new["mode"]) == ("33", "0600")


def test_symlink_hard_link_device_and_sticky_dir_survive(pulled: dict[str, object]) -> None:
    image = rootfs(pulled)
    link = stat_path(image, "/usr/bin/true-link")
    assert link is not None and link["type"] == "symlink"
    assert '"../../bin/suid-true"' in link["raw"]
    hard, orig = stat_path(image, "/bin/hard-true"), stat_path(image, "/bin/suid-true")
    assert hard is not None and orig is not None
    assert hard["inode"] == orig["inode"] and hard["links"] == "2"
    null = stat_path(image, "/dev/null")
    assert null is not None and null["type"] == "character special" and null["mode"] == "0666"
    assert "Device major/minor number: 01:03" in null["raw"]
    tmp = stat_path(image, "/tmp")
    assert tmp is not None and tmp["mode"] == "01777"


def test_guest_bits_are_added_root_owned(pulled: dict[str, object]) -> None:
    init = stat_path(rootfs(pulled), "/usr/lib/banger/init")
    assert init is not None and (init["uid"], init["mode"]) == ("0", "0755")
    assert stat_path(rootfs(pulled), "/etc/fstab") is not None


def test_work_seed_holds_the_images_root_directory(pulled: dict[str, object]) -> None:
    seed = Path(str(pulled["dir"])) / WORK_SEED_NAME
    profile = stat_path(seed, "/.profile")
    assert profile is not None and (profile["uid"], profile["mode"]) == ("0", "0644")
    top = stat_path(seed, "/")
    assert top is not None and top["mode"] == "0700"


def test_ext4_images_pass_fsck(pulled: dict[str, object]) -> None:
    for name in (ROOTFS_NAME, WORK_SEED_NAME):
        proc = subprocess.run(["e2fsck", "-fn", str(Path(str(pulled["dir"])) / name)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_blobs_are_cached_by_digest_and_prune_frees_them(pulled: dict[str, object]) -> None:
    cache = Path(str(pulled["root"])) / "cache"
    blobs = sorted((blob_dir(cache) / "sha256").iterdir())
    assert len(blobs) >= 4  # manifest, config, two layers
    size = sum(b.stat().st_size for b in blobs)
    assert prune_blob_cache(cache, dry_run=True) == (size, len(blobs))
    assert prune_blob_cache(cache, dry_run=False) == (size, len(blobs))
    assert list((blob_dir(cache) / "sha256").iterdir()) == []


def test_pull_of_a_missing_tag_is_not_found(registry: str, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as err:
        pull_image(f"{registry}/test:does-not-exist", tmp_path / "images", tmp_path / "cache",
                   name="x", kernel_name=None)
    assert "not found" in str(err.value) and err.value.hint
    assert leftovers(tmp_path / "images") == []


def test_image_without_sshd_fails_naming_what_is_missing(registry: str, tmp_path: Path) -> None:
    OciImage([bootable_base(sshd=False)]).write_layout(tmp_path / "layout")
    push(tmp_path / "layout", registry, "nosshd:1")
    with pytest.raises(InvalidInput) as err:
        pull_image(f"{registry}/nosshd:1", tmp_path / "images", tmp_path / "cache",
                   name="x", kernel_name=None)
    assert "sshd" in str(err.value) and "openssh-server" in (err.value.hint or "")
    assert leftovers(tmp_path / "images") == []


@pytest.mark.parametrize(
    "bad_name, why",
    [("../escape", "'..'"), ("/etc/abs", "absolute"), ("etc/new\nline", "debugfs"),
     ('etc/quo"te', "debugfs")],
)
def test_unsafe_entry_is_rejected_naming_it(tmp_path: Path, bad_name: str, why: str) -> None:
    layers = [bootable_base([Member(bad_name, data=b"x")])]
    OciImage(layers).write_layout(tmp_path / "layout")
    with pytest.raises(InvalidInput) as err:
        import_image(tmp_path / "layout", tmp_path / "images", name="x", kernel_name=None)
    assert repr(bad_name) in str(err.value) and why in str(err.value)
    assert leftovers(tmp_path / "images") == []


def test_import_works_for_a_non_root_daemon_user(request: pytest.FixtureRequest) -> None:
    """Run the import as nobody: setuid root must still come out uid 0, mode 04755."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root to switch to an unprivileged user with setpriv")
    # pytest's tmp dirs are root-only (0700 parents): use a fresh dir nobody can reach.
    work = Path(tempfile.mkdtemp(prefix="banger-nobody-"))
    request.addfinalizer(lambda: shutil.rmtree(work, ignore_errors=True))
    OciImage(sample_layers()).write_layout(work / "layout")
    for p in [work, *work.rglob("*")]:
        os.chown(p, 65534, 65534)
    script = (
        "from pathlib import Path; import json, sys;"
        "from banger.images.importer import import_image;"
        f"m = import_image(Path('{work}/layout'), Path('{work}/images'), name='n',"
        " kernel_name=None);"
        "print(json.dumps({'id': m.id}))"
    )
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", script],
        capture_output=True, text=True, cwd=Path(__file__).parents[2],
        env={"PATH": os.environ["PATH"], "HOME": str(work)}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    image = work / "images" / json.loads(proc.stdout.splitlines()[-1])["id"] / ROOTFS_NAME
    assert os.stat(image).st_uid == 65534
    st = stat_path(image, "/bin/suid-true")
    assert st is not None and (st["uid"], st["mode"]) == ("0", "04755")
    notes = stat_path(image, "/home/dev/notes.txt")
    assert notes is not None and notes["uid"] == "1000"
