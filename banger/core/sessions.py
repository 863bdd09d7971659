"""Sessions as the guest reports them: records parsed as hostile, and what the daemon writes.

A guest answers ``LIST`` and ``READ`` (``core/session_scripts.py``) with
NUL-terminated fields: ``banger-session``, name, mode, status, meta, pid,
segments, lost, attached. Every field is checked against a narrow grammar; a
record that does not fit is counted and dropped, never half-read. Text a guest
could have changed (command, cwd, the attach holder) is escaped when shown.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from banger.core.display import escape_text
from banger.core.session_scripts import RECORD_MAGIC
from banger.core.validate import NAME_RE

SessionMode = Literal["pipe", "pty"]
SessionState = Literal["running", "ended"]
EndReason = Literal["exited", "stopped", "vm-stopped", "lost"]

ARGS_MAX = 256
COMMAND_BYTES_MAX = 64 << 10
SEND_BYTES_MAX = 1 << 20  # one write of the guest's dd
_FIELDS = 8  # after the magic
_INT_MAX = (1 << 63) - 1
_DIGITS = re.compile(r"[0-9]{1,19}", re.ASCII)
_STATUS = re.compile(r"ended (?P<code>[0-9]{1,3}|-) (?P<end>[0-9]{1,12}|-) "
                     r"(?P<how>exited|stopped|vm-stopped|lost)", re.ASCII)
_READ_HEADER = re.compile(rb"(?P<start>[0-9]{1,19}) (?P<count>[0-9]{1,19})\n")
_WHO_MAX = 300


class SessionMeta(BaseModel):
    """What the daemon writes into the guest at start (one JSON line, ``meta``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    command: list[str] = Field(min_length=1, max_length=ARGS_MAX)
    cwd: str = Field(min_length=1, max_length=4096)
    started: int = Field(ge=0, le=_INT_MAX)

    def line(self) -> str:
        """The meta as one ASCII line (JSON escapes every control character)."""
        return json.dumps(self.model_dump(), ensure_ascii=True, separators=(",", ":"))


class SessionInfo(BaseModel):
    """One session of a VM, as its guest keeps it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vm: str
    name: str
    mode: SessionMode
    state: SessionState
    reason: EndReason | None = None  # why it ended
    exit_code: int | None = None
    command: list[str]
    cwd: str
    started_at: datetime
    ended_at: datetime | None = None
    pid: int | None = None  # the supervisor's
    output_start: int = Field(ge=0)  # the first offset still kept (older output was rotated)
    output_end: int = Field(ge=0)  # the offset the next byte of output gets
    log_truncated: bool = False  # some output could not be written (the guest's disk was full)
    attached: str | None = None  # who holds the interactive attach (escaped)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "strict")


def _when(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _segments(text: str) -> tuple[int, int]:
    """``" B S B S"`` -> (first kept offset, end offset)."""
    words = text.split()
    if len(words) % 2 or len(words) > 16 or not all(_DIGITS.fullmatch(w) for w in words):
        raise ValueError("segments")
    pairs = [(int(b), int(s)) for b, s in zip(words[::2], words[1::2], strict=True)]
    if not pairs:
        return 0, 0
    end = max(b + s for b, s in pairs)
    if end > _INT_MAX:
        raise ValueError("segments")
    return min(b for b, _ in pairs), end


def _record(vm: str, fields: list[bytes]) -> SessionInfo:
    """One record's 8 fields (after the magic); ValueError when any does not fit."""
    name, mode, status, meta_raw, pid, segs, lost, who = (_text(f) for f in fields)
    if not NAME_RE.fullmatch(name) or mode not in ("pipe", "pty") or lost not in ("0", "1"):
        raise ValueError("name, mode or lost")
    if pid and not _DIGITS.fullmatch(pid):
        raise ValueError("pid")
    meta = SessionMeta.model_validate_json(meta_raw)
    start, end = _segments(segs)
    ended: dict[str, object] = {}
    if status != "running":
        m = _STATUS.fullmatch(status)
        if m is None:
            raise ValueError("status")
        ended = {
            "state": "ended", "reason": m["how"],
            "exit_code": None if m["code"] == "-" else int(m["code"]),
            "ended_at": None if m["end"] == "-" else _when(int(m["end"])),
        }
    return SessionInfo(
        vm=vm, name=name, mode="pipe" if mode == "pipe" else "pty", state="running",
        command=meta.command, cwd=meta.cwd,
        started_at=_when(meta.started), pid=int(pid) if pid else None, output_start=start,
        output_end=end, log_truncated=lost == "1",
        attached=escape_text(who[:_WHO_MAX]) if who else None,
    ).model_copy(update=ended)


def parse_records(vm: str, data: bytes) -> tuple[list[SessionInfo], int, int]:
    """The sessions in ``data``, how many records did not fit, and where the records end."""
    found: list[SessionInfo] = []
    bad = 0
    pos = 0
    magic = RECORD_MAGIC.encode() + b"\0"
    while data.startswith(magic, pos):
        fields: list[bytes] = []
        cur = pos + len(magic)
        for _ in range(_FIELDS):
            nul = data.find(b"\0", cur)
            if nul < 0:
                return found, bad + 1, len(data)
            fields.append(data[cur:nul])
            cur = nul + 1
        try:
            found.append(_record(vm, fields))
        except (ValueError, ValidationError, OverflowError, OSError):
            bad += 1
        pos = cur
    return found, bad, pos


def parse_list(vm: str, data: bytes) -> tuple[list[SessionInfo], int]:
    """A ``LIST`` answer: the sessions, and how many records (or trailing bytes) did not fit."""
    found, bad, end = parse_records(vm, data)
    return found, bad + (1 if end < len(data) else 0)


def parse_read(vm: str, data: bytes, limit: int) -> tuple[SessionInfo, int, bytes]:
    """A ``READ`` answer: the session, the offset its chunk starts at, and the chunk.

    ValueError when it does not fit: one valid record, a ``START COUNT`` line with
    COUNT <= ``limit``, at most COUNT bytes (fewer when the guest's segment was
    rotated away mid-read).
    """
    found, bad, end = parse_records(vm, data)
    if len(found) != 1 or bad:
        raise ValueError("the session's record")
    m = _READ_HEADER.match(data, end)
    if m is None or int(m["count"]) > limit:
        raise ValueError("the output header")
    chunk = data[m.end():]
    if len(chunk) > int(m["count"]):
        raise ValueError("more output than announced")
    return found[0], int(m["start"]), chunk
