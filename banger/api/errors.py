"""Typed errors across the socket: class -> ``{code, message, op_id, hint}`` -> class."""

from __future__ import annotations

from typing import Any

from banger.api.models import ErrorBody
from banger.core.errors import ERROR_CLASSES, BangerError


def error_body(exc: BangerError, op_id: str | None) -> ErrorBody:
    return ErrorBody(code=exc.code, message=exc.message, op_id=op_id, hint=exc.hint)


def error_from_body(body: ErrorBody) -> BangerError:
    cls = ERROR_CLASSES.get(body.code, BangerError)
    return cls(body.message, hint=body.hint, op_id=body.op_id)


def error_from_response(status: int, payload: Any) -> BangerError:
    """Rebuild the daemon's error; anything unexpected becomes a plain BangerError."""
    try:
        body = ErrorBody.model_validate(payload)
    except ValueError:
        return BangerError(f"daemon answered HTTP {status} with an unexpected body")
    return error_from_body(body)
