"""Structured JSON logs to the state dir and stderr, with the request's op_id bound."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import structlog
from structlog.typing import Processor

from banger.host.files import open_nofollow

_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
]


def configure_logging(level: str, log_file: Path, *, to_stderr: bool = True) -> None:
    """Route structlog and stdlib logging (uvicorn, host.run) through one JSON formatter.

    ``log_file``'s directory must exist (the daemon makes its state dir private first).
    """
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(),
        ],
    )
    log = os.fdopen(open_nofollow(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a")
    handlers: list[logging.Handler] = [logging.StreamHandler(log)]  # the file, never a link
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
