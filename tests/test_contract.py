"""schemathesis over the whole committed contract (openapi/spec.yaml) against the API served by
uvicorn on real Postgres+PostGIS and NATS: generated valid and invalid requests, a fixed number of
cases per operation. No 5xx, and every response (status, content type, body) is what the spec says."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from constellation_core.accounts import create_account, issue_api_key
from constellation_core.settings import REPO_ROOT
from constellation_core.waiting import free_port, wait_for
from tests.processes import BIN, ManagedProcess

CASES_PER_OPERATION = 40
schema = schemathesis.openapi.from_path(REPO_ROOT / "openapi" / "spec.yaml")


@pytest.fixture(scope="module")
def served_api(database_url, nats_url, engine):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "NATS_URL": nats_url, "PYTHONUNBUFFERED": "1"}
    api = ManagedProcess("api", [str(BIN / "uvicorn"), "--factory", "api.main:app", "--port", str(port)], env,
                         Path(tempfile.mkdtemp(prefix="constellation-contract-")))
    api.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=60, what="API ready")
        with engine.begin() as conn:
            key = issue_api_key(conn, create_account(conn, f"contract-{uuid.uuid4().hex[:8]}", role="admin"))
        yield url, {"Authorization": f"Bearer {key}"}
    finally:
        api.stop()


@schema.parametrize()
@settings(max_examples=CASES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_contract(case, served_api):
    url, headers = served_api
    case.call_and_validate(
        base_url=url, headers=headers, timeout=30,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
