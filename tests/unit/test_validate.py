"""Names, sizes, memory and vCPU counts are validated exactly, never normalised."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from banger.core.errors import InvalidInput
from banger.core.names import ID_RE, new_id
from banger.core.validate import (
    NAME_RE,
    SIZE_MAX,
    format_size,
    parse_memory_mib,
    parse_size,
    validate_name,
    validate_new_name,
    validate_vcpu,
)

# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    ["a", "0", "web", "dev-1", "a-b-c", "1st", "9", "x" * 63, "a" + "-" * 61 + "b", "db--2"],
)
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name, found",
    [
        ("Foo", "'F'"),
        ("webA", "'A'"),
        (" web", "' '"),
        ("web ", "' '"),
        ("we b", "' '"),
        ("web\n", "'\\n'"),
        ("\tweb", "'\\t'"),
        ("web\r", "'\\r'"),
        ("web.vm", "'.'"),
        ("a/b", "'/'"),
        ("../etc", "'.'"),
        ("a:b", "':'"),
        ("a=b", "'='"),
        ("a'b", '"\'"'),
        ('a"b', "'\"'"),
        ("a`b", "'`'"),
        ("a;b", "';'"),
        ("a_b", "'_'"),
        ("a\x00b", "'\\x00'"),
        ("a\x1bb", "'\\x1b'"),
        ("a\x7fb", "'\\x7f'"),
        ("ａbc", "U+FF41"),  # fullwidth a
        ("café", "U+00E9"),
        ("ıx", "U+0131"),  # Turkish dotless i
        ("İx", "U+0130"),  # Turkish dotted capital I
        ("a\u200bb", "U+200B"),  # zero-width space
        ("а", "U+0430"),  # Cyrillic a, looks Latin
        ("web\u00a0", "U+00A0"),
        ("１", "U+FF11"),  # fullwidth digit
    ],
)
def test_invalid_characters_are_rejected_and_named(name: str, found: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        validate_name(name)
    msg = exc.value.message
    assert msg.startswith("invalid VM name ")
    assert "use 1-63 lowercase letters, digits and '-'" in msg
    assert found in msg.split("(found ", 1)[1]
    assert "\n" not in msg and "\x00" not in msg and "\x1b" not in msg
    assert exc.value.hint


def test_message_matches_the_documented_shape() -> None:
    with pytest.raises(InvalidInput) as exc:
        validate_name("Foo")
    assert exc.value.message == (
        "invalid VM name 'Foo': use 1-63 lowercase letters, digits and '-', "
        "not starting or ending with '-' (found 'F')"
    )
    assert exc.value.hint == "names are never lower-cased for you; try 'foo'"


def test_uppercase_hint_only_suggests_a_valid_name() -> None:
    with pytest.raises(InvalidInput) as exc:
        validate_name("My_VM")
    assert "try" not in (exc.value.hint or "")


@pytest.mark.parametrize("name", ["-web", "web-", "-", "--", "-a-"])
def test_leading_or_trailing_dash_is_rejected(name: str) -> None:
    with pytest.raises(InvalidInput, match="must not start or end with '-'"):
        validate_name(name)


def test_empty_name_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="invalid VM name: it is empty"):
        validate_name("")


def test_length_63_is_accepted_and_64_rejected() -> None:
    assert validate_name("a" * 63) == "a" * 63
    with pytest.raises(InvalidInput, match="64 characters, at most 63 allowed"):
        validate_name("a" * 64)


def test_a_huge_name_gives_a_short_message() -> None:
    with pytest.raises(InvalidInput) as exc:
        validate_name("a" * 100_000)
    assert len(exc.value.message) < 200


def test_non_text_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="expected text"):
        validate_name(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="expected text"):
        validate_name(b"web")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["VM", "image", "kernel"])
def test_kind_appears_in_the_message(kind: str) -> None:
    assert validate_name("debian-12", kind) == "debian-12"  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=f"^invalid {kind} name 'Debian'"):
        validate_name("Debian", kind)  # type: ignore[arg-type]


# Written independently of NAME_RE; fullmatch, so a trailing newline cannot slip through.
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@given(st.text(max_size=70))
def test_any_accepted_name_is_a_dns_label_and_unchanged(name: str) -> None:
    try:
        out = validate_name(name)
    except InvalidInput as exc:
        assert "\n" not in exc.message
        assert _DNS_LABEL.fullmatch(name) is None
        return
    assert out is name
    assert _DNS_LABEL.fullmatch(name) and name.isascii()


@given(st.from_regex(NAME_RE, fullmatch=True))
def test_every_name_the_regex_allows_is_accepted(name: str) -> None:
    assert validate_name(name) == name


# ---------------------------------------------------------------- sizes

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    "text, expected",
    [
        ("512M", 512 * M),
        ("8G", 8 * G),
        ("1.5G", 3 * G // 2),
        ("2GiB", 2 * G),
        ("100MiB", 100 * M),
        ("1024K", M),
        ("1048576", M),
        ("4096B", 4096),
        ("1", 1),
        ("8g", 8 * G),
        ("8gib", 8 * G),
        ("8GB", 8 * G),
        ("8Gb", 8 * G),
        ("1T", T),
        ("1.25G", 5 * G // 4),
        ("0.5K", 512),
        ("0.125M", 128 * K),
        ("008G", 8 * G),
        ("2.0G", 2 * G),
        ("1.500G", 3 * G // 2),
        ("8388607T", 8388607 * T),
    ],
)
def test_sizes_parse_to_bytes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 8G",
        "8G ",
        "8 G",
        "8G\n",
        "\t8G",
        "8\u00a0G",
        "-1G",
        "-8",
        "+8G",
        "abc",
        "G",
        "8X",
        "8GG",
        "8iB",
        "8KIBB",
        "8Gi",
        "8P",
        "8E",
        ".5G",
        "5.G",
        "1.5.0G",
        "1,5G",
        "1_000M",
        "1e3M",
        "1E9",
        "0x10M",
        "inf",
        "nan",
        "Infinity",
        "８G",  # fullwidth digit
        "٣G",  # Arabic-Indic digit
        "8\u212a",  # Kelvin sign folds to K only under Unicode matching
        "1.2345G",
        "8G;rm",
        "'8G'",
        "8/G",
        "8:G",
        "8=G",
        "9" * 21,
    ],
)
def test_malformed_sizes_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_size(text)
    assert exc.value.message.startswith("invalid size ")
    assert "\n" not in exc.value.message


def test_negative_size_says_so() -> None:
    with pytest.raises(InvalidInput, match="sizes cannot be negative"):
        parse_size("-512M")


@pytest.mark.parametrize("text", ["0", "0G", "0.0G", "000", "0B", "0.000T"])
def test_zero_is_rejected(text: str) -> None:
    with pytest.raises(InvalidInput, match="must be larger than zero"):
        parse_size(text)


@pytest.mark.parametrize("text", ["1.5", "0.001K", "1.001G", "0.1M", "1.3K"])
def test_fractional_bytes_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInput, match="not a whole number of bytes"):
        parse_size(text)


@pytest.mark.parametrize("text", ["8388608T", "9223372036854775808", "99999999999999999999T"])
def test_sizes_beyond_the_limit_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInput, match="larger than"):
        parse_size(text)


def test_largest_size_is_accepted() -> None:
    assert parse_size(str(SIZE_MAX)) == SIZE_MAX


def test_size_message_names_the_field() -> None:
    with pytest.raises(InvalidInput, match="^invalid disk size 'big': "):
        parse_size("big", "disk size")


def test_non_text_size_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="expected text"):
        parse_size(8)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "n, text",
    [
        (8 * G, "8G"),
        (3 * G // 2, "1.5G"),
        (512 * M, "512M"),
        (5 * G // 4, "1280M"),
        (T, "1T"),
        (1536, "1.5K"),
        (1024, "1K"),
        (1000, "1000"),
        (1, "1"),
        (0, "0"),
        (G + 1, "1073741825"),
    ],
)
def test_format_size_picks_the_largest_exact_unit(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8G"])
def test_format_size_rejects_non_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        format_size(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=SIZE_MAX))
def test_format_then_parse_round_trips(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(
    st.integers(min_value=1, max_value=1 << 20),
    st.sampled_from(["K", "M", "G", "KiB", "MiB", "GiB", "k", "mb"]),
)
def test_parse_then_format_round_trips(count: int, unit: str) -> None:
    n = parse_size(f"{count}{unit}")
    assert parse_size(format_size(n)) == n


@given(st.text(max_size=12))
def test_parse_size_accepts_only_positive_whole_byte_counts(text: str) -> None:
    try:
        n = parse_size(text)
    except InvalidInput:
        return
    assert isinstance(n, int) and 0 < n <= SIZE_MAX
    assert text.isascii() and text == text.strip()


# ---------------------------------------------------------------- memory and vCPUs


@pytest.mark.parametrize(
    "text, mib",
    [
        ("1024", 1024),
        ("128", 128),
        ("1048576", 1 << 20),
        ("2G", 2048),
        ("512MiB", 512),
        ("1T", 1 << 20),
    ],
)
def test_memory_is_mib_unless_a_unit_is_given(text: str, mib: int) -> None:
    assert parse_memory_mib(text) == mib


@pytest.mark.parametrize("text", ["127", "0", "1048577", "64M", "2T", "-1024", "1024 ", "lots"])
def test_memory_outside_128_mib_to_1_tib_is_rejected(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid memory"):
        parse_memory_mib(text)


def test_memory_that_is_not_whole_mib_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="not a whole number of MiB"):
        parse_memory_mib("1048577K")


@pytest.mark.parametrize("n", [1, 2, 64])
def test_vcpu_in_range_is_accepted(n: int) -> None:
    assert validate_vcpu(n) == n


@pytest.mark.parametrize("n", [0, -1, 65, 1000])
def test_vcpu_out_of_range_is_rejected(n: int) -> None:
    with pytest.raises(InvalidInput, match="must be between 1 and 64"):
        validate_vcpu(n)


@pytest.mark.parametrize("bad", [True, 2.0, "2", None])
def test_vcpu_must_be_an_integer(bad: object) -> None:
    with pytest.raises(InvalidInput, match="expected a whole number"):
        validate_vcpu(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["0123456789ab", "deadbeefcafe", "000000000000"])
def test_a_new_name_cannot_have_the_shape_of_an_id(name: str) -> None:
    assert ID_RE.fullmatch(name)
    with pytest.raises(InvalidInput, match="shape of an id"):
        validate_new_name(name, "image")
    assert validate_name(name) == name  # still a valid ref: it may be an id


@pytest.mark.parametrize("name", ["0123456789a", "0123456789abc", "0123456789ag", "dead-beef-caf"])
def test_names_near_the_id_shape_are_fine(name: str) -> None:
    assert validate_new_name(name, "VM") == name


def test_new_ids_have_the_id_shape() -> None:
    ids = {new_id() for _ in range(50)}
    assert len(ids) == 50 and all(ID_RE.fullmatch(i) for i in ids)
