"""What ``vm workspace prepare`` left in a VM, kept in its row (``vms.workspace``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from banger.core.workspace import WorkspaceMode


class WorkspaceState(BaseModel):
    """What ``vm workspace prepare`` put in the guest (stored in the VM's row)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    host_path: Path
    guest_path: str
    mode: WorkspaceMode
    head_commit: str | None = None  # the guest's HEAD at prepare: the host's, or --from's
    host_head: str | None = None  # the host repository's HEAD at prepare
    branch: str | None = None  # the guest's branch, if any
    requested_branch: str | None = None  # --branch as given (vm exec --auto-prepare replays it)
    from_ref: str | None = None  # --from as given
    prepared_tree: str  # what export compares against
    include_untracked: bool = False
    files: int = Field(ge=0)
    bytes: int = Field(ge=0)
    prepared_at: datetime
