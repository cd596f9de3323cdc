"""schemathesis over the whole committed contract (openapi/spec.yaml) against the API served by
uvicorn on real Postgres+PostGIS and NATS: generated valid and invalid requests, a fixed number of
cases per operation. No 5xx, and every response (status, content type, body) is what the spec says."""

from __future__ import annotations

import os
import shutil
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
from sqlalchemy import create_engine

from constellation_core.accounts import create_account, issue_api_key
from constellation_core.settings import API_SERVER_ARGS, REPO_ROOT
from constellation_core.waiting import free_port, wait_for
from constellation_devstack.prometheus import PrometheusServer, Target
from tests.conftest import drop_database, fresh_database_url
from tests.processes import BIN, ManagedProcess
from tests.samples import job_body

CASES_PER_OPERATION = 40
schema = schemathesis.openapi.from_path(REPO_ROOT / "openapi" / "spec.yaml")


@pytest.fixture(scope="module")
def database_url(pg_admin_url, migrated_template):
    """One database for this module: the served API and the tests' rows (make_account) share it."""
    url = fresh_database_url(pg_admin_url, "constellation_contract", migrated_template)
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
def served_api(database_url, nats_url):
    port, usage_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="constellation-contract-"))
    # Prometheus too: the history routes read it (GET /fleet/history).
    prometheus = PrometheusServer(tmp / "prometheus", free_port(), [Target("api", [f"127.0.0.1:{port}"], token=True)])
    env = {**os.environ, "DATABASE_URL": database_url, "NATS_URL": nats_url, "PYTHONUNBUFFERED": "1",
           "USAGE_PORT": str(usage_port), "PROMETHEUS_URL": prometheus.url,
           "CONSTELLATION_METRICS_TOKEN": prometheus.token()}
    usage = ManagedProcess("usage", [str(REPO_ROOT / "usage_go" / "bin" / "usage")], env, tmp)
    api = ManagedProcess("api", [str(BIN / "uvicorn"), *API_SERVER_ARGS, "--port", str(port)], env, tmp)
    prometheus.start()
    usage.start()
    api.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=60, what="API ready")
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{usage_port}/readyz").status_code == 200, timeout=60,
                 what="usage service ready")
        engine = create_engine(database_url)
        with engine.begin() as conn:
            key = issue_api_key(conn, create_account(conn, f"contract-{uuid.uuid4().hex[:8]}", role="admin"))
        engine.dispose()
        yield url, {"Authorization": f"Bearer {key}"}
    finally:
        api.stop()
        usage.stop()
        prometheus.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=CASES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_contract(case, served_api):
    url, headers = served_api
    case.call_and_validate(
        base_url=url, headers=headers, timeout=30,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )


def test_usage_is_served_from_the_api_origin_with_its_ownership_rules(served_api, make_account):
    url, admin_headers = served_api
    member, other = make_account(), make_account()
    own = httpx.get(f"{url}/usage/accounts/{member.id}", params={"window": "day"}, headers=member.headers)
    assert own.status_code == 200 and own.json()["account_name"] == member.name and own.json()["jobs"] == 0
    assert httpx.get(f"{url}/usage/accounts/{other.id}", headers=member.headers).status_code == 404
    assert httpx.get(f"{url}/usage/accounts/{other.id}", headers=admin_headers).status_code == 200
    # Another tenant has used something; a member's leaderboard is their own row and rank, nobody else's.
    assert httpx.post(f"{url}/jobs", json=job_body(), headers=other.headers).status_code == 201
    board = httpx.get(f"{url}/usage/leaderboard", params={"metric": "jobs", "limit": 5}, headers=member.headers)
    assert board.status_code == 200 and board.json()["metric"] == "jobs"
    rows = board.json()["data"]
    assert [row["account_name"] for row in rows] == [member.name]
    assert rows[0]["rank"] is None or rows[0]["rank"] > 1, "the other tenant used more"
    everyone = httpx.get(f"{url}/usage/leaderboard", params={"metric": "jobs", "limit": 100}, headers=admin_headers)
    assert other.name in [row["account_name"] for row in everyone.json()["data"]]
    assert httpx.get(f"{url}/usage/leaderboard").status_code == 401
