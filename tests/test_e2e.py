"""The whole path on real processes: POST /jobs → Dagster run (daemon on Postgres storage) →
tile rows with PostGIS footprints → NATS → WebSocket `/stream` → GET /jobs/{id}."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from websockets.sync.client import connect as ws_connect

from constellation_core.db import migrate
from constellation_core.devstack.setup import init_dagster_storage, prepare_dagster_home
from constellation_core.waiting import free_port, wait_for
from constellation_core.accounts import create_account, issue_api_key
from tests.conftest import AccountKey, fresh_database_url
from tests.processes import BIN, ManagedProcess
from tests.samples import GENEVA

pytestmark = pytest.mark.e2e
JOB_DEADLINE_S = 120


@pytest.fixture(scope="module")
def stack(pg_admin_url, nats_url):
    tmp = Path(tempfile.mkdtemp(prefix="constellation-e2e-"))
    # Its own system-of-record database, so the daemon only sees this module's jobs.
    database_url = fresh_database_url(pg_admin_url, "constellation_e2e")
    migrate(database_url)
    dagster_url = fresh_database_url(pg_admin_url, "dagster_test").replace("+psycopg", "+psycopg2")
    home = prepare_dagster_home(tmp / "dagster_home")
    init_dagster_storage(home, dagster_url)
    api_port, dagit_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "DAGSTER_PG_URL": dagster_url,
        "DAGSTER_HOME": str(home),
        "DAGIT_PORT": str(dagit_port),
        "PYTHONUNBUFFERED": "1",
    }
    processes = [
        ManagedProcess("api", [str(BIN / "uvicorn"), "--factory", "api.main:app", "--port", str(api_port)], env, tmp),
        ManagedProcess("dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, tmp),
        ManagedProcess(
            "dagster-webserver",
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(dagit_port)],
            env, tmp,
        ),
    ]
    try:
        for process in processes:
            process.start()
        api = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: httpx.get(f"{api}/readyz").status_code == 200, timeout=60, what="API ready")
        yield {"api": api, "ws": f"ws://127.0.0.1:{api_port}", "dagit": f"http://127.0.0.1:{dagit_port}",
               "processes": processes, "database_url": database_url}
    finally:
        for process in processes:
            if not process.alive():
                print(f"--- {process.name} exited early; its log:\n{process.log_tail()}")
            process.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def account_in(database_url: str) -> AccountKey:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        account_id = create_account(conn, "e2e-member")
        key = issue_api_key(conn, account_id)
    engine.dispose()
    return AccountKey(account_id, "e2e-member", key)


def _dump_logs(stack) -> str:
    return "\n".join(f"--- {p.name}\n{p.log_tail(25)}" for p in stack["processes"])


def test_job_goes_queued_running_succeeded_over_the_websocket(stack):
    account = account_in(stack["database_url"])
    with ws_connect(f"{stack['ws']}/stream?api_key={account.key}", open_timeout=10) as ws:
        response = httpx.post(
            f"{stack['api']}/jobs", json={"name": "e2e", "zoom": 14, "area": GENEVA},
            headers={**account.headers, "X-Request-ID": "e2e-correlation"},
        )
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]

        states: list[str] = []
        event_ids: list[int] = []

        def next_state():
            message = json.loads(ws.recv(timeout=JOB_DEADLINE_S))
            if message.get("type") == "job.state" and message["job_id"] == job_id:
                states.append(message["payload"]["state"])
                event_ids.append(message["id"])
            return states and states[-1] in ("succeeded", "failed", "canceled")

        try:
            wait_for(next_state, timeout=JOB_DEADLINE_S, what="the job to finish", interval=0)
        except Exception:
            pytest.fail(f"states seen: {states}\n{_dump_logs(stack)}")

    assert states == ["queued", "running", "succeeded"], _dump_logs(stack)
    assert event_ids == sorted(event_ids)

    job = httpx.get(f"{stack['api']}/jobs/{job_id}", headers=account.headers).json()
    assert job["state"] == "succeeded"
    assert job["dagster_run_id"] and job["dagit_url"].endswith(job["dagster_run_id"])

    engine = create_engine(stack["database_url"])
    with engine.connect() as conn:
        tiles = conn.execute(
            text(
                "SELECT count(*) AS n, bool_and(ST_IsValid(footprint)) AS valid, "
                "bool_and(ST_SRID(footprint) = 4326) AS wgs84, "
                "bool_and(ST_Intersects(t.footprint, j.aoi)) AS on_area "
                "FROM tiles t JOIN jobs j ON j.id = t.job_id WHERE t.job_id = :id"
            ),
            {"id": job_id},
        ).one()
        run = conn.execute(text("SELECT state, finished_at FROM runs WHERE job_id = :id"), {"id": job_id}).one()
    engine.dispose()
    assert tiles.n == job["tiles_total"] > 0
    assert tiles.valid and tiles.wgs84 and tiles.on_area
    assert run.state == "succeeded" and run.finished_at is not None

    # The correlation id of the request follows it into the Dagster run's tags.
    graphql = httpx.post(
        f"{stack['dagit']}/graphql",
        json={"query": '{ runOrError(runId: "%s") { ... on Run { tags { key value } } } }' % job["dagster_run_id"]},
        timeout=30,
    ).json()
    tags = {t["key"]: t["value"] for t in graphql["data"]["runOrError"]["tags"]}
    assert tags["constellation/correlation_id"] == "e2e-correlation"
    assert tags["constellation/job_id"] == job_id


def test_dagit_lists_the_code_location(stack):
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"

    def loaded():
        data = httpx.post(f"{stack['dagit']}/graphql", json={"query": query}, timeout=10).json()
        entries = data["data"]["workspaceOrError"]["locationEntries"]
        return [e for e in entries if e["name"] == "constellation_dagster" and e["loadStatus"] == "LOADED"]

    assert wait_for(loaded, timeout=90, what="Dagit to load the code location")
