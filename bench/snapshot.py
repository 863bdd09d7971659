"""Section 7, warm snapshots (issue 12): ``image warm``, then starts from the snapshot vs cold.

The snapshot is made for the defaults' shape (the bench image, the config's
vCPUs and memory), so plain ``vm run`` / ``vm create`` restore from it;
``--cold`` gives the cold figure in the same run. Each create's operation says
whether it restored (a ``restore`` stage instead of ``boot``): a start meant to
restore that booted cold stops the section, since its figure would be wrong.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench.env import BenchEnv, Progress
from bench.env import wall as wall_s
from bench.measure import (
    concurrent_runs,
    create_figures,
    launch_stage,
    load,
    op_for,
    run_breakdown,
    stage_seconds,
)
from bench.stats import summary


def _disk_bytes(env: BenchEnv, snap_id: str) -> dict[str, int]:
    """Bytes each file of the snapshot occupies on disk (the root is a sparse qcow2)."""
    d = env.state_dir / "snapshots" / snap_id
    return {p.name: p.stat().st_blocks * 512 for p in sorted(d.iterdir()) if p.is_file()}


def warm(env: BenchEnv, progress: Progress) -> dict[str, Any]:
    """``banger image warm`` for the default shape: wall time, state size, save time."""
    timed = env.cli_ok("image", "warm", "--json")
    info = json.loads(timed.result.stdout)
    on_disk = _disk_bytes(env, info["id"])
    progress(f"image warm {timed.seconds:.2f} s: snapshot {info['id']}, "
             f"state {info['state_bytes'] / 1e6:.0f} MB, save {info['save_seconds']} s")
    return {"id": info["id"], "wall_s": round(timed.seconds, 3), "vcpu": info["vcpu"],
            "memory_mib": info["memory_mib"], "state_bytes": info["state_bytes"],
            "save_s": info["save_seconds"], "disk_bytes": on_disk}


def _create_op(env: BenchEnv, name: str, restored: bool) -> dict[str, float]:
    """The figures of ``name``'s create; raise when it did not start the way it was meant to."""
    op = op_for(env.operations(), "vm.create", name)
    if (launch_stage(op) == "restore") != restored:
        meant = "from the snapshot" if restored else "cold"
        raise RuntimeError(f"{name} was meant to start {meant} but ran a {launch_stage(op)} "
                           "stage: "
                           + "; ".join(s.detail for s in op.stages if s.detail))
    return create_figures(op)


def runs(env: BenchEnv, n: int, progress: Progress) -> dict[str, Any]:
    """``vm run --rm -- true`` from the snapshot and with ``--cold``, alternated."""
    wall: dict[str, list[float]] = {"snapshot": [], "cold": []}
    rows: dict[str, list[dict[str, float]]] = {"snapshot": [], "cold": []}
    for i in range(n):
        for kind, extra in (("snapshot", ()), ("cold", ("--cold",))):
            name = f"bench-{kind[:4]}{i}"
            timed = env.cli_ok("vm", "run", "--rm", *extra, "--name", name, "--", "true")
            wall[kind].append(timed.seconds)
            rows[kind].append(_create_op(env, name, restored=kind == "snapshot"))
        progress(f"vm run --rm true: snapshot {wall['snapshot'][-1]:.2f} s, "
                 f"cold {wall['cold'][-1]:.2f} s")
    out: dict[str, Any] = {"order": "alternated, snapshot first"}
    for kind in wall:
        keys = ("create_s", "launch_to_ssh_s", "stage_ssh_s")
        out[kind] = {"wall_s": summary(wall[kind]),
                     **{k: summary([r[k] for r in rows[kind]]) for k in keys}}
    out["snapshot"]["stage_restore_s"] = summary([r["stage_restore_s"] for r in rows["snapshot"]])
    out["speedup_p50"] = round(out["cold"]["wall_s"]["p50"] / out["snapshot"]["wall_s"]["p50"], 2)
    out["load"] = load()
    return out


def creates(env: BenchEnv, n: int, progress: Progress) -> dict[str, Any]:
    """``banger vm create`` (to ready: SSH accepts our key) from the snapshot, then deleted."""
    wall, rows = [], []
    for i in range(n):
        name = f"bench-sncr{i}"
        timed = env.cli_ok("vm", "create", "--name", name)
        wall.append(timed.seconds)
        rows.append(_create_op(env, name, restored=True))
        env.delete_vm(name)
        progress(f"vm create from the snapshot: {timed.seconds:.2f} s "
                 f"(operation {rows[-1]['create_s']:.2f} s)")
    keys = ("create_s", "stage_restore_s", "stage_ssh_s")
    return {"wall_s": summary(wall), **{k: summary([r[k] for r in rows]) for k in keys},
            "load": load()}


def concurrent(env: BenchEnv, n: int, progress: Progress) -> dict[str, Any]:
    """``n`` concurrent ``vm run --rm -- true``, all from the one snapshot."""
    prefix = "bench-sncc"
    started = time.time()
    doc = concurrent_runs(env, n, progress, prefix=prefix)
    ended = time.time()
    if doc["succeeded"] != n:
        return {**doc, "restored": None}
    names = [f"{prefix}{i}" for i in range(n)]
    ops = env.operations()
    doc["restored"] = sum(
        1 for name in names if launch_stage(op_for(ops, "vm.create", name)) == "restore")
    rows = [run_breakdown(env, name, started, ended) for name in names]
    doc["where_s"] = {key: summary([row[key] for row in rows]) for key in
                      ("create_s", "create_stage_restore_s", "create_stage_ssh_s", "exec_s",
                       "delete_s") if all(key in row for row in rows)}
    return doc


def _pool_filled(env: BenchEnv, times: int, timeout: float = 120.0) -> None:
    """Wait until the daemon's warm pool has been filled ``times`` times (its log says so)."""
    log = env.state_dir / "bangerd.log"
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("warm pool member ready") < times:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the warm pool was not filled {times} times in {timeout:.0f} s")
        time.sleep(0.1)


def _claimed(env: BenchEnv, name: str) -> dict[str, float]:
    """The figures of ``name``'s create; raise unless it claimed the warm pool's member."""
    op = op_for(env.operations(), "vm.create", name)
    if not any(s.detail == "claimed from the warm pool" for s in op.stages):
        raise RuntimeError(f"{name} did not claim the warm pool's VM: "
                           + "; ".join(s.detail or "" for s in op.stages))
    return {"create_s": wall_s(op.finished_at) - wall_s(op.created_at),
            **{f"stage_{s}_s": stage_seconds(op, s) for s in ("restore", "ssh")}}


def pool(env: BenchEnv, n: int, progress: Progress) -> dict[str, Any]:
    """``warm_pool = 1``: ``vm create`` and ``vm run --rm -- true`` claiming the pool's
    member, alternated, each after the refill.

    The ``restore`` stage of a claim is its restore work (the guest runs, takes its
    name and the clock); ``ssh`` is the readiness after it (the connection held since
    the fill, checked).
    """
    log = env.state_dir / "bangerd.log"
    filled = log.read_text(errors="replace").count("warm pool member ready")
    env.restart_daemon("warm_pool = 1\n")
    wall: dict[str, list[float]] = {"create": [], "run": []}
    rows: dict[str, list[dict[str, float]]] = {"create": [], "run": []}
    try:
        for i in range(n):
            for kind, argv in (("create", ("vm", "create")), ("run", ("vm", "run", "--rm"))):
                filled += 1
                _pool_filled(env, filled)
                name = f"bench-pool-{kind}{i}"
                timed = env.cli_ok(*argv, "--name", name, *(("--", "true") if kind == "run"
                                                            else ()))
                wall[kind].append(timed.seconds)
                rows[kind].append(_claimed(env, name))
                if kind == "create":
                    env.delete_vm(name)
                progress(f"vm {kind} claiming the warm pool: {timed.seconds:.2f} s "
                         f"(claim {rows[kind][-1]['stage_restore_s']:.3f} s)")
    finally:
        env.restart_daemon("")
    keys = ("create_s", "stage_restore_s", "stage_ssh_s")
    out: dict[str, Any] = {"load": load()}
    for kind in ("create", "run"):
        out[kind] = {"wall_s": summary(wall[kind]),
                     **{k: summary([r[k] for r in rows[kind]]) for k in keys}}
    return out


def snapshots(env: BenchEnv, n: int, concurrency: int, progress: Progress,
              doc: dict[str, Any]) -> None:
    """Fill ``doc`` (kept in the document when a step fails)."""
    started = time.perf_counter()
    doc["warm"] = warm(env, progress)
    progress(f"vm run --rm true from the snapshot vs --cold: {n} each, alternated")
    doc["vm_run"] = runs(env, n, progress)
    progress(f"vm create from the snapshot: {n} times")
    doc["create"] = creates(env, n, progress)
    progress(f"{concurrency} concurrent vm run --rm true from the snapshot")
    doc["concurrent"] = concurrent(env, concurrency, progress)
    progress(f"vm create and vm run claiming from warm_pool = 1: {n} times each")
    doc["pool"] = pool(env, n, progress)
    doc["section_s"] = round(time.perf_counter() - started, 1)
