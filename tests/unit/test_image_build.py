"""Golden image build: input validation, the mmdebstrap command, image.json."""

from __future__ import annotations

import json
import shlex
import string
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from banger.core.errors import InvalidInput, StoreError
from banger.core.manifests import ImageManifest
from banger.core.validate import validate_name
from banger.host.mmdebstrap import mmdebstrap_argv
from banger.images.build import (
    BASE_PACKAGES,
    DPKG_EXCLUDES,
    build_image,
    finish_hook_command,
    mirror_lines,
    parse_source,
    validate_package_names,
)
from banger.images.manifest import write_manifest
from tests.support.image import read_image_json


@pytest.mark.parametrize("name", ["git", "build-essential", "g++", "libc6-dev", "python3.11"])
def test_debian_package_names_are_accepted(name: str) -> None:
    assert validate_package_names([name]) == (name,)


@pytest.mark.parametrize(
    "name", ["", "a", "Git", "-rf", "foo bar", "foo;reboot", "$(id)", "pkg=1.0", "pkg:amd64",
             "--include=x", "ñ"]
)
def test_anything_else_is_rejected_naming_the_package(name: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_package_names(["git", name])
    assert repr(name)[1:-1] in err.value.message or name in err.value.message


@given(st.text(max_size=20))
def test_accepted_package_names_never_look_like_options_or_shell(name: str) -> None:
    try:
        validate_package_names([name])
    except InvalidInput:
        return
    assert set(name) <= set(string.ascii_lowercase + string.digits + "+.-")
    assert len(name) >= 2 and not name.startswith(("-", "+", "."))


def test_duplicate_packages_are_kept_once_in_order() -> None:
    assert validate_package_names(["git", "vim", "git"]) == ("git", "vim")


def test_from_accepts_debian_suites_only() -> None:
    assert parse_source("debian:bookworm") == "bookworm"
    for bad in ("ubuntu:jammy", "debian:", "debian:bookworm;x", "bookworm", "docker.io/debian"):
        with pytest.raises(InvalidInput) as err:
            parse_source(bad)
        assert err.value.hint and "debian:" in err.value.hint


def test_image_names_follow_the_grammar() -> None:
    # build_image checks its name with the one grammar every name follows (core.validate).
    assert validate_name("debian-bookworm", "image") == "debian-bookworm"
    for bad in ("", "Debian", "../x", "a b", "-x", "x" * 64):
        with pytest.raises(InvalidInput):
            validate_name(bad, "image")
        with pytest.raises(InvalidInput):
            build_image(bad, Path("/nonexistent"), kernel_name=None)


def test_mmdebstrap_argv_is_minbase_with_the_packages_and_the_hook() -> None:
    argv = mmdebstrap_argv(
        "/usr/bin/mmdebstrap", "bookworm", ("git", "curl"), "HOOK", unshare=False,
        mirrors=mirror_lines("bookworm"), dpkg_options=DPKG_EXCLUDES,
    )
    assert argv[:5] == [
        "/usr/bin/mmdebstrap", "--mode=root", "--variant=minbase", "--format=null",
        "--include=git,curl",
    ]
    assert "--customize-hook=HOOK" in argv
    assert argv[-5:-3] == ["bookworm", "/dev/null"]
    assert argv[-3:] == mirror_lines("bookworm")
    assert "--dpkgopt=path-exclude=/usr/share/man/*" in argv
    unshared = mmdebstrap_argv("mmdebstrap", "sid", ("git",), "H", unshare=True,
                               mirrors=mirror_lines("sid"))
    assert unshared[1] == "--mode=unshare"
    assert unshared[-1] == "deb http://deb.debian.org/debian sid main"


def test_stable_suites_get_security_updates() -> None:
    assert "deb http://deb.debian.org/debian-security bookworm-security main" in mirror_lines(
        "bookworm"
    )


def test_base_packages_include_what_the_guest_contract_needs() -> None:
    for pkg in ("systemd-sysv", "openssh-server", "iproute2", "ca-certificates", "git", "curl"):
        assert pkg in BASE_PACKAGES


def test_build_rejects_bad_input_before_touching_disk(tmp_path: Path) -> None:
    images = tmp_path / "images"
    with pytest.raises(InvalidInput):
        build_image("ok", images, packages=["rm -rf"], kernel_name=None)
    with pytest.raises(InvalidInput):
        build_image("ok", images, source="alpine:3.19", kernel_name=None)
    assert not images.exists()


def test_image_json_round_trips(tmp_path: Path) -> None:
    manifest = ImageManifest(
        id="0123456789ab", name="dev", source="debian:bookworm", kernel_name="debian-cloud",
        packages=("git", "curl"), rootfs_bytes=10, work_seed_bytes=2, rootfs_sha256="ab" * 32,
        built_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), build_seconds=61.5,
    )
    write_manifest(tmp_path, manifest)
    assert read_image_json(tmp_path) == manifest
    assert [p.name for p in tmp_path.iterdir()] == ["image.json"]  # no temp file left


def test_image_json_ignores_unknown_keys_from_a_newer_banger(tmp_path: Path) -> None:
    (tmp_path / "image.json").write_text(
        '{"id": "x", "name": "n", "source": "s", "kernel_name": null, "future": 1}'
    )
    assert read_image_json(tmp_path).name == "n"


def test_a_missing_or_corrupt_image_json_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        read_image_json(tmp_path)
    (tmp_path / "image.json").write_text("{not json")
    with pytest.raises(StoreError):
        read_image_json(tmp_path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("init", "/sbin/init init=/bin/sh"), ("rootfs_bytes", "lots"), ("packages", "git")],
)
def test_a_damaged_image_json_is_one_store_error_naming_the_file_and_field(
    tmp_path: Path, field: str, value: object
) -> None:
    data = {"id": "x", "name": "n", "source": "s", "kernel_name": None, field: value}
    (tmp_path / "image.json").write_text(json.dumps(data))
    with pytest.raises(StoreError) as err:
        read_image_json(tmp_path)
    assert str(tmp_path / "image.json") in err.value.message and field in err.value.message
    assert "\n" not in err.value.message and err.value.hint


def test_the_finish_hook_runs_our_module_isolated_from_the_working_directory() -> None:
    words = shlex.split(finish_hook_command(Path("/state/images/.build-x")))
    assert words[:4] == [sys.executable, "-I", "-m", "banger.images.build"]
    assert words[4:] == ["finish", "/state/images/.build-x", "$1"]
