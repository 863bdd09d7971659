"""Every request body the CLI sends is one the daemon's own request model accepts.

The CLI builds its bodies from the request models in ``api/models.py``; this
proves the wire side: each command runs against the fake daemon, and the bytes
it sent are validated (strictly, as JSON) against the model the daemon's
OpenAPI schema names for that route. A route that takes a body and that no
command here sends fails the test too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from banger.api import models
from banger.cli.main import cli
from banger.daemon.app import create_app
from tests.support.fake_daemon import fake_daemon

COMMANDS = [
    ["kernel", "import", "mykernel", "--from", "{file}"],
    ["image", "build", "dev", "--packages", "git,curl", "--size", "4G"],
    ["image", "warm", "dev", "--vcpu", "2", "--memory", "1G"],
    ["image", "pull", "docker.io/library/debian:bookworm", "--name", "deb"],
    ["image", "import", "{file}", "--name", "mine"],
    ["image", "cache", "prune", "--dry-run"],
    ["vm", "create", "--name", "box", "--vcpu", "2", "--memory", "2G", "--disk", "8G",
     "--no-start"],
    ["vm", "run", "--name", "box", "--", "true"],
    ["vm", "set", "box", "--vcpu", "3", "--memory", "512"],
    ["vm", "kill", "--signal", "term", "box"],
    ["vm", "run", "{dir}", "--name", "box", "--include-untracked", "--", "true"],
    ["vm", "workspace", "prepare", "box", "{dir}", "--branch", "b", "--from", "main"],
    ["vm", "workspace", "prepare", "box", "{dir}", "--mode", "full_copy", "--dry-run"],
    ["vm", "workspace", "export", "box", "--base-commit", "abc123"],
    ["ssh-config", "--install"],
    ["vm", "session", "start", "box", "--name", "agent", "--cwd", "/root/repo", "--pipe", "--",
     "sh", "-c", "while read l; do echo \"$l\"; done"],
    ["vm", "session", "send", "box", "agent", "--data", '{"type":"prompt"}'],
]


def _body_routes() -> dict[tuple[str, str], type[models.RequestModel]]:
    """(METHOD, path regex) -> the request model the daemon parses there, from its OpenAPI."""
    routes = {}
    for path, ops in create_app(None).openapi()["paths"].items():  # type: ignore[arg-type]
        for method, op in ops.items():
            if "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                pattern = re.sub(r"\{[^}]+\}", "[^/]+", path)
                routes[(method.upper(), pattern)] = getattr(models, ref.rsplit("/", 1)[1])
    return routes


ROUTES = _body_routes()


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for key in ("STATE_DIR", "RUNTIME_DIR", "CACHE_DIR"):
        monkeypatch.setenv(f"BANGER_{key}", str(tmp_path / key.lower()))
    monkeypatch.setenv("BANGER_CONFIG", str(tmp_path / "config.toml"))
    (tmp_path / "file").write_text("x")
    yield tmp_path


def _sent(dirs: Path, args: list[str]) -> dict[str, bytes]:
    argv = [a.replace("{file}", str(dirs / "file")).replace("{dir}", str(dirs)) for a in args]
    with fake_daemon(dirs / "runtime_dir" / "bangerd.sock", {}) as fake:
        CliRunner().invoke(cli, argv)  # the fake answers 404: only what was sent matters
    return fake.bodies


def _model_for(request: str) -> type[models.RequestModel]:
    method, path = request.split(" ", 1)
    found = [m for (verb, pattern), m in ROUTES.items()
             if verb == method and re.fullmatch(pattern, path)]
    assert len(found) == 1, f"{request}: the daemon takes no body there"
    return found[0]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:3]))
def test_the_cli_body_validates_against_the_daemons_request_model(
    dirs: Path, args: list[str]
) -> None:
    bodies = _sent(dirs, args)
    assert bodies, f"banger {' '.join(args)} sent no body"
    for request, body in bodies.items():
        _model_for(request).model_validate_json(body, strict=True)


def test_every_route_that_takes_a_body_is_sent_by_a_command_here(dirs: Path) -> None:
    covered = {_model_for(request) for args in COMMANDS for request in _sent(dirs, args)}
    assert covered == set(ROUTES.values())
