"""What a CLI process imports: the scripting paths load no heavy library (docs/performance.md).

Each command runs in a fresh ``python -I`` against the fake daemon; the test
asserts the set of modules it loaded, not a timing (timings live in bench/).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fake_daemon import Answer, fake_daemon

# Never in a CLI process: the daemon's stack, and httpx (the client is http.client).
NEVER = {"asyncssh", "structlog", "fastapi", "starlette", "uvicorn", "pyroute2", "httpx", "anyio"}
# Not on the -q paths: model parsing and rich rendering are for the commands that need them.
NOT_ON_QUIET_PATHS = NEVER | {"pydantic", "pydantic_core", "rich", "banger.api.models",
                              "asyncio", "banger.host.run"}
# Allowed there: click, http.client (and its email parser), the client, config, the list command.

_RUN = """
import json, sys
from banger.cli.main import main
out, sys.argv = sys.argv[1], ["banger", *sys.argv[2:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def _loaded(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {
        "BANGER_STATE_DIR": str(tmp_path / "state"),
        "BANGER_RUNTIME_DIR": str(tmp_path / "run"),
        "BANGER_CACHE_DIR": str(tmp_path / "cache"),
        "BANGER_CONFIG": str(tmp_path / "config.toml"),
        "NO_COLOR": "1",
        "PATH": "/usr/bin:/bin",
    }
    out = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-I", "-c", _RUN, str(out), *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["code"] in (0, None), result.stderr
    return result, set(report["modules"])


def _heavy(modules: set[str], names: set[str]) -> set[str]:
    return {m for m in modules if m in names or m.split(".")[0] in names}


@pytest.mark.parametrize("args", [["vm", "list", "-q"], ["ps", "-q"]])
def test_listing_names_loads_no_models_no_rich_and_no_other_command(
    tmp_path: Path, args: list[str]
) -> None:
    answers = {"GET /v1/vms": Answer.json({"vms": [{"name": "box"}, {"name": "other"}]})}
    with fake_daemon(tmp_path / "run" / "bangerd.sock", answers):
        result, modules = _loaded(tmp_path, *args)
    assert result.stdout.split() == ["box", "other"]
    assert _heavy(modules, NOT_ON_QUIET_PATHS) == set()
    others = {"banger.cli.vm_cmd", "banger.cli.image_cmd", "banger.cli.kernel_cmd",
              "banger.cli.daemon_cmd", "banger.cli.doctor_cmd", "banger.cli.progress"}
    assert modules & others == set(), "only the invoked command's module is imported"


def test_no_cli_module_imports_the_daemon_stack() -> None:
    """Every module under banger/cli/ at once (what ``--help`` of every group loads)."""
    script = (
        "import importlib, json, pkgutil, sys, banger.cli\n"
        "names = [m.name for m in pkgutil.walk_packages(banger.cli.__path__, 'banger.cli.')]\n"
        "[importlib.import_module(n) for n in names if not n.endswith('__main__')]\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True,
                            text=True, timeout=60, check=True)
    modules = set(json.loads(result.stdout))
    assert {"banger.cli.vm_cmd", "banger.cli.vm_list", "banger.cli.image_cmd"} <= modules
    assert _heavy(modules, NEVER) == set()
    assert not any(m.startswith("banger.daemon") for m in modules)


def test_help_and_completion_see_the_lazy_commands(tmp_path: Path) -> None:
    result, _ = _loaded(tmp_path, "vm", "--help")
    for verb in ("create", "list", "run", "ssh", "kill", "prune"):
        assert f"  {verb} " in result.stdout
    completion = subprocess.run(
        [sys.executable, "-I", "-m", "banger.cli"], capture_output=True, text=True, timeout=60,
        env={"_BANGER_COMPLETE": "bash_complete", "COMP_WORDS": "banger vm li", "COMP_CWORD": "2",
             "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert "plain,list" in completion.stdout.splitlines()
