"""Firecracker's OpenAPI (Swagger 2.0) spec, read from ``../shared/reference/`` beside the repo.

The spec is never copied into the project: tests that need it skip, naming the
missing file, when it is absent. ``SpecValidator`` answers the two contract
questions: does Firecracker have this path and method, and does this body
match that operation's schema. Objects are checked strictly (no unknown
fields), as Firecracker's own parser (serde ``deny_unknown_fields``) is.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from banger.vmm.firecracker_api import SPEC_VERSION

REFERENCE_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference"


def spec_file(version: str = SPEC_VERSION) -> Path:
    return REFERENCE_DIR / f"firecracker-api-{version}.yaml"


@cache
def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def load_spec(version: str = SPEC_VERSION) -> dict[str, Any]:
    """The parsed spec, or a pytest skip naming the file that is missing."""
    path = spec_file(version)
    if not path.is_file():
        pytest.skip(f"Firecracker API spec not found at {path.resolve()} (kept outside the repo)")
    return _load(path)


def _strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists properties
    (walking schemas only: a property may itself be named ``properties``)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {n: _strict(s) for n, s in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    for key in ("items", "allOf", "anyOf", "oneOf", "not"):
        if key in out:
            out[key] = _strict(out[key])
    return out


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^/{}]+\}", template)
    return re.compile("[^/]+".join(re.escape(p) for p in parts) + r"\Z")


class SpecValidator:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.definitions = {n: _strict(d) for n, d in copy.deepcopy(spec["definitions"]).items()}
        self._paths = [(t, _template_regex(t), ops) for t, ops in spec["paths"].items()]

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        """The spec's operation for ``method`` on the concrete ``path``, or None."""
        for _, regex, ops in self._paths:
            if regex.match(path):
                op = ops.get(method.lower())
                return op if isinstance(op, dict) else None
        return None

    def errors(self, method: str, path: str, body: Any) -> list[str]:
        """Why ``body`` is not what the spec takes for ``method path`` ([] when it is)."""
        op = self.operation(method, path)
        if op is None:
            return [f"{method} {path} is not in Firecracker's API"]
        params = [p for p in op.get("parameters", []) if p.get("in") == "body"]
        if not params:
            return [] if body is None else [f"{method} {path} takes no body"]
        if body is None:
            return [f"{method} {path} needs a body"] if params[0].get("required") else []
        schema = {**params[0]["schema"], "definitions": self.definitions}
        validator = jsonschema_rs.Draft4Validator(_strict(schema))
        return [f"{method} {path}: {e.message}" for e in validator.iter_errors(body)]
