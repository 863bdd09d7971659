"""STYLE.md's layer rule, checked on the source: only host/ and vmm/ run programs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BANGER = Path(__file__).resolve().parents[2] / "banger"
RUNNERS = {"banger.host.run", "subprocess", "asyncio.subprocess"}
# Packages that keep domain logic and call host/'s typed functions instead.
DOMAIN = ("images", "kernels", "store", "core", "daemon", "api")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("package", DOMAIN)
def test_domain_packages_run_no_program_themselves(package: str) -> None:
    offenders = {
        f"{path.relative_to(BANGER)}: {name}"
        for path in (BANGER / package).rglob("*.py")
        for name in _imports(path)
        if name in RUNNERS or name.startswith(("banger.host.run.", "subprocess."))
        or name in ("asyncio.create_subprocess_exec", "os.system", "os.popen")
    }
    assert offenders == set()


def test_the_check_sees_a_runner_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from banger.host.run import run\nimport subprocess\n")
    assert {"banger.host.run", "subprocess"} <= _imports(bad)
