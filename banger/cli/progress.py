"""Following an async operation: live stages on a terminal, one line per stage otherwise."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from banger.api.client import Client
from banger.api.errors import error_from_body
from banger.api.models import Operation, OperationState, Stage, StageState
from banger.cli.render import console

if TYPE_CHECKING:
    from rich.text import Text

LONG_POLL_SECONDS = 10.0
_MARK = {StageState.RUNNING: "..", StageState.DONE: "ok", StageState.FAILED: "!!"}
_STYLE = {StageState.RUNNING: "cyan", StageState.DONE: "green", StageState.FAILED: "red"}


def _elapsed(stage: Stage) -> float:
    end = stage.finished_at.timestamp() if stage.finished_at else time.time()
    return max(0.0, end - stage.started_at.timestamp())


def _stage_line(stage: Stage) -> Text:
    from rich.text import Text

    line = Text(f"[{_MARK[stage.state]}] ", style=_STYLE[stage.state])
    line.append(f"{stage.name:<10} {_elapsed(stage):5.1f}s")
    if stage.detail:
        line.append(f"  {stage.detail}", style="dim")
    return line


def _render(op: Operation) -> Text:
    from rich.text import Text

    return Text("\n").join(_stage_line(s) for s in op.stages) if op.stages else Text("starting")


def follow(client: Client, op: Operation, *, quiet: bool = False) -> Operation:
    """Show ``op``'s stages until it ends (``quiet``: just wait); raise its error if it failed."""
    out = console(stderr=True)
    if quiet:
        while not op.state.finished:
            op = client.operation(op.id, wait=LONG_POLL_SECONDS, revision=op.revision)
    elif out.is_terminal:
        from rich.live import Live  # only terminals need it; keeps piped commands' start-up lean

        with Live(_render(op), console=out, refresh_per_second=8, transient=False) as live:
            while not op.state.finished:
                op = client.operation(op.id, wait=LONG_POLL_SECONDS, revision=op.revision)
                live.update(_render(op))
    else:
        printed = 0  # stages finish in order: print each once it is done
        while True:
            for stage in op.stages[printed:]:
                if stage.state is StageState.RUNNING:
                    break
                out.print(_stage_line(stage))
                printed += 1
            if op.state.finished:
                break
            op = client.operation(op.id, wait=LONG_POLL_SECONDS, revision=op.revision)
    if op.state is not OperationState.SUCCEEDED:
        assert op.error is not None
        raise error_from_body(op.error)
    if not quiet:
        total = (op.finished_at or op.updated_at).timestamp() - op.created_at.timestamp()
        out.print(f"{op.kind} done in {total:.1f}s")
    sys.stderr.flush()
    return op
