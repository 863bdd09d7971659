"""schemathesis against bangerd's own OpenAPI schema, over its Unix socket."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from banger.core.wait import poll_until
from banger.host.proc import pid_alive
from tests.conftest import BangerEnv


@pytest.fixture(scope="module")
def fuzz_env() -> Iterator[BangerEnv]:
    with tempfile.TemporaryDirectory(prefix="banger-fuzz-") as root:
        benv = BangerEnv(Path(root))
        started = benv.banger("daemon", "start")
        assert started.returncode == 0, started.stderr
        yield benv
        benv.banger("daemon", "stop")


@pytest.fixture(scope="module")
def uds_client(fuzz_env: BangerEnv) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds=str(fuzz_env.socket))
    with httpx.Client(transport=transport, base_url="http://bangerd", timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def api_schema(uds_client: httpx.Client) -> Any:
    raw = uds_client.get("/openapi.json").json()
    # Shutting the daemon down mid-fuzz would end the run, not test anything.
    return schemathesis.openapi.from_dict(raw).exclude(path="/v1/shutdown")


def test_no_endpoint_answers_500_or_an_undeclared_status(
    api_schema: Any, uds_client: httpx.Client
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 4

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def conforms(case: Any) -> None:
            kwargs = case.as_transport_kwargs(base_url="http://bangerd")
            kwargs.pop("cookies", None)
            # Bodies such as {"disk": "garbage"} are schema-valid strings that the daemon
            # rightly refuses with 400, so the "positive data is accepted" check does not
            # apply; every other check (no 5xx, declared statuses, schemas) does.
            response = uds_client.request(**kwargs)
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
            if response.status_code >= 400:  # errors are total: always the JSON error body
                body = response.json()
                assert body["op_id"] == response.headers["X-Banger-Op-Id"], body
                assert body["code"] != "internal", body

        conforms()


def test_shutdown_endpoint_stops_the_daemon(banger_env: BangerEnv) -> None:
    banger_env.banger("daemon", "start")
    pid = banger_env.daemon_pid()
    transport = httpx.HTTPTransport(uds=str(banger_env.socket))
    with httpx.Client(transport=transport, base_url="http://bangerd") as client:
        assert client.post("/v1/shutdown").status_code == 202
    assert pid
    assert poll_until(lambda: not pid_alive(pid), timeout=15)
    assert not os.path.exists(banger_env.socket)
