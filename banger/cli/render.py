"""Output: ASCII tables, JSON, errors; colour only on a TTY and never under NO_COLOR.

rich is imported where it is used: scripts that ask for ``--json`` or ``-q``
never pay its ~60 ms of imports.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from banger.core.display import escape_text
from banger.core.errors import BangerError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


def _colour_allowed(stream: Any) -> bool:
    return "NO_COLOR" not in os.environ and stream.isatty()


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    colour = _colour_allowed(stream)
    return Console(
        file=stream,
        no_color=not colour,
        color_system="auto" if colour else None,
        highlight=False,
        soft_wrap=True,
        # Piped output is for scripts: never fold a table row.
        width=None if stream.isatty() else 1000,
    )


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.ASCII, show_edge=False, pad_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console().print(table)


def _cell(value: Any) -> Text:
    """Cells are plain text (never markup) unless the caller passes a styled Text."""
    from rich.text import Text

    if isinstance(value, Text):
        return value
    return Text("" if value is None else str(value))


def print_fields(fields: Sequence[tuple[str, Any]]) -> None:
    """One ``key: value`` per line, keys aligned."""
    width = max((len(k) for k, _ in fields), default=0)
    out = console()
    for key, value in fields:
        out.print(_plain(f"{key + ':':<{width + 1}} {'' if value is None else value}"))


def print_error(exc: BangerError) -> None:
    """``banger: MESSAGE`` and its hint; text from elsewhere (a guest's words) escaped."""
    from rich.text import Text

    err = console(stderr=True)
    line = _plain(f"banger: {escape_text(exc.message)}")
    if exc.op_id:
        line.append(Text(f" (op {escape_text(exc.op_id)})", style="dim"))
    err.print(line)
    if exc.hint:
        # A hint may carry a log's last lines: kept as lines, indented, so none can
        # pass for a line of banger's own.
        hint = escape_text(exc.hint, keep="\n").replace("\n", "\n        ")
        err.print(_plain(f"  hint: {hint}"))


def warn(message: str) -> None:
    console(stderr=True).print(_plain(f"banger: warning: {escape_text(message)}"))


def _plain(text: str) -> Text:
    """Data printed literally: never read as rich markup (``[``, backslashes)."""
    from rich.text import Text

    return Text(text)
