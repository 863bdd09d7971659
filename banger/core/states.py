"""The state machines' states, shared by the store, the daemon and the wire models.

A VM's state changes only along ``VM_TRANSITIONS`` (the one table), and only
through the store's compare-and-set (``VMRepository.transition``), which
records when and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from banger.core.errors import Conflict


class VMState(StrEnum):
    CREATING = "creating"  # a create in progress: reconcile removes it after a daemon crash
    CREATED = "created"  # made without booting (--no-start)
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"  # the last start failed; nothing of it runs (state_reason says why)

    @property
    def active(self) -> bool:
        """A VMM may run and the VM may hold a TAP: teardown is owed."""
        return self in (VMState.STARTING, VMState.RUNNING, VMState.STOPPING)


# Every allowed change of state; anything else is a Conflict.
VM_TRANSITIONS: Mapping[VMState, frozenset[VMState]] = {
    # --no-start ends in created; a create that boots ends running. A failed create
    # unwinds and deletes the row: no state for it.
    VMState.CREATING: frozenset({VMState.CREATED, VMState.RUNNING}),
    VMState.CREATED: frozenset({VMState.STARTING}),
    # Booted; the boot failed; a stale row (its VMM is gone) is torn down.
    VMState.STARTING: frozenset({VMState.RUNNING, VMState.ERROR, VMState.STOPPED}),
    # Stop asked; the VMM exited (on its own, killed, gone at daemon start).
    VMState.RUNNING: frozenset({VMState.STOPPING, VMState.STOPPED}),
    # Stopped; a daemon that died mid-stop finds the VMM still running and adopts it.
    VMState.STOPPING: frozenset({VMState.STOPPED, VMState.RUNNING}),
    VMState.STOPPED: frozenset({VMState.STARTING}),
    VMState.ERROR: frozenset({VMState.STARTING}),
}


def check_vm_transition(name: str, current: VMState, to: VMState) -> None:
    """Raise Conflict unless the table allows ``current -> to`` for VM ``name``."""
    if to not in VM_TRANSITIONS[current]:
        allowed = ", ".join(sorted(VM_TRANSITIONS[current])) or "nothing"
        raise Conflict(
            f"VM '{name}' cannot go from {current} to {to} (from {current}: {allowed})",
            hint=f"check its state: banger vm show {name}",
        )


class OperationState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED)


class NetMode(StrEnum):
    TAP = "tap"
    USER = "user"
