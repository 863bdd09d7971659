"""The five measurements; each returns plain data for the JSON document."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from banger.api.models import Operation, Stage
from bench.env import BenchEnv, Progress, banger_argv, wall
from bench.floor import FloorSetup, boot_floor
from bench.stats import summary

CREATE_STAGES = ("reserve", "disks", "network", "boot", "ssh")
CONCURRENT_TIMEOUT_S = 600.0


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _stage(op: Operation, name: str) -> Stage:
    for stage in op.stages:
        if stage.name == name:
            return stage
    raise KeyError(f"{op.kind} {op.target} has no stage {name!r}: {[s.name for s in op.stages]}")


def stage_seconds(op: Operation, name: str) -> float:
    stage = _stage(op, name)
    return wall(stage.finished_at) - wall(stage.started_at)


def launch_stage(op: Operation) -> str:
    """``restore`` when the create started from a warm snapshot, else ``boot``."""
    return "restore" if any(s.name == "restore" for s in op.stages) else "boot"


def create_figures(op: Operation, sent: float | None = None) -> dict[str, float]:
    """From a finished vm.create: control-plane overhead, boot (or restore) to SSH, each stage.

    A restored create's ``boot`` figures are its ``restore`` stage's (``stage_restore_s``).
    """
    launch = launch_stage(op)
    boot_end = wall(_stage(op, launch).finished_at)
    figures = {
        "overhead_s": boot_end - wall(op.created_at),
        "launch_to_ssh_s": wall(_stage(op, "ssh").finished_at)
        - wall(_stage(op, launch).started_at),
        "create_s": wall(op.finished_at) - wall(op.created_at),
    }
    if sent is not None:
        figures["overhead_client_s"] = boot_end - sent
    for name in CREATE_STAGES:
        name = launch if name == "boot" else name
        figures[f"stage_{name}_s"] = stage_seconds(op, name)
    return figures


def _collect(rows: list[dict[str, float]]) -> dict[str, Any]:
    keys = rows[0].keys() if rows else ()
    return {key: summary([row[key] for row in rows]) for key in keys}


def control_plane(env: BenchEnv, runs: int, keep: int, progress: Progress) -> dict[str, Any]:
    """``runs`` creates through the API; all but the last ``keep`` VMs deleted at once."""
    rows: list[dict[str, float]] = []
    kept: list[str] = []
    info: dict[str, Any] = {}
    for i in range(runs):
        name = f"bench-cp{i}"
        sent, op = env.create_vm(name)
        rows.append(create_figures(op, sent))
        info = op.result.model_dump(mode="json") if op.result is not None else {}
        progress(
            f"create {name}: overhead {rows[-1]['overhead_s'] * 1000:.0f} ms, "
            f"ssh stage {rows[-1]['stage_ssh_s']:.2f} s"
        )
        if i >= runs - keep:
            kept.append(name)
        else:
            env.delete_vm(name)
    vm = {k: info.get(k) for k in ("vcpu", "memory_mib", "disk_bytes", "net_mode", "backend")}
    return {"vm": vm, "kept": kept, "figures": _collect(rows), "load": load()}


def cli_latency(env: BenchEnv, calls: int, progress: Progress) -> dict[str, Any]:
    """``vm list`` (and ``-q``), ``--version``, ``python -c pass``, ``GET /v1/vms``: ``calls`` each.

    Interleaved, so that the host's load hits every figure alike.
    """
    present = len(env.vm_names())
    listing, quiet, version, python, api = [], [], [], [], []
    for _ in range(calls):
        listing.append(env.cli_ok("vm", "list").seconds)
        quiet.append(env.cli_ok("vm", "list", "-q").seconds)
        version.append(env.cli_ok("--version").seconds)
        python.append(env.bare_python())
        t0 = time.perf_counter()
        env.client.request("GET", "/vms")
        api.append(time.perf_counter() - t0)
    doc: dict[str, Any] = {
        "vms_present": present,
        "vm_list_s": summary(listing),
        "vm_list_q_s": summary(quiet),
        "version_s": summary(version),
        "python_s": summary(python),
        "api_list_s": summary(api, digits=4),
        "load": load(),
    }
    doc["ratio_q_to_python"] = round(doc["vm_list_q_s"]["p50"] / doc["python_s"]["p50"], 2)
    progress(f"vm list p50 {doc['vm_list_s']['p50'] * 1000:.0f} ms ({present} VMs), "
             f"vm list -q / python -c pass {doc['ratio_q_to_python']}x")
    return doc


def op_for(ops: list[Operation], kind: str, target: str) -> Operation:
    found = [op for op in ops if op.kind == kind and op.target == target]
    if not found:
        raise KeyError(f"no {kind} operation for {target}")
    return found[-1]


def run_breakdown(env: BenchEnv, name: str, started: float, ended: float) -> dict[str, float]:
    """Where one ``vm run --rm`` went, from its create and delete operations."""
    ops = env.operations()
    create, delete = op_for(ops, "vm.create", name), op_for(ops, "vm.delete", name)
    return {
        "cli_to_create_s": wall(create.created_at) - started,
        "create_s": wall(create.finished_at) - wall(create.created_at),
        "exec_s": wall(delete.created_at) - wall(create.finished_at),
        "delete_s": wall(delete.finished_at) - wall(delete.created_at),
        "delete_to_exit_s": ended - wall(delete.finished_at),
        **{f"create_{k}": v for k, v in create_figures(create).items()},
    }


def vm_run_vs_floor(
    env: BenchEnv, setup: FloorSetup, runs: int, progress: Progress
) -> dict[str, Any]:
    """``vm run --rm -- true`` and a floor boot, alternated so host load hits both alike."""
    run_s, rows, floors = [], [], []
    for i in range(runs):
        name = f"bench-run{i}"
        started = time.time()
        timed = env.cli_ok("vm", "run", "--rm", "--name", name, "--", "true")
        run_s.append(timed.seconds)
        rows.append(run_breakdown(env, name, started, time.time()))
        with tempfile.TemporaryDirectory(prefix="floor-", dir=env.root) as tmp:
            floors.append(boot_floor(setup, Path(tmp)))
        progress(
            f"vm run {timed.seconds:.2f} s, floor {floors[-1].total_s:.2f} s "
            f"(ssh-ready {floors[-1].ssh_ready_s:.2f} s)"
        )
    return {
        "vm_run_s": summary(run_s),
        "breakdown": _collect(rows),
        "floor_s": summary([f.total_s for f in floors]),
        "floor_ssh_ready_s": summary([f.ssh_ready_s for f in floors]),
        "floor_prep_s": summary([f.prep_s for f in floors]),
        "floor_argv_note": "banger's qemu_argv() minus -daemonize, TAP on the bench bridge",
        "load": load(),
    }


def vmm_memory(env: BenchEnv) -> dict[int, tuple[int, int]]:
    """(RSS, PSS) in KiB of every VMM of the bench's daemon, by pid (from /proc).

    A VMM is the pid in a VM's ``vmm.pid`` (QEMU writes it once initialised): not
    ``-daemonize``'s short-lived intermediate processes. VMs come and go meanwhile.
    """
    out = {}
    try:
        pidfiles = [d / "vmm.pid" for d in (env.runtime_dir / "vms").iterdir()]
    except OSError:
        pidfiles = []
    for pidfile in pidfiles:
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            pid = int(pidfile.read_text())
            if os.fsencode(pidfile) not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue  # the pid went and was reused
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            kib = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:]}
            out[pid] = (kib["Rss"], kib["Pss"])
    return out


def mem_available_kib() -> int:
    """The host's ``MemAvailable`` (KiB): what it could still give without swapping."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def _peak_memory(env: BenchEnv, peaks: dict[int, tuple[int, int]]) -> int:
    """Fold the VMMs' memory into ``peaks``; return how many VMMs run now."""
    now = vmm_memory(env)
    for pid, (rss, pss) in now.items():
        old = peaks.get(pid, (0, 0))
        peaks[pid] = (max(old[0], rss), max(old[1], pss))
    return len(now)


def _memory_doc(peaks: dict[int, tuple[int, int]], most: int, available: list[int]
                ) -> dict[str, Any]:
    """Per VMM peaks, and the host's MemAvailable drop (start to lowest) per VM up at once."""
    drop_mib = max(0, available[0] - min(available)) / 1024
    return {
        "vmm_peak_rss_mib": summary([rss / 1024 for rss, _ in peaks.values()], digits=1),
        "vmm_peak_pss_mib": summary([pss / 1024 for _, pss in peaks.values()], digits=1),
        "most_vmms_at_once": most,
        "mem_available_drop_mib": round(drop_mib, 1),
        "mem_available_drop_per_vm_mib": round(drop_mib / most, 1) if most else None,
    }


def concurrent_runs(env: BenchEnv, n: int, progress: Progress,
                    prefix: str = "bench-cc") -> dict[str, Any]:
    """``n`` ``vm run --rm -- true`` started together; all must succeed.

    Every VMM's resident (RSS) and proportional (PSS) memory is sampled from
    /proc while they run; each VMM's peak is reported, and how far the host's
    MemAvailable fell below its value at the start, per VM up at the time.
    """
    logs = [env.root / f"concurrent-{i}.log" for i in range(n)]
    available, most = [mem_available_kib()], 0
    started = time.perf_counter()
    procs = [
        env.cli_popen("vm", "run", "--rm", "--name", f"{prefix}{i}", "--", "true", output=log)
        for i, log in enumerate(logs)
    ]
    done: dict[int, float] = {}
    peaks: dict[int, tuple[int, int]] = {}
    try:
        while len(done) < n:
            for i, proc in enumerate(procs):
                if i not in done and proc.poll() is not None:
                    done[i] = time.perf_counter() - started
            if time.perf_counter() - started > CONCURRENT_TIMEOUT_S:
                raise TimeoutError(f"concurrent vm runs still going after {CONCURRENT_TIMEOUT_S}s")
            most = max(most, _peak_memory(env, peaks))
            available.append(mem_available_kib())
            time.sleep(0.02)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    total = time.perf_counter() - started
    failures = [
        f"{prefix}{i}: exit {proc.returncode}: {logs[i].read_text(errors='replace')[-500:]}"
        for i, proc in enumerate(procs)
        if proc.returncode != 0
    ]
    progress(f"{n} concurrent vm run: {total:.2f} s, {n - len(failures)}/{n} succeeded")
    return {
        "n": n,
        "succeeded": n - len(failures),
        "failures": failures,
        "wall_s": round(total, 3),
        "each_s": summary([done[i] for i in range(n)]),
        **_memory_doc(peaks, most, available),
        "load": load(),
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from banger.host.probes import kvm_status
    from banger.vmm.base import choose_accel

    def first(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            return out.splitlines()[0].strip() if out else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(int(mem) / 2**20, 1),
        "host_kernel": os.uname().release,
        "qemu": first(["qemu-system-x86_64", "--version"]),
        "kvm_status": str(kvm_status()),
        "accel": choose_accel(),
        "banger": first([*banger_argv(), "--version"]),
    }
