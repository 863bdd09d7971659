"""Object ids (12 hex digits) and readable generated VM names: ``<adjective>-<noun>-<4 hex>``."""

from __future__ import annotations

import re
import secrets
from collections.abc import Container

ID_LEN = 12
# The shape of every id banger makes (VMs, images, operations). No name may take it,
# so a ref is never both one object's id and another's name.
ID_RE = re.compile(f"[0-9a-f]{{{ID_LEN}}}", re.ASCII)


def new_id() -> str:
    """A fresh random id: ``ID_LEN`` lowercase hex digits."""
    return secrets.token_hex(ID_LEN // 2)

_ADJECTIVES = (
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lively", "merry",
    "nimble", "proud", "quick", "quiet", "rapid", "shiny", "silent", "sunny", "swift", "witty",
)
_NOUNS = (
    "otter", "falcon", "badger", "heron", "lynx", "marten", "osprey", "panda", "quokka", "raven",
    "seal", "tapir", "walrus", "yak", "zebra", "beaver", "comet", "meteor", "nebula", "pulsar",
)


def generate_vm_name(taken: Container[str]) -> str:
    """A fresh name not in ``taken`` (valid by construction: lowercase, digits and '-')."""
    while True:
        name = (
            f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.token_hex(2)}"
        )
        if name not in taken:
            return name
