"""The typed error hierarchy shared by every layer.

Each class carries a stable wire ``code`` and an HTTP status, so that an error
raised deep in the daemon reaches the CLI as the same class (see ``api.errors``).
"""

from __future__ import annotations


class BangerError(Exception):
    """Base of every error banger reports to a user."""

    code = "error"
    http_status = 500
    exit_code = 1

    def __init__(
        self, message: str, *, hint: str | None = None, op_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.op_id = op_id

    def __str__(self) -> str:
        return self.message


class InvalidInput(BangerError):
    """The caller asked for something malformed; nothing was changed."""

    code = "invalid_input"
    http_status = 400
    exit_code = 2


class NotFound(BangerError):
    code = "not_found"
    http_status = 404
    exit_code = 3


class Conflict(BangerError):
    """The request clashes with the current state (name taken, VM running...)."""

    code = "conflict"
    http_status = 409
    exit_code = 4


class Forbidden(BangerError):
    code = "forbidden"
    http_status = 403
    exit_code = 5


class Unavailable(BangerError):
    """A needed service or capability is missing (daemon down, no KVM, no tool)."""

    code = "unavailable"
    http_status = 503
    exit_code = 6


class HostToolError(BangerError):
    """A host program failed or is missing."""

    code = "host_tool_error"
    http_status = 502
    exit_code = 7


class SnapshotUnusable(HostToolError):
    """A clone could not be restored from a warm snapshot this time (a timeout, its VMM
    died, the host ran short of something): the VM boots cold instead; the snapshot stays."""

    code = "snapshot_unusable"


class SnapshotDamaged(SnapshotUnusable):
    """A warm snapshot's files are bad (missing, truncated, a symbolic link, a stream the
    VMM refused: corrupt or another VMM version): the VM boots cold and the snapshot is
    dropped."""

    code = "snapshot_damaged"


class GuestError(BangerError):
    """The guest misbehaved: did not boot, refused SSH, command failed to start."""

    code = "guest_error"
    http_status = 502
    exit_code = 8


class StoreError(BangerError):
    """The state database is unreadable, corrupt or from a newer banger."""

    code = "store_error"
    http_status = 500
    exit_code = 9


class InternalError(BangerError):
    """An exception no layer turned into a BangerError: a bug, reported with its op_id."""

    code = "internal"
    http_status = 500
    exit_code = 10


class DaemonNotRunning(Unavailable):
    """No daemon answers on the socket."""

    code = "daemon_not_running"


class Cancelled(BangerError):
    code = "cancelled"
    http_status = 409
    exit_code = 130


ERROR_CLASSES: dict[str, type[BangerError]] = {
    cls.code: cls
    for cls in (
        BangerError,
        InvalidInput,
        NotFound,
        Conflict,
        Forbidden,
        Unavailable,
        DaemonNotRunning,
        HostToolError,
        GuestError,
        StoreError,
        InternalError,
        Cancelled,
    )
}
