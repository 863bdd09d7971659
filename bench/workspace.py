"""Section 6, workspaces (issue 9): ``vm run PATH``, ``vm workspace prepare`` and ``export``.

Two repositories: this project's own checkout (the one bench/ lives in) and
one generated per run (``generate_repo``: 100 dirs x 100 files x ~10 KB of
source-like text, one commit, the same bytes every time). Wall times are the
CLI's; the stage split comes from the operations, as in ``measure.py``.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from banger.api.models import Operation
from bench.env import BenchEnv, Progress
from bench.measure import create_figures, load, op_for, stage_seconds
from bench.stats import summary

GEN_DIRS = 100
GEN_FILES = 100
GEN_FILE_BYTES = 10_000
GEN_SEED = 9
GEN_POOL_LINES = 50_000
EDITED_FILES = 100
WS_VM = "bench-ws"
VOCAB = (
    "def return self value index count result buffer offset length node parent child "
    "state config stage entry path name size mode error check build write read open close "
    "start stop list map filter key item data list_of is_empty if else for while in not and "
    "or None True False import from class with as try except raise yield lambda pass assert "
    "alpha beta gamma delta epsilon request response client server handle lock queue task"
).split()
GUEST_TAR, GUEST_DIR = "/root/.bench-payload.tar", "/root/.bench-unpack"
GUEST_GIT = (  # export's index step alone (workspace/scripts.py EXPORT), on a scratch index
    'cd "$1" && cp .git/index "$2" && export GIT_INDEX_FILE="$2" && '
    'git -c core.fsmonitor=false add --all -- . && git write-tree >/dev/null && rm -f "$2"'
)
CREATE_WS_STAGES = ("stage", "workspace", "pack", "copy")
PRE_BOOT, OVER_SSH = "pre-boot: one debugfs batch into the work disk", "over SSH after boot"


def self_checkout() -> Path:
    """The checkout this benchmark is part of."""
    return Path(__file__).resolve().parent.parent


def _source_lines(rng: random.Random) -> list[str]:
    """A pool of code-like lines: indentation, then words of ``VOCAB``."""
    pool = []
    for _ in range(GEN_POOL_LINES):
        words = rng.choices(VOCAB, k=rng.randint(2, 11))
        pool.append("    " * rng.randint(0, 3) + " ".join(words) + rng.choice(("", ":", ",", "()")))
    return pool


def generated_file(rng: random.Random, pool: list[str]) -> bytes:
    lines: list[str] = []
    size = 0
    while size < GEN_FILE_BYTES:
        line = rng.choice(pool)
        lines.append(line)
        size += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


def generated_paths() -> list[str]:
    return [f"mod{d:03}/part{f:03}.py" for d in range(GEN_DIRS) for f in range(GEN_FILES)]


def edited_paths() -> list[str]:
    """The files the guest edits before export: one in each directory."""
    return [f"mod{d:03}/part{(d * 7) % GEN_FILES:03}.py" for d in range(EDITED_FILES)]


def generate_repo(top: Path) -> dict[str, Any]:
    """Write the generated repository at ``top`` (deterministic: seeded RNG, fixed dates)."""
    started = time.perf_counter()
    rng = random.Random(GEN_SEED)
    pool = _source_lines(rng)
    total = 0
    for rel in generated_paths():
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = generated_file(rng, pool)
        path.write_bytes(data)
        total += len(data)
    _git(top, "init", "-q", "-b", "main")
    _git(top, "add", "-A")
    _git(top, "commit", "-q", "-m", "generated benchmark repository")
    commit = _git(top, "rev-parse", "HEAD").strip()
    return {"path": str(top), "files": GEN_DIRS * GEN_FILES, "bytes": total, "commit": commit,
            "seconds": round(time.perf_counter() - started, 2)}


def _git(top: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    stamp = "2026-01-01T00:00:00Z"
    env.update(GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_DATE=stamp,
               GIT_COMMITTER_DATE=stamp, GIT_AUTHOR_NAME="bench", GIT_COMMITTER_NAME="bench",
               GIT_AUTHOR_EMAIL="bench@localhost", GIT_COMMITTER_EMAIL="bench@localhost")
    return subprocess.run(["git", "-C", str(top), *args], env=env, capture_output=True,
                          text=True, check=True, timeout=300).stdout


def _stages(op: Operation, names: tuple[str, ...]) -> dict[str, Any]:
    """The workspace stages ``op`` ran (seconds each), and which path the workspace took."""
    ran = {s.name for s in op.stages}
    out: dict[str, Any] = {f"{n}_s": stage_seconds(op, n) for n in names if n in ran}
    if op.kind == "vm.create":
        out["launch_to_ssh_s"] = create_figures(op)["launch_to_ssh_s"]
    if "stage" in ran:  # a workspace was shipped
        out["path"] = OVER_SSH if "copy" in ran else PRE_BOOT
    return out


def _with_stages(rows: list[dict[str, Any]], wall: list[float]) -> dict[str, Any]:
    paths = sorted({row["path"] for row in rows if "path" in row})
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "path"))
    stages = {k: summary([row[k] for row in rows if k in row]) for k in keys}
    out: dict[str, Any] = {"wall_s": summary(wall), "stages": stages}
    if paths:
        out["path"] = paths[0] if len(paths) == 1 else paths
        out["workspace_stages_s"] = summary(  # the time the workspace itself added to the run
            [sum(row.get(f"{n}_s", 0.0) for n in CREATE_WS_STAGES) for row in rows])
    return out


def runs_vs_bare(env: BenchEnv, gen: Path, runs: int, progress: Progress) -> dict[str, Any]:
    """``vm run --rm -- true`` bare, with this checkout, with the generated repo.

    Alternated, the order rotated each round, so that no kind always follows
    another (a run right after the generated one pays for its writeback).
    """
    warm = env.cli_ok("vm", "run", "--rm", "--name", "bench-wswarm", "--", "true").seconds
    progress(f"warm-up vm run --rm true (not counted): {warm:.2f} s")
    kinds: list[tuple[str, Path | None]] = [("bare", None), ("self", self_checkout()),
                                            ("generated", gen)]
    wall: dict[str, list[float]] = {k: [] for k, _ in kinds}
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k, _ in kinds}
    for i in range(runs):
        for kind, path in kinds[i % 3:] + kinds[:i % 3]:
            name = f"bench-ws{kind[0]}{i}"
            where = [] if path is None else [str(path)]
            timed = env.cli_ok("vm", "run", *where, "--rm", "--name", name, "--", "true")
            wall[kind].append(timed.seconds)
            rows[kind].append(_stages(op_for(env.operations(), "vm.create", name),
                                      CREATE_WS_STAGES))
            progress(f"vm run {kind} --rm true: {timed.seconds:.2f} s")
    out: dict[str, Any] = {"warmup_s": round(warm, 3), "order": "rotated each round"}
    for kind, _ in kinds:
        out[kind] = _with_stages(rows[kind], wall[kind])
    for kind in ("self", "generated"):
        out[kind]["delta_p50_s"] = round(out[kind]["wall_s"]["p50"]
                                         - out["bare"]["wall_s"]["p50"], 3)
    out["self"]["repo"] = str(self_checkout())
    out["load"] = load()
    return out


def settle(env: BenchEnv) -> float:
    """Wait until the guest has removed the tree a prepare replaced (it does so in the
    background: workspace/scripts.py PREPARE) and written back its page cache, so that
    no timed step shares the guest's CPU or disk with the one before."""
    guest = env.client.request("GET", f"/vms/{WS_VM}")["workspace"]["guest_path"]
    parent, _, name = guest.rpartition("/")
    return ssh_seconds(env, 'while [ -e "$1" ]; do sleep 0.1; done; sync',
                       f"{parent}/.{name}.banger-old")


def prepare_on_running(env: BenchEnv, gen: Path, runs: int,
                       progress: Progress) -> dict[str, Any]:
    """``vm workspace prepare`` of ``gen`` into the running ``WS_VM``, ``runs`` times.

    The first goes into an empty VM; each later one replaces the previous tree.
    """
    wall, rows, settled = [], [], []
    for _ in range(runs):
        timed = env.cli_ok("vm", "workspace", "prepare", WS_VM, str(gen))
        op = op_for(env.operations(), "vm.workspace.prepare", WS_VM)
        wall.append(timed.seconds)
        rows.append(_stages(op, ("stage", "pack", "copy")))
        settled.append(settle(env))
        progress(f"prepare {timed.seconds:.2f} s ("
                 + ", ".join(f"{k} {v:.2f} s" for k, v in rows[-1].items() if k != "path")
                 + f"), then the old tree's removal {settled[-1]:.2f} s")
    out = _with_stages(rows, wall)
    out.update(first_s=round(wall[0], 3), settle_s=summary(settled), load=load())
    return out


def ssh_seconds(env: BenchEnv, script: str, *args: str, stdin: Path | None = None) -> float:
    """``banger vm ssh WS_VM -- sh -c SCRIPT sh ARGS``: its wall time."""
    return env.cli_ok("vm", "ssh", WS_VM, "--", "sh", "-c", script, "sh", *args,
                      stdin=stdin).seconds


def copy_split(env: BenchEnv, gen: Path, runs: int, progress: Progress) -> dict[str, Any]:
    """Prepare's copy stage taken apart: the same tar sent to /dev/null, and unpacked alone.

    The tar is built here with the product's own staging and writer; each
    probe is one ``vm ssh`` over the VM's shared connection, like the copy.
    """
    from banger.core.workspace import WorkspaceMode
    from banger.workspace.payload import write_payload
    from banger.workspace.stage import make_plan, stage

    scratch = env.root / "payload"
    scratch.mkdir()
    tar = scratch / "payload.tar"
    made = write_payload(stage(make_plan(gen, WorkspaceMode.GIT), scratch), tar)
    ssh_seconds(env, 'cat > "$1" && sync', GUEST_TAR, stdin=tar)
    rows: dict[str, list[float]] = {"vm_ssh_true_s": [], "transfer_s": [], "guest_unpack_s": []}
    for _ in range(runs):
        rows["vm_ssh_true_s"].append(env.cli_ok("vm", "ssh", WS_VM, "--", "true").seconds)
        rows["transfer_s"].append(ssh_seconds(env, "cat > /dev/null", stdin=tar))
        rows["guest_unpack_s"].append(ssh_seconds(
            env, 'mkdir "$2" && tar -x -f "$1" -C "$2"', GUEST_TAR, GUEST_DIR))
        ssh_seconds(env, 'rm -rf "$1" && sync', GUEST_DIR)
        progress(f"copy apart: {made.archive_bytes / 1e6:.0f} MB tar to /dev/null "
                 f"{rows['transfer_s'][-1]:.2f} s, unpacked from a file "
                 f"{rows['guest_unpack_s'][-1]:.2f} s")
    ssh_seconds(env, 'rm -f "$1"', GUEST_TAR)
    return {"archive_bytes": made.archive_bytes, **{k: summary(v) for k, v in rows.items()}}


def patch_files(patch: bytes) -> list[str]:
    """The paths a ``git diff`` patch touches (one ``diff --git`` header each)."""
    return re.findall(r"^diff --git a/(\S+) b/", patch.decode(errors="replace"), re.M)


def export_after_edit(env: BenchEnv, runs: int, progress: Progress) -> dict[str, Any]:
    """Append a line to ``EDITED_FILES`` files in the guest, then time ``export -o``."""
    guest = env.client.request("GET", f"/vms/{WS_VM}")["workspace"]["guest_path"]
    edited = edited_paths()
    script = 'cd "$1" && shift && for f in "$@"; do echo "# edited in the guest" >> "$f"; done'
    env.cli_ok("vm", "ssh", WS_VM, "--", "sh", "-c", script, "sh", guest, *edited)
    out = env.root / "export.patch"
    wall = []
    for _ in range(runs):
        wall.append(env.cli_ok("vm", "workspace", "export", WS_VM, "-o", str(out)).seconds)
        progress(f"export {wall[-1]:.2f} s")
    guest_git = ssh_seconds(env, GUEST_GIT, guest, "/tmp/bench-export.index")
    patch = out.read_bytes()
    touched = patch_files(patch)
    return {"wall_s": summary(wall), "edited_files": len(edited), "patch_files": len(touched),
            "patch_matches": sorted(touched) == sorted(edited), "patch_bytes": len(patch),
            "guest_index_s": round(guest_git, 3), "load": load()}


def workspaces(env: BenchEnv, runs: int, progress: Progress, doc: dict[str, Any]) -> None:
    """Fill ``doc`` (the section, kept in the document when a step fails)."""
    gen = env.root / "gen"
    progress(f"generating {GEN_DIRS * GEN_FILES} files x ~{GEN_FILE_BYTES} bytes in {gen}")
    doc["generated_repo"] = generate_repo(gen)
    progress(f"vm run PATH --rm true vs bare: {runs} each of bare, this checkout, generated")
    doc["vm_run"] = runs_vs_bare(env, gen, runs, progress)
    progress(f"prepare of the generated repo into running VM {WS_VM}: {runs} times")
    env.create_vm(WS_VM)
    doc["prepare"] = prepare_on_running(env, gen, runs, progress)
    doc["prepare"]["copy_split"] = copy_split(env, gen, runs, progress)
    progress(f"{EDITED_FILES} files edited in the guest, export: {runs} times")
    doc["export"] = export = export_after_edit(env, runs, progress)
    env.delete_vm(WS_VM)
    if not export["patch_matches"]:
        raise RuntimeError(f"export's patch touches {export['patch_files']} files, not exactly "
                           f"the {export['edited_files']} the guest edited")
