"""Asking the daemon the same question of several VMs at once (``vm ports``, ``vm stats``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pydantic import BaseModel

from banger.api.client import Client, ref_path
from banger.cli.context import CliContext
from banger.cli.render import print_error
from banger.core.errors import BangerError
from banger.core.validate import validate_name

M = TypeVar("M", bound=BaseModel)
ASKS_AT_ONCE = 8


def ask_each(ctx: CliContext, refs: Sequence[str], what: str, model: type[M],
             timeout: float = 60.0) -> list[M | BangerError]:
    """``GET /vms/REF/WHAT`` for every ref concurrently: each answer, or its error."""
    for ref in refs:
        validate_name(ref, "VM")
    ctx.client().ping()  # starts the daemon if needed, once, before the concurrent asks

    def ask(ref: str) -> M | BangerError:
        try:
            with Client(ctx.settings.paths.socket, timeout=timeout) as client:
                return client.get_model(ref_path("VM", ref, what), model)
        except BangerError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(ASKS_AT_ONCE, len(refs))) as pool:
        return list(pool.map(ask, refs))


def answered(answers: Sequence[M | BangerError]) -> list[M]:
    return [a for a in answers if not isinstance(a, BangerError)]


def exit_on_errors(answers: Sequence[object]) -> None:
    """Print every error among ``answers``; exit with the first one's code if any."""
    failed = [a for a in answers if isinstance(a, BangerError)]
    for exc in failed:
        print_error(exc)
    if failed:
        sys.exit(failed[0].exit_code)
