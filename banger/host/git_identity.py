"""The daemon user's git identity, as the ``/root/.gitconfig`` a new guest starts with.

Only ``user.name`` and ``user.email`` cross: whatever else the host's git
config holds (credential helpers, aliases running programs) stays on the host.
No git, no global config, or neither key set means no file, never an error.
"""

from __future__ import annotations

import logging

from banger.core.errors import HostToolError
from banger.host.run import require_tool, run

log = logging.getLogger("banger.host.git_identity")

IDENTITY_KEYS = ("user.name", "user.email")
# What git's own config writer escapes inside a quoted value (config.c write_pair).
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\t": "\\t", "\b": "\\b"}


def host_git_identity() -> dict[str, str]:
    """``{"user.name": ..., "user.email": ...}`` as ``git config --global`` has them (each may
    be absent); empty when git is missing or its global config cannot be read."""
    try:
        git = require_tool("git", "git")
        proc = run(
            [git, "config", "--global", "--null", "--get-regexp", r"^user\.(name|email)$"],
            timeout=10, check=False,
        )
    except HostToolError as exc:
        log.info("no git identity for guests: %s", exc.message)
        return {}
    if proc.returncode != 0:  # 1: no such key; anything else: git says why
        if proc.returncode != 1:
            log.warning("no git identity for guests: git config exited %d: %s",
                        proc.returncode, proc.stderr.decode("utf-8", "replace").strip())
        return {}
    identity: dict[str, str] = {}
    for record in proc.stdout.split(b"\0"):
        key, sep, value = record.partition(b"\n")
        if sep and key.decode("ascii", "replace") in IDENTITY_KEYS:
            identity[key.decode()] = value.decode("utf-8", "surrogateescape")  # last one wins
    return identity


def _quoted(value: str) -> str | None:
    """``value`` as a double-quoted git config value; None for what a value line cannot hold."""
    if any(c in value for c in "\n\r\0") or any(
        (ord(c) < 0x20 and c not in _ESCAPES) or ord(c) == 0x7F for c in value
    ):
        return None
    return '"' + "".join(_ESCAPES.get(c, c) for c in value) + '"'


def guest_gitconfig(identity: dict[str, str]) -> bytes | None:
    """The ``[user]`` section for ``identity``; None when nothing usable is left.

    Values are quoted and escaped as git writes them, so quotes, backslashes,
    ``#`` and ``;`` survive; a value with a newline, NUL or other control
    character is left out (and logged): it could not stay one value.
    """
    lines = []
    for key in IDENTITY_KEYS:
        value = identity.get(key)
        if not value:
            continue
        quoted = _quoted(value)
        if quoted is None:
            log.warning("git %s not copied to guests: it holds a control character (%r)",
                        key, value)
            continue
        lines.append(f"\t{key.split('.')[1]} = {quoted}\n")
    if not lines:
        return None
    return ("[user]\n" + "".join(lines)).encode("utf-8", "surrogateescape")
