"""The SQLite state database: schema, migrations and typed repositories (see docs/store.md)."""

from banger.store.db import Store, probe
from banger.store.records import (
    ImageRecord,
    KernelRecord,
    NetMode,
    OperationRecord,
    OperationState,
    VMRecord,
    VMState,
)

__all__ = [
    "ImageRecord",
    "KernelRecord",
    "NetMode",
    "OperationRecord",
    "OperationState",
    "Store",
    "VMRecord",
    "VMState",
    "probe",
]
