"""Image references, the skopeo command line and skopeo error mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.core.errors import InvalidInput, NotFound, Unavailable
from banger.host.skopeo import classify_error, copy_argv
from banger.images.oci import OciRef, parse_reference, skopeo_source


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("debian", OciRef("docker.io", "library/debian", "latest", None)),
        ("debian:bookworm", OciRef("docker.io", "library/debian", "bookworm", None)),
        ("docker.io/library/debian:bookworm",
         OciRef("docker.io", "library/debian", "bookworm", None)),
        ("docker://ghcr.io/org/tool:v1.2", OciRef("ghcr.io", "org/tool", "v1.2", None)),
        ("user/app", OciRef("docker.io", "user/app", "latest", None)),
        ("localhost:5000/test:1", OciRef("localhost:5000", "test", "1", None)),
        ("127.0.0.1:5000/a/b-c_d.e:1", OciRef("127.0.0.1:5000", "a/b-c_d.e", "1", None)),
        ("[::1]:5000/x", OciRef("[::1]:5000", "x", "latest", None)),
        ("quay.io/x/y@sha256:" + "a" * 64, OciRef("quay.io", "x/y", None, "sha256:" + "a" * 64)),
    ],
)
def test_references_are_parsed_and_normalised_like_docker(ref: str, expected: OciRef) -> None:
    assert parse_reference(ref) == expected


@pytest.mark.parametrize(
    "ref",
    ["", "Debian", "debian:", "debian:-x", "a//b", "-a/b", "debian@sha256:short",
     "debian:bookworm extra", "x/" + "a" * 260, "a:b:c", "debian\n"],
)
def test_malformed_references_are_rejected_before_skopeo_runs(ref: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_reference(ref)
    assert err.value.hint and "REPOSITORY" in err.value.hint


def test_reference_prints_canonically() -> None:
    assert str(parse_reference("debian")) == "docker.io/library/debian:latest"


@pytest.mark.parametrize(
    "registry, loopback",
    [("127.0.0.1:5000", True), ("localhost", True), ("[::1]:80", True),
     ("127.0.0.1.nip.io:5000", False), ("registry.example:443", False), ("docker.io", False)],
)
def test_only_loopback_registries_skip_tls_verification(registry: str, loopback: bool) -> None:
    ref = parse_reference(f"{registry}/img:1")
    argv = copy_argv(
        "skopeo", skopeo_source(ref), Path("/c/layout"), blobs=Path("/c/blobs"),
        tmpdir=Path("/c/tmp"), digestfile=Path("/c/d"),
    )
    assert ("--src-tls-verify=false" in argv) is loopback
    assert all("tls-verify" not in a or loopback for a in argv)


def test_skopeo_argv_shares_the_blob_cache_and_picks_linux_amd64() -> None:
    ref = parse_reference("debian:bookworm")
    argv = copy_argv(
        "/usr/bin/skopeo", skopeo_source(ref), Path("/c/layout"), blobs=Path("/c/oci/blobs"),
        tmpdir=Path("/c/t"), digestfile=Path("/c/t/digest"),
    )
    assert argv == [
        "/usr/bin/skopeo", "--override-arch", "amd64", "--override-os", "linux",
        "--tmpdir", "/c/t", "copy", "--retry-times", "2",
        "--dest-shared-blob-dir", "/c/oci/blobs", "--digestfile", "/c/t/digest",
        "docker://docker.io/library/debian:bookworm", "oci:/c/layout:banger",
    ]


@pytest.mark.parametrize(
    "stderr, cls",
    [
        ('reading manifest 2 in 127.0.0.1:5000/test: manifest unknown: manifest unknown', NotFound),
        ("requested access to the resource is denied", NotFound),
        ("unauthorized: authentication required", NotFound),
        ('pinging container registry x: Get "https://x/v2/": dial tcp: lookup x: no such host',
         Unavailable),
        ("dial tcp 127.0.0.1:1: connect: connection refused", Unavailable),
        ("choosing image instance: no image found in manifest list for architecture amd64",
         NotFound),
    ],
)
def test_skopeo_failures_map_to_typed_errors_with_hints(stderr: str, cls: type) -> None:
    err = classify_error(skopeo_source(parse_reference("127.0.0.1:5000/test:2")), stderr)
    assert isinstance(err, cls)
    assert err.hint  # type: ignore[attr-defined]


def test_unrecognised_skopeo_failure_is_left_to_the_generic_error() -> None:
    assert classify_error(skopeo_source(parse_reference("x/y")), "something odd happened") is None
