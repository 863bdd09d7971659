"""The snapshot benchmark's verdicts and table from a recorded section (bench/snapshot.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.report import table, verdicts
from bench.stats import summary


def _doc(run_p50: float, create_p50: float, restored: int | None,
         claim_p50: float = 0.15, pool_p50: tuple[float, float] = (0.5, 0.7)) -> dict[str, Any]:
    s = summary
    snap = {
        "warm": {"id": "ab", "wall_s": 3.3, "vcpu": 2, "memory_mib": 1024,
                 "state_bytes": 91_000_000, "save_s": 3.1, "disk_bytes": {}},
        "vm_run": {"snapshot": {"wall_s": s([run_p50]), "create_s": s([1.3]),
                                "launch_to_ssh_s": s([1.2]), "stage_ssh_s": s([0.7]),
                                "stage_restore_s": s([0.5])},
                   "cold": {"wall_s": s([4.4]), "create_s": s([4.0]),
                            "launch_to_ssh_s": s([3.9]), "stage_ssh_s": s([3.6])},
                   "speedup_p50": 2.5},
        "create": {"wall_s": s([create_p50]), "create_s": s([1.8]),
                   "stage_restore_s": s([0.7]), "stage_ssh_s": s([1.0])},
        "concurrent": {"n": 4, "succeeded": 4, "failures": [], "wall_s": 6.3,
                       "each_s": s([5.8, 6.3]), "vmm_peak_rss_mib": s([229.0] * 4, digits=1),
                       "vmm_peak_pss_mib": s([220.0] * 4, digits=1), "restored": restored,
                       "most_vmms_at_once": 4, "mem_available_drop_mib": 1000.0,
                       "mem_available_drop_per_vm_mib": 250.0},
        "pool": {kind: {"wall_s": s([wall]), "create_s": s([0.3]),
                        "stage_restore_s": s([claim_p50]), "stage_ssh_s": s([0.02])}
                 for kind, wall in zip(("create", "run"), pool_p50, strict=True)},
    }
    return {"date": "d", "settings": {"runs": 1}, "load_start": [0], "snapshot": snap,
            "machine": {"nproc": 2, "cpu": "c", "accel": "tcg", "kvm_status": "k"}}


def test_snapshot_verdicts_judge_the_targets_and_that_every_concurrent_run_restored() -> None:
    doc = _doc(run_p50=0.9, create_p50=0.8, restored=4)
    keys = ("snap_run_p50", "snap_create_p50", "snap_concurrent_all_succeed", "pool_claim_p50",
            "pool_create_p50", "pool_run_p50")
    v = verdicts(doc)
    assert [v[k]["verdict"] for k in keys] == ["PASS"] * 6
    slow = verdicts(_doc(run_p50=1.01, create_p50=0.81, restored=3, claim_p50=0.21,
                         pool_p50=(0.81, 1.01)))
    assert [slow[k]["verdict"] for k in keys] == ["MISS"] * 6


def test_the_table_shows_each_snapshot_figure(tmp_path: Path) -> None:
    doc = _doc(run_p50=1.78, create_p50=2.12, restored=4)
    doc["verdicts"] = verdicts(doc)
    text = table(doc)
    for fragment in ("7 warm snapshots", "91 MB", "1.78 s", "<= 1.0 s", "2.12 s", "<= 0.8 s",
                     "2.5x", "229 / 220 MiB", "PASS", "MemAvailable drop per VM (4 up at once, "
                     "1000 MiB in all)", "250 MiB", "warm_pool = 1: claim", "<= 0.2 s",
                     "warm_pool = 1: vm create claiming it", "0.50 s",
                     "warm_pool = 1: vm run --rm true claiming it", "0.70 s"):
        assert fragment in text, text
    (tmp_path / "doc.json").write_text(json.dumps(doc))  # the document stays JSON-serialisable
