"""Verdicts against DESIGN.md section 10's targets, and the ASCII table."""

from __future__ import annotations

from typing import Any

CONTROL_PLANE_TARGET_S = 0.150
RUN_RATIO_TARGET = 1.10
BOOT_TARGET_S = 6.0
LIST_TARGET_S = 0.250
CLI_RATIO_TARGET = 10.0  # vm list -q p50 / python -c pass p50, same run (issue 8)
WS_DELTA_TARGET_S = 0.5  # vm run <this checkout> over a bare vm run, p50s (issue 9)
WS_PREPARE_TARGET_S = 3.0  # prepare of the generated 10,000-file / 100 MB repo, p50
WS_EXPORT_TARGET_S = 1.0  # export of a change to 100 of its files, p50
SNAP_RUN_TARGET_S = 1.0  # vm run --rm -- true from a warm snapshot, p50 (issue 12)
SNAP_CREATE_TARGET_S = 0.8  # vm create to ready from a warm snapshot, p50
POOL_CLAIM_TARGET_S = 0.2  # a claim's restore work (warm_pool), p50

Row = tuple[str, str, str, str, str]  # section, figure, value, target, verdict


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def verdicts(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One entry per target: the figure it is judged on, the target, PASS/MISS."""
    out: dict[str, dict[str, Any]] = {}
    cp = doc.get("control_plane")
    if cp:
        p95 = cp["figures"]["overhead_s"]["p95"]
        out["control_plane_p95"] = {
            "value_s": p95,
            "target_s": CONTROL_PLANE_TARGET_S,
            "verdict": verdict(p95 < CONTROL_PLANE_TARGET_S),
        }
    run = doc.get("vm_run")
    if run:
        ratio = run["vm_run_s"]["p50"] / run["floor_s"]["p50"]
        run["ratio_p50"] = round(ratio, 3)
        out["vm_run_ratio"] = {
            "value": round(ratio, 3),
            "target": RUN_RATIO_TARGET,
            "verdict": verdict(ratio <= RUN_RATIO_TARGET),
        }
    boot = doc.get("boot")
    if boot:
        p50 = boot["launch_to_ssh_s"]["p50"]
        out["boot_to_ssh_p50"] = {
            "value_s": p50,
            "target_s": BOOT_TARGET_S,
            "verdict": verdict(p50 < BOOT_TARGET_S),
        }
    cc = doc.get("concurrent")
    if cc:
        out["concurrent_all_succeed"] = {
            "value": f"{cc['succeeded']}/{cc['n']}",
            "verdict": verdict(cc["succeeded"] == cc["n"]),
        }
    cli = doc.get("cli")
    if cli:
        p95 = cli["vm_list_s"]["p95"]
        out["vm_list_p95"] = {
            "value_s": p95,
            "target_s": LIST_TARGET_S,
            "verdict": verdict(p95 < LIST_TARGET_S),
        }
        ratio = cli["ratio_q_to_python"]
        out["cli_ratio"] = {
            "value": ratio,
            "target": CLI_RATIO_TARGET,
            "verdict": verdict(ratio <= CLI_RATIO_TARGET),
        }
    out.update(_workspace_verdicts(doc.get("workspace") or {}))
    out.update(_snapshot_verdicts(doc.get("snapshot") or {}))
    return out


def _pool(snap: dict[str, Any], kind: str, figure: str) -> float | None:
    """The p50 of ``figure`` for the warm pool's ``kind`` (create, run) claims, if measured."""
    return snap.get("pool", {}).get(kind, {}).get(figure, {}).get("p50")


def _snapshot_verdicts(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value, target in (
        ("snap_run_p50", snap.get("vm_run", {}).get("snapshot", {}).get("wall_s", {}).get("p50"),
         SNAP_RUN_TARGET_S),
        ("snap_create_p50", snap.get("create", {}).get("wall_s", {}).get("p50"),
         SNAP_CREATE_TARGET_S),
        ("pool_claim_p50", _pool(snap, "create", "stage_restore_s"), POOL_CLAIM_TARGET_S),
        ("pool_run_p50", _pool(snap, "run", "wall_s"), SNAP_RUN_TARGET_S),
        ("pool_create_p50", _pool(snap, "create", "wall_s"), SNAP_CREATE_TARGET_S),
    ):
        if value is not None:
            out[key] = {"value_s": value, "target_s": target, "verdict": verdict(value <= target)}
    cc = snap.get("concurrent")
    if cc:
        ok = cc["succeeded"] == cc["n"] and cc.get("restored") == cc["n"]
        out["snap_concurrent_all_succeed"] = {
            "value": f"{cc['succeeded']}/{cc['n']} (restored {cc.get('restored')})",
            "verdict": verdict(ok),
        }
    return out


def _workspace_verdicts(ws: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value, target in (
        ("ws_self_delta", ws.get("vm_run", {}).get("self", {}).get("delta_p50_s"),
         WS_DELTA_TARGET_S),
        ("ws_prepare_p50", ws.get("prepare", {}).get("wall_s", {}).get("p50"),
         WS_PREPARE_TARGET_S),
        ("ws_export_p50", ws.get("export", {}).get("wall_s", {}).get("p50"), WS_EXPORT_TARGET_S),
    ):
        if value is not None:
            out[key] = {"value_s": value, "target_s": target, "verdict": verdict(value <= target)}
    return out


def _v(doc: dict[str, Any], key: str) -> str:
    return str(doc["verdicts"].get(key, {}).get("verdict", ""))


def _control_plane_rows(doc: dict[str, Any]) -> list[Row]:
    f = doc["control_plane"]["figures"]
    o, c = f["overhead_s"], f["overhead_client_s"]
    stages = ", ".join(
        f"{n} {ms(f[f'stage_{n}_s']['p50'])}" for n in ("reserve", "disks", "network", "boot")
    )
    return [
        (
            "1 control plane",
            "received -> VMM launched p50/p95",
            f"{ms(o['p50'])} / {ms(o['p95'])}",
            "p95 < 150 ms",
            _v(doc, "control_plane_p95"),
        ),
        ("", "  same, from the client's POST p50/p95", f"{ms(c['p50'])} / {ms(c['p95'])}", "", ""),
        ("", f"  stage p50: {stages}", "", "", ""),
    ]


def _run_rows(doc: dict[str, Any]) -> list[Row]:
    r = doc["vm_run"]
    b = r["breakdown"]
    parts = ", ".join(
        f"{label} {secs(b[key]['p50'])}"
        for label, key in (
            ("start", "cli_to_create_s"),
            ("create", "create_s"),
            ("exec", "exec_s"),
            ("delete", "delete_s"),
            ("exit", "delete_to_exit_s"),
        )
    )
    return [
        ("2 vm run --rm true", "CLI wall clock p50", secs(r["vm_run_s"]["p50"]), "", ""),
        ("", "floor: bare qemu + ssh poll p50", secs(r["floor_s"]["p50"]), "", ""),
        (
            "",
            "ratio vm run / floor (p50s)",
            f"{r['ratio_p50']:.2f}",
            "<= 1.10",
            _v(doc, "vm_run_ratio"),
        ),
        ("", f"  vm run p50: {parts}", "", "", ""),
        ("", "  floor disk prep p50 (not in floor)", secs(r["floor_prep_s"]["p50"]), "", ""),
    ]


def _boot_rows(doc: dict[str, Any]) -> list[Row]:
    b = doc["boot"]
    return [
        (
            "3 boot to SSH (TCG)",
            "banger: VMM launch -> SSH ready p50",
            secs(b["launch_to_ssh_s"]["p50"]),
            "< 6 s",
            _v(doc, "boot_to_ssh_p50"),
        ),
        (
            "",
            "  of which ssh stage p50 / p95",
            f"{secs(b['ssh_stage_s']['p50'])} / {secs(b['ssh_stage_s']['p95'])}",
            "",
            "",
        ),
        ("", "floor: QEMU start -> ssh true p50", secs(b["floor_ssh_ready_s"]["p50"]), "", ""),
    ]


def _concurrent_rows(doc: dict[str, Any]) -> list[Row]:
    c = doc["concurrent"]
    return [
        (
            f"4 {c['n']} concurrent",
            f"{c['n']} x vm run --rm true, wall (each {c['each_s']['min']:.1f}-"
            f"{c['each_s']['max']:.1f} s)",
            secs(c["wall_s"]),
            "all succeed",
            f"{_v(doc, 'concurrent_all_succeed')} ({c['succeeded']}/{c['n']})",
        ),
    ]


def _cli_rows(doc: dict[str, Any]) -> list[Row]:
    c = doc["cli"]
    lst, ver, api = c["vm_list_s"], c["version_s"], c["api_list_s"]
    return [
        (
            "5 CLI latency",
            f"vm list p50/p95 ({c['vms_present']} VMs, n={lst['n']})",
            f"{ms(lst['p50'])} / {ms(lst['p95'])}",
            "p95 < 250 ms",
            _v(doc, "vm_list_p95"),
        ),
        ("", "vm list -q p50", ms(c["vm_list_q_s"]["p50"]), "", ""),
        ("", "python -c pass p50 (bare interpreter)", ms(c["python_s"]["p50"]), "", ""),
        (
            "",
            "ratio vm list -q / python -c pass (p50s)",
            f"{c['ratio_q_to_python']:.1f}",
            "<= 10",
            _v(doc, "cli_ratio"),
        ),
        ("", "banger --version p50 (start-up floor)", ms(ver["p50"]), "", ""),
        ("", "GET /v1/vms in-process p50", f"{api['p50'] * 1000:.1f} ms", "", ""),
    ]


def _stage_text(stages: dict[str, Any]) -> str:
    return ", ".join(f"{k.removesuffix('_s')} {secs(v['p50'])}" for k, v in stages.items())


def _ws_run_rows(run: dict[str, Any], doc: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for kind, label, key in (("bare", "bare", ""), ("self", "this checkout", "ws_self_delta"),
                             ("generated", "generated repo", "")):
        r = run.get(kind)
        if not r:
            continue
        w = r["wall_s"]
        path = f" ({r['path']})" if "path" in r else ""
        rows += [
            ("", f"vm run {label} --rm true p50/p95", f"{secs(w['p50'])} / {secs(w['p95'])}",
             "", ""),
            ("", f"  p50: {_stage_text(r['stages'])}{path}", "", "", ""),
        ]
        if "delta_p50_s" in r:
            rows.append(("", "  delta over bare (p50s); the workspace's own stages p50",
                         f"{r['delta_p50_s']:+.2f} s; {secs(r['workspace_stages_s']['p50'])}",
                         "<= 0.5 s" if key else "", _v(doc, key) if key else ""))
    return rows


def _workspace_rows(doc: dict[str, Any]) -> list[Row]:
    ws = doc["workspace"]
    rows: list[Row] = []
    gen = ws.get("generated_repo")
    if gen:
        rows.append(("6 workspaces", f"generated repo: {gen['files']} files, "
                     f"{gen['bytes'] / 1e6:.0f} MB, made in", secs(gen["seconds"]), "", ""))
    if ws.get("vm_run"):
        rows += _ws_run_rows(ws["vm_run"], doc)
    prep = ws.get("prepare")
    if prep:
        w = prep["wall_s"]
        rows += [
            ("", "prepare generated repo, running VM p50/p95",
             f"{secs(w['p50'])} / {secs(w['p95'])}", "<= 3 s", _v(doc, "ws_prepare_p50")),
            ("", "  first (into an empty VM) / the replaced tree's removal after, p50",
             f"{secs(prep['first_s'])} / {secs(prep['settle_s']['p50'])}", "", ""),
            ("", f"  stage p50: {_stage_text(prep['stages'])} ({prep['path']})", "", "", ""),
        ]
        c = prep.get("copy_split")
        if c:
            rows.append(("", f"  copy apart ({c['archive_bytes'] / 1e6:.0f} MB tar, one vm ssh "
                         f"each, p50): to /dev/null {secs(c['transfer_s']['p50'])}, unpack from a "
                         f"file {secs(c['guest_unpack_s']['p50'])}, vm ssh true "
                         f"{secs(c['vm_ssh_true_s']['p50'])}",
                         "", "", ""))
    exp = ws.get("export")
    if exp:
        w = exp["wall_s"]
        rows += [
            ("", f"export, {exp['patch_files']} files changed, p50/p95",
             f"{secs(w['p50'])} / {secs(w['p95'])}", "<= 1 s", _v(doc, "ws_export_p50")),
            ("", f"  guest git add --all + write-tree (one vm ssh) {secs(exp['guest_index_s'])}",
             "", "", ""),
        ]
    return rows


def _p50_p95(s: dict[str, Any]) -> str:
    return f"{secs(s['p50'])} / {secs(s['p95'])}"


def _snapshot_rows(doc: dict[str, Any]) -> list[Row]:
    snap = doc["snapshot"]
    rows: list[Row] = []
    w = snap.get("warm")
    if w:
        rows.append(("7 warm snapshots", f"image warm ({w['vcpu']} vCPU, {w['memory_mib']} MiB), "
                     f"of which template boot + save {secs(w['save_s'])}; state",
                     f"{secs(w['wall_s'])}; {w['state_bytes'] / 1e6:.0f} MB", "", ""))
    run = snap.get("vm_run")
    if run:
        s, c = run["snapshot"], run["cold"]
        rows += [
            ("", "vm run --rm true from snapshot p50/p95", _p50_p95(s["wall_s"]), "<= 1.0 s",
             _v(doc, "snap_run_p50")),
            ("", f"  p50: create {secs(s['create_s']['p50'])}, restore "
             f"{secs(s['stage_restore_s']['p50'])}, ssh {secs(s['stage_ssh_s']['p50'])}",
             "", "", ""),
            ("", "vm run --rm --cold true p50/p95 (same run)", _p50_p95(c["wall_s"]), "", ""),
            ("", "  speed-up cold / snapshot (p50s)", f"{run['speedup_p50']:.1f}x", "", ""),
        ]
    cr = snap.get("create")
    if cr:
        rows += [
            ("", "vm create to ready from snapshot p50/p95", _p50_p95(cr["wall_s"]), "<= 0.8 s",
             _v(doc, "snap_create_p50")),
            ("", f"  operation p50 {secs(cr['create_s']['p50'])}: restore "
             f"{secs(cr['stage_restore_s']['p50'])}, ssh {secs(cr['stage_ssh_s']['p50'])}",
             "", "", ""),
        ]
    pl = snap.get("pool")
    if pl:
        cp, rn = pl["create"], pl["run"]
        rows += [
            ("", "warm_pool = 1: claim (restore work) p50/p95", _p50_p95(cp["stage_restore_s"]),
             "<= 0.2 s", _v(doc, "pool_claim_p50")),
            ("", "warm_pool = 1: vm create claiming it p50/p95", _p50_p95(cp["wall_s"]),
             "<= 0.8 s", _v(doc, "pool_create_p50")),
            ("", f"  operation p50 {secs(cp['create_s']['p50'])}: claim "
             f"{secs(cp['stage_restore_s']['p50'])}, ssh {secs(cp['stage_ssh_s']['p50'])}",
             "", "", ""),
            ("", "warm_pool = 1: vm run --rm true claiming it p50/p95", _p50_p95(rn["wall_s"]),
             "<= 1.0 s", _v(doc, "pool_run_p50")),
        ]
    cc = snap.get("concurrent")
    if cc:
        rss, pss = cc["vmm_peak_rss_mib"], cc["vmm_peak_pss_mib"]
        rows += [
            ("", f"{cc['n']} x vm run --rm true from one snapshot, wall (each "
             f"{cc['each_s']['min']:.1f}-{cc['each_s']['max']:.1f} s)", secs(cc["wall_s"]),
             "all succeed", _v(doc, "snap_concurrent_all_succeed")),
            ("", f"  peak RSS / PSS per VMM p50 ({rss['n']} VMMs)",
             f"{rss['p50']:.0f} / {pss['p50']:.0f} MiB", "", ""),
        ]
        if cc.get("mem_available_drop_per_vm_mib") is not None:
            rows.append(("", f"  host MemAvailable drop per VM ({cc['most_vmms_at_once']} up "
                         f"at once, {cc['mem_available_drop_mib']:.0f} MiB in all)",
                         f"{cc['mem_available_drop_per_vm_mib']:.0f} MiB", "", ""))
    return rows


def table(doc: dict[str, Any]) -> str:
    """The human-readable summary of ``doc``."""
    rows: list[Row] = [("section", "figure", "value", "target", "result")]
    for key, build in (
        ("control_plane", _control_plane_rows),
        ("vm_run", _run_rows),
        ("boot", _boot_rows),
        ("concurrent", _concurrent_rows),
        ("cli", _cli_rows),
        ("workspace", _workspace_rows),
        ("snapshot", _snapshot_rows),
    ):
        if doc.get(key):
            rows += build(doc)
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    m = doc["machine"]
    lines.append(
        f"VM lifecycle benchmark, {doc['date']}: {m['nproc']} CPUs ({m['cpu']}), "
        f"accel {m['accel']} (kvm: {m['kvm_status']}), runs={doc['settings']['runs']}, "
        f"load avg start {doc['load_start']} end {doc.get('load_end')}"
    )
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
