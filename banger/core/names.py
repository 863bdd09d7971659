"""Readable generated VM names: ``<adjective>-<noun>-<4 hex>``."""

from __future__ import annotations

import secrets
from collections.abc import Container

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
