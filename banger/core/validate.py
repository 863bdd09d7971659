"""Validation of user-supplied names, sizes and counts, done once at the boundary.

Nothing here normalises input: ``" web"`` or ``"Web"`` is rejected, never
stripped or lower-cased, so the name a user typed is the name stored.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

from banger.core.errors import InvalidInput
from banger.core.names import ID_RE

if TYPE_CHECKING:
    from pydantic import ValidationError

NameKind = Literal["VM", "image", "kernel", "session"]

NAME_MAX_LEN = 63
# A DNS label (RFC 1123), because VM names become `<name>.vm` host names.
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_NAME_RULE = "use 1-63 lowercase letters, digits and '-', not starting or ending with '-'"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# Integer part capped at 20 digits so a hostile string never reaches int()'s slow path.
_SIZE_RE = re.compile(
    r"(?P<int>[0-9]{1,20})(?:\.(?P<frac>[0-9]{1,3}))?(?:(?P<unit>[KMGT])(?:I?B)?|B)?",
    re.ASCII | re.IGNORECASE,
)
SIZE_MAX = (1 << 63) - 1  # what SQLite INTEGER and off_t can hold
_SIZE_RULE = (
    "use a positive number and an optional binary unit K, M, G or T (e.g. 512M, 1.5G, 2GiB)"
)

MEMORY_MIB_MIN = 128
MEMORY_MIB_MAX = 1 << 20  # 1 TiB
VCPU_MIN = 1
VCPU_MAX = 64


def show_value(value: object) -> str:
    """``repr(value)``, cut short: a hostile argument never floods an error line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _show(text: str, limit: int = 70) -> str:
    """Quote ``text`` for a one-line message: control characters escaped, long text cut."""
    if len(text) > limit:
        quoted = repr(text[:limit])
        return quoted[:-1] + "..." + quoted[-1]
    return repr(text)


def _describe_char(ch: str) -> str:
    shown = repr(ch)
    if not ch.isascii() or not ch.isprintable():
        name = unicodedata.name(ch, "")
        shown += f" U+{ord(ch):04X}" + (f" {name}" if name else "")
    return shown


def validate_name(name: str, kind: NameKind = "VM") -> str:
    """Return ``name`` unchanged if it is a valid VM/image/kernel name, else raise InvalidInput."""
    if not isinstance(name, str):
        raise InvalidInput(f"invalid {kind} name: expected text, got {type(name).__name__}")
    if NAME_RE.fullmatch(name):
        return name
    prefix = f"invalid {kind} name {_show(name)}"
    hint = "for example: dev-1"
    if not name:
        raise InvalidInput(f"invalid {kind} name: it is empty; {_NAME_RULE}", hint=hint)
    bad = next((ch for ch in name if ch not in _NAME_CHARS), None)
    if bad is not None:
        found = _describe_char(bad)
        if bad.isascii() and bad.isupper() and NAME_RE.fullmatch(name.lower()):
            hint = f"names are never lower-cased for you; try {name.lower()!r}"
        raise InvalidInput(f"{prefix}: {_NAME_RULE} (found {found})", hint=hint)
    if len(name) > NAME_MAX_LEN:
        raise InvalidInput(
            f"{prefix}: {len(name)} characters, at most {NAME_MAX_LEN} allowed", hint=hint
        )
    raise InvalidInput(f"{prefix}: must not start or end with '-'", hint=hint)


def validate_new_name(name: str, kind: NameKind = "VM") -> str:
    """:func:`validate_name`, and not shaped like an id: the name of an object being made."""
    validate_name(name, kind)
    if ID_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid {kind} name {name!r}: 12 hex digits is the shape of an id, "
            "and a name must never be mistaken for another object's id",
            hint="add a letter outside a-f or a '-', e.g. " + repr(f"{kind.lower()}-{name}"),
        )
    return name


def parse_size(text: str, what: str = "size") -> int:
    """Parse a size such as ``512M``, ``1.5G``, ``2GiB`` or ``1048576`` into bytes.

    Grammar: digits, optionally ``.`` and 1-3 decimals, then an optional unit.
    Units K, M, G, T are binary (powers of 1024) and may be followed by ``B``
    or ``iB``; they are case-insensitive, so ``8g``, ``8G``, ``8GB`` and
    ``8GiB`` all mean 8 * 2**30. No unit (or a bare ``B``) means bytes. The
    result must be a whole, positive number of bytes no larger than 2**63-1.
    Whitespace, signs, exponents, ``inf``/``nan``, underscores and non-ASCII
    digits are rejected, not trimmed.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"invalid {what}: expected text, got {type(text).__name__}")
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        why = "sizes cannot be negative" if text.startswith("-") else _SIZE_RULE
        raise InvalidInput(f"invalid {what} {_show(text)}: {why}", hint="for example: 8G")
    frac = m["frac"] or ""
    number = Fraction(int(m["int"] + frac), 10 ** len(frac))
    value = number * _UNITS[(m["unit"] or "").upper()]
    if value.denominator != 1:
        raise InvalidInput(
            f"invalid {what} {_show(text)}: not a whole number of bytes",
            hint="use a smaller unit, e.g. 1536M instead of 1.501G",
        )
    size = int(value)
    if size <= 0:
        raise InvalidInput(f"invalid {what} {_show(text)}: must be larger than zero")
    if size > SIZE_MAX:
        raise InvalidInput(f"invalid {what} {_show(text)}: larger than {format_size(SIZE_MAX)}")
    return size


def format_size(n: int) -> str:
    """Render bytes in the largest unit that shows them exactly with at most one decimal."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"size must be a non-negative integer, got {n!r}")
    for unit in ("T", "G", "M", "K"):
        q = Fraction(n, _UNITS[unit])
        if q >= 1 and (q * 10).denominator == 1:
            whole, tenths = divmod(int(q * 10), 10)
            return f"{whole}{unit}" if tenths == 0 else f"{whole}.{tenths}{unit}"
    return str(n)


def approx_size(n: int) -> str:
    """Bytes for a reader, rounded: ``1.2M``, ``96.0M``, ``812K``, ``37 bytes``."""
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f}{unit}"
    return f"{n} bytes"


def _check_int(value: int, what: str, lo: int, hi: int, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"invalid {what} {value!r}: expected a whole number")
    if not lo <= value <= hi:
        raise InvalidInput(
            f"invalid {what} {value}{unit}: must be between {lo} and {hi}{unit}",
            hint=f"pick a value from {lo} to {hi}",
        )
    return value


def validate_memory_mib(mib: int) -> int:
    """Return ``mib`` if it is a guest memory size within 128..1048576 MiB."""
    return _check_int(mib, "memory", MEMORY_MIB_MIN, MEMORY_MIB_MAX, " MiB")


def parse_memory_mib(text: str) -> int:
    """Parse a memory flag: a plain integer is MiB (``1024``); a unit is allowed (``2G``)."""
    if isinstance(text, str) and re.fullmatch(r"[0-9]{1,20}", text, re.ASCII):
        return validate_memory_mib(int(text))
    size = parse_size(text, "memory")
    if size % (1 << 20):
        raise InvalidInput(
            f"invalid memory {_show(text)}: not a whole number of MiB", hint="for example: 2G"
        )
    return validate_memory_mib(size >> 20)


def validate_vcpu(n: int) -> int:
    """Return ``n`` if it is a vCPU count within 1..64; checking host CPUs is the caller's job."""
    return _check_int(n, "vCPU count", VCPU_MIN, VCPU_MAX)


def safe_component(name: str, *, where: str, hint: str = "rebuild it without such names") -> str:
    """Return ``name`` if it is one path component from untrusted data, else InvalidInput.

    One component means: not empty, no ``/``, not ``.`` or ``..``, no NUL. Every
    name read from an image, a layer or a kernel package passes here before it
    becomes part of a host path.
    """
    why = None
    if name in ("", ".", ".."):
        why = "empty" if not name else f"'{name}' is not a name"
    elif "/" in name:
        why = "a name holds '/'"
    elif "\0" in name:
        why = "a name holds a NUL byte"
    if why is not None:
        raise InvalidInput(f"unsafe entry name {_show(name)} in {where}: {why}", hint=hint)
    return name


def safe_relative_path(
    path: str, *, where: str, hint: str = "rebuild it without such paths"
) -> str:
    """A relative path from untrusted data, each component checked by :func:`safe_component`."""
    parts = path.split("/")
    if not path or path.startswith("/"):
        raise InvalidInput(f"unsafe path {_show(path)} in {where}: not a relative path", hint=hint)
    for part in parts:
        safe_component(part, where=where, hint=hint)
    return path


BRIDGE_PREFIXES = range(8, 31)  # /31 and /32 leave no guest address
_CIDR_RULE = "use the bridge's address and its subnet's prefix, e.g. 172.16.0.1/24"


def parse_bridge_cidr(value: object) -> ipaddress.IPv4Interface:
    """The bridge's address with its prefix (172.16.0.1/24): a host address of a /8-/30."""
    if not isinstance(value, str):
        raise InvalidInput(f"invalid bridge_cidr {value!r}", hint=_CIDR_RULE)
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError as exc:
        raise InvalidInput(
            f"not an IPv4 address/prefix such as 172.16.0.1/24 ({exc})", hint=_CIDR_RULE
        ) from None
    if "/" not in value or iface.network.prefixlen not in BRIDGE_PREFIXES:
        raise InvalidInput(
            "needs a prefix length from /8 to /30, e.g. 172.16.0.1/24", hint=_CIDR_RULE
        )
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise InvalidInput(
            f"{iface.ip} is the subnet's network or broadcast address, not a host address",
            hint=_CIDR_RULE,
        )
    return iface


def first_validation_error(exc: ValidationError) -> str:
    """``field.sub: message`` of a model's first validation error, for a one-line message."""
    errors = exc.errors()
    if not errors:
        return str(exc)
    where = ".".join(str(p) for p in errors[0]["loc"])
    return f"{where}: {errors[0]['msg']}" if where else str(errors[0]["msg"])


_KERNEL_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}", re.ASCII)


def validate_kernel_version(version: object, *, where: str) -> str:
    """A kernel release string from a package (``6.1.0-18-cloud-amd64``): one safe path
    component that cannot be read as an option; it names ``lib/modules/<version>``."""
    if not isinstance(version, str) or not _KERNEL_VERSION_RE.fullmatch(version):
        raise InvalidInput(
            f"{where}: kernel version {str(version)[:80]!r} is not a kernel release string",
            hint="a release is 1-64 of A-Z a-z 0-9 . + ~ _ - starting with a letter or digit",
        )
    return version
