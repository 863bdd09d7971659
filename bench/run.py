"""Benchmark banger's VM lifecycle against a bare QEMU floor; print JSON and a table.

    .venv/bin/python -m bench.run [--runs N] [--concurrent N] [--list-calls N] [--json-out FILE]

Sets up one isolated banger (own dirs, daemon, bridge bgbench0), measures,
and removes everything again, also on failure or Ctrl-C. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import measure, snapshot, workspace
from bench.env import BenchEnv
from bench.floor import FloorSetup
from bench.report import table, verdicts
from bench.stats import summary


def progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="creates, vm runs and floor boots (5)")
    p.add_argument("--concurrent", type=int, default=4, help="concurrent vm runs (4)")
    p.add_argument("--snap-concurrent", type=int, default=8,
                   help="concurrent vm runs from one warm snapshot, section 7 (8)")
    p.add_argument("--list-calls", type=int, default=20, help="vm list / --version calls (20)")
    p.add_argument("--json-out", type=Path, help="also write the JSON document here")
    p.add_argument("--only", choices=["cli", "workspace", "snapshot"],
                   help="cli: only section 5, against a daemon with no VMs (no kernel, no image); "
                        "workspace: only section 6; snapshot: only section 7")
    args = p.parse_args(argv)
    if args.runs < 2:
        p.error("--runs must be at least 2 (two VMs stay up for the vm list figure)")
    return args


def _artifacts() -> tuple[Path, Path]:
    """The cached test kernel .deb and test image (built once, shared with the tests)."""
    from tests.support.image import ensure_test_image
    from tests.support.kernel import ensure_kernel_deb

    return ensure_kernel_deb(), ensure_test_image() / "rootfs.ext4"


def floor_setup(env: BenchEnv, vm: dict[str, Any]) -> FloorSetup:
    image = env.image()
    return FloorSetup(
        kernel_dir=env.kernel_dir(),
        image_dir=Path(image["path"]),
        init=image["manifest"].get("init") or None,
        bridge=env.bridge,
        bridge_cidr=env.bridge_cidr,
        vcpu=int(vm["vcpu"]),
        memory_mib=int(vm["memory_mib"]),
        disk_bytes=int(vm["disk_bytes"]),
    )


def boot_section(doc: dict[str, Any], cp_rows: list[float], ssh_rows: list[float]) -> None:
    doc["boot"] = {
        "launch_to_ssh_s": summary(cp_rows),
        "ssh_stage_s": summary(ssh_rows),
        "floor_ssh_ready_s": doc["vm_run"]["floor_ssh_ready_s"],
        "note": "banger figures pool the API creates and the vm run creates",
    }


def measure_cli_only(env: BenchEnv, args: argparse.Namespace, doc: dict[str, Any]) -> None:
    doc["setup_s"] = {"daemon_start": env.cli_ok("daemon", "start").seconds}
    progress(f"5/7 CLI latency: {args.list_calls} calls each, no VMs")
    doc["cli"] = measure.cli_latency(env, args.list_calls, progress)


def measure_all(env: BenchEnv, args: argparse.Namespace, doc: dict[str, Any]) -> None:
    kernel_deb, rootfs = _artifacts()
    doc["setup_s"] = env.setup(kernel_deb, rootfs, progress)
    progress(f"1/7 control plane: {args.runs} creates")
    doc["control_plane"] = measure.control_plane(env, args.runs, keep=2, progress=progress)
    progress(f"5/7 CLI latency: {args.list_calls} calls each, with 2 VMs up")
    doc["cli"] = measure.cli_latency(env, args.list_calls, progress)
    for name in doc["control_plane"]["kept"]:
        env.delete_vm(name)
    progress(f"2/7 vm run --rm -- true vs floor: {args.runs} each, alternated")
    setup = floor_setup(env, doc["control_plane"]["vm"])
    doc["vm_run"] = measure.vm_run_vs_floor(env, setup, args.runs, progress)
    cp, run = doc["control_plane"]["figures"], doc["vm_run"]["breakdown"]
    boot_section(
        doc,
        cp["launch_to_ssh_s"]["samples"] + run["create_launch_to_ssh_s"]["samples"],
        cp["stage_ssh_s"]["samples"] + run["create_stage_ssh_s"]["samples"],
    )
    progress(f"4/7 {args.concurrent} concurrent vm run --rm -- true")
    doc["concurrent"] = measure.concurrent_runs(env, args.concurrent, progress)
    measure_workspace(env, args, doc)
    measure_snapshot(env, args, doc)


def measure_workspace(env: BenchEnv, args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if "setup_s" not in doc:
        doc["setup_s"] = env.setup(*_artifacts(), progress)
    progress(f"6/7 workspaces: {args.runs} runs of each figure")
    doc["workspace"] = {}
    workspace.workspaces(env, args.runs, progress, doc["workspace"])


def measure_snapshot(env: BenchEnv, args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if "setup_s" not in doc:
        doc["setup_s"] = env.setup(*_artifacts(), progress)
    progress(f"7/7 warm snapshots: image warm, then {args.runs} runs of each figure")
    doc["snapshot"] = {}
    snapshot.snapshots(env, args.runs, args.snap_concurrent, progress, doc["snapshot"])


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    doc: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": measure.machine(),
        "settings": {
            "runs": args.runs,
            "concurrent": args.concurrent,
            "snap_concurrent": args.snap_concurrent,
            "list_calls": args.list_calls,
            "only": args.only,
        },
        "load_start": measure.load(),
    }
    env = BenchEnv.make()
    failed: BaseException | None = None
    try:
        sections = {"cli": measure_cli_only, "workspace": measure_workspace,
                    "snapshot": measure_snapshot}
        sections.get(args.only or "", measure_all)(env, args, doc)
    except (Exception, KeyboardInterrupt) as exc:
        failed = exc
        doc["error"] = f"{type(exc).__name__}: {exc}"
        progress(f"stopped: {doc['error']}")
    finally:
        progress("cleaning up")
        env.teardown(progress)
    doc["load_end"] = measure.load()
    doc["verdicts"] = verdicts(doc)
    text = json.dumps(doc, indent=2)
    print(text)
    print(table(doc))
    if args.json_out:
        args.json_out.write_text(text + "\n")
    if failed is not None:
        return 130 if isinstance(failed, KeyboardInterrupt) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
