"""STYLE.md's and DESIGN.md section 2's layer rules, checked on the source.

Only host/ and vmm/ run programs, and imports point downward only: each package
imports banger modules from its own allowlist, every import counted (top-level
and inside functions).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

BANGER = Path(__file__).resolve().parents[2] / "banger"
RUNNERS = {"banger.host.run", "subprocess", "asyncio.subprocess"}
# Packages that keep domain logic and call host/'s typed functions instead.
DOMAIN = ("images", "kernels", "workspace", "store", "core", "daemon", "api")

# What each part of banger may import (besides itself and banger.version, the
# leaf every layer reads its version from). DESIGN.md section 2: cli -> api;
# daemon -> core, vmm, host, images, kernels, store; nothing below imports
# daemon/ or cli/; core/ is pure; api/ is the wire, core/ models only.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "host": {"core"},
    "vmm": {"core", "host"},
    "store": {"core"},
    "images": {"core", "host"},
    "kernels": {"core", "host"},
    "workspace": {"core", "host"},
    "api": {"core"},
    "config": {"core"},
    "cli": {"api", "core", "config"},
    "daemon": {"api", "core", "config", "vmm", "host", "images", "kernels", "workspace", "store"},
    "guest": set(),
    "version": set(),
    "helper": {"core", "host"},  # bangerd-root: the in-process host ops behind its guard
}
# The named exceptions (importing file, imported module); docs/architecture.md's Layers
# section names each.
EXCEPTIONS = {
    ("api/client.py", "banger.host.private_dirs"),  # proves the socket is the daemon's
    ("cli/lifecycle.py", "banger.host.private_dirs"),  # starts and stops the daemon
    ("cli/lifecycle.py", "banger.host.proc"),
    ("cli/lifecycle.py", "banger.host.run"),  # spawn_detached: the daemon, in our environment
    ("cli/lifecycle.py", "banger.host.install"),  # a system install's daemon socket
    # banger system install|status|uninstall: the install's files, systemd, the helper's hello
    ("cli/system_cmd.py", "banger.host.install"),
    ("cli/system_cmd.py", "banger.host.systemd"),
    ("cli/system_view.py", "banger.host.install"),
    ("cli/system_view.py", "banger.host.systemd"),
    ("cli/system_view.py", "banger.host.helper_client"),
    ("cli/system_view.py", "banger.host.helper_protocol"),
}
SHARED_LEAVES = {"banger", "banger.version"}


def _imports(path: Path, package: str = "") -> set[str]:
    """Every name ``path`` imports, absolute, at any depth of the file (``from a import b``
    gives ``a`` and ``a.b``); ``package`` (``banger.images``) resolves relative imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{module}" if module else base
            if module:
                names.add(module)
                names |= {f"{module}.{a.name}" for a in node.names}
    return names


def _is_module(root: Path, name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def _violations(root: Path) -> set[str]:
    """``file -> module`` for each banger module a file imports outside its allowlist."""
    found = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        own = rel.split("/")[0].removesuffix(".py")
        package = ".".join(["banger", *Path(rel).parent.parts])
        for name in _imports(path, package):
            if not name.startswith("banger.") or name in SHARED_LEAVES:
                continue
            if not _is_module(root, name):
                continue  # an attribute (``from banger.x import f`` also gives ``banger.x``)
            layer = name.split(".")[1]
            if layer == own or layer in ALLOWED[own] or (rel, name) in EXCEPTIONS:
                continue
            found.add(f"{rel} -> {name}")
    return found


def test_every_part_of_banger_has_an_allowlist() -> None:
    parts = {p.name.removesuffix(".py") for p in BANGER.iterdir()
             if p.suffix == ".py" and p.name != "__init__.py" or (p / "__init__.py").is_file()}
    assert parts == set(ALLOWED)


def test_imports_point_downward_only() -> None:
    assert _violations(BANGER) == set()


@pytest.mark.parametrize(
    ("rel", "line"),
    [
        ("api/models.py", "from banger.images.manifest import ImageManifest"),
        ("store/records.py", "from banger.kernels.manifest import KernelManifest"),
        ("host/files.py", "def f():\n    from banger.daemon import state"),
        ("core/names.py", "import banger.host.files"),
        ("api/errors.py", "from banger.host.private_dirs import check_daemon_socket"),
        ("images/build.py", "from ..cli import main"),
        ("vmm/qemu.py", "from banger import daemon"),
    ],
)
def test_the_check_sees_an_upward_import(tmp_path: Path, rel: str, line: str) -> None:
    """A copy of the tree with one old (or new) upward arrow re-added fails the check."""
    root = tmp_path / "banger"
    shutil.copytree(BANGER, root, ignore=shutil.ignore_patterns("__pycache__"))
    target = root / rel
    target.write_text(target.read_text() + "\n" + line + "\n")
    found = _violations(root)
    assert found and {v.split(" -> ")[0] for v in found} == {rel}


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
