"""The whole path on real processes: POST /jobs → Dagster run (daemon on Postgres storage) →
tile rows with PostGIS footprints → NATS → WebSocket `/stream` → GET /jobs/{id}."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from datetime import datetime

import httpx
import pytest
from sqlalchemy import create_engine, text
from websockets.sync.client import connect as ws_connect

from dagster import DagsterInstance

from constellation_core.devices import simulated_devices
from constellation_core.settings import REPO_ROOT, Settings
from constellation_core.vocabulary import TERMINAL_JOB_STATES
from constellation_core.waiting import Timeout, wait_for
from constellation_core.accounts import create_account, issue_api_key
from tests.conftest import AccountKey
from tests.e2e_stack import running_stack
from tests.processes import BIN
from tests.samples import GENEVA

pytestmark = pytest.mark.e2e
JOB_DEADLINE_S = 180
SIMULATED = simulated_devices(2)
# A short re-dispatch window, so the launch guard is exercised within a test's time (default 60 s).
REDISPATCH_AFTER_S = 2


@pytest.fixture(scope="module")
def stack(pg_admin_url, nats_url, migrated_template):
    with running_stack(pg_admin_url, nats_url, migrated_template, simulated=len(SIMULATED),
                       env={"CONSTELLATION_REDISPATCH_AFTER_S": str(REDISPATCH_AFTER_S)}) as running:
        yield running


def _step_timeline(stack, job_ids: list[str]) -> str:
    """These jobs' Dagster runs (retries included): run-level events and the inference steps' events,
    by time (to explain a failure)."""
    from dagster import RunsFilter

    lines = []
    with DagsterInstance.from_config(stack["dagster_home"]) as instance:
        for job_id in job_ids:
            for run in instance.get_runs(filters=RunsFilter(tags={"constellation/job_id": job_id})):
                lines.append(f"job {job_id[:8]}: run {run.run_id[:8]} {run.job_name} {run.status.value} "
                             f"tags={ {k: v for k, v in run.tags.items() if 'retry' in k or 'worker' in k} }")
                for record in instance.all_logs(run.run_id):
                    event = record.dagster_event.event_type_value if record.dagster_event else ""
                    if (record.step_key or "").startswith("infer") or not record.step_key:
                        lines.append(f"{record.timestamp:.3f} job {job_id[:8]} run {run.run_id[:8]} "
                                     f"{record.step_key} {event} {record.user_message[:160]}")
    return "\n".join(sorted(lines))


def account_in(database_url: str, name: str = "e2e-member", role: str = "member") -> AccountKey:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        account_id = create_account(conn, name, role)
        key = issue_api_key(conn, account_id)
    engine.dispose()
    return AccountKey(account_id, name, key)


def read_stream(ws, stop, *, what: str, timeout: float = JOB_DEADLINE_S) -> list[dict]:
    """Messages (heartbeats aside) from a websockets client until `stop(message)` is true. A closed
    socket fails at once (ConnectionClosed); the deadline fails naming `what`."""
    deadline = time.monotonic() + timeout
    received = []
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            message = json.loads(ws.recv(timeout=remaining))
        except TimeoutError:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}") from None
        if message.get("type") == "heartbeat":
            continue
        received.append(message)
        if stop(message):
            return received


def _dump_logs(stack) -> str:
    return "\n".join(f"--- {p.name}\n{p.log_tail(25)}" for p in stack["processes"])


def test_job_goes_queued_running_succeeded_over_the_websocket(stack):
    account = account_in(stack["database_url"])
    with ws_connect(f"{stack['ws']}/stream", additional_headers=account.headers, open_timeout=10) as ws:
        # The client offers per-message deflate; the API declines it (compressing every event once per
        # client costs more CPU than the small frames save: bench/p2_stream_latency.py).
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        response = httpx.post(
            f"{stack['api']}/jobs", json={"name": "e2e", "zoom": 14, "area": GENEVA},
            headers={**account.headers, "X-Request-ID": "e2e-correlation"},
        )
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]

        def ended(message) -> bool:
            return (message.get("job_id") == job_id and message["type"] == "job.state"
                    and message["payload"]["state"] in TERMINAL_JOB_STATES)

        try:
            messages = [m for m in read_stream(ws, ended, what="the job to end") if m.get("job_id") == job_id]
        except Exception as exc:
            pytest.fail(f"{exc!r}\n{_dump_logs(stack)}")
        states = [m["payload"]["state"] for m in messages if m["type"] == "job.state"]
        event_ids = [m["id"] for m in messages]
        progress = [m["payload"]["tiles_done"] for m in messages if m["type"] == "job.progress"]

    assert states == ["queued", "running", "succeeded"], _dump_logs(stack)
    assert event_ids == sorted(event_ids)
    assert progress and progress == sorted(progress), "progress arrives live and only goes up"

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
        run = conn.execute(text("SELECT state, finished_at, metrics FROM runs WHERE job_id = :id"),
                           {"id": job_id}).one()
        results = conn.execute(
            text("SELECT count(*) AS n, count(DISTINCT (z, x, y)) AS distinct_tiles, "
                 "bool_and(model_version LIKE 'landcover-cnn@%') AS versioned, "
                 "bool_and(confidence BETWEEN 0 AND 1) AS confident, count(DISTINCT class) AS classes "
                 "FROM tile_results WHERE job_id = :id"),
            {"id": job_id},
        ).one()
    engine.dispose()
    assert tiles.n == job["tiles_total"] > 0
    assert tiles.valid and tiles.wgs84 and tiles.on_area
    assert run.state == "succeeded" and run.finished_at is not None
    assert results.n == results.distinct_tiles == tiles.n, "one result per planned tile, no duplicates"
    assert results.versioned and results.confident and results.classes >= 2
    assert run.metrics["tiles"] == tiles.n and run.metrics["gpu_seconds"] > 0
    assert job["tiles_done"] == tiles.n and job["progress"] == 1.0
    assert progress[-1] == tiles.n

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


def test_prometheus_scrapes_the_stack_job_states_and_dcgm_named_device_telemetry(stack):
    """The stack's Prometheus scrapes the API (with the metrics token), the GPU agent, the usage service
    and the dispatcher: after a job, its query API has the job counts by state, the dispatcher's launches
    and queue waits, and each device's telemetry under DCGM exporter's names and labels, simulated
    devices labelled so."""
    prometheus = stack["prometheus"]

    def query(promql: str) -> list[dict]:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    wait_for(lambda: {r["metric"]["job"]: r["value"][1] for r in query("up")} == {
        "prometheus": "1", "api": "1", "gpu-agent": "1", "usage": "1", "dispatcher": "1"}, timeout=60,
        what="every target scraped and up")
    # A job of its own, launched by the dispatcher now that Dagit is up (the stack's first job may have
    # been launched by the dispatch sensor while Dagit was still starting).
    account = account_in(stack["database_url"], "e2e-metrics")
    job = _wait_terminal(stack, account, _submit(stack, account, area=GENEVA, zoom=14))
    assert job["state"] == "succeeded"
    wait_for(lambda: query('constellation_jobs{state="succeeded"} >= 1'), timeout=60,
             what="a succeeded job counted in Prometheus")
    for event in ("submitted", "started", "succeeded"):
        assert query(f'constellation_job_lifecycle_total{{event="{event}", mode="parallel"}} >= 1'), event
    tiles = wait_for(lambda: query("constellation_device_tiles_total > 0"), timeout=30, what="devices' tiles")
    assert {series["metric"]["device"] for series in tiles} <= {d.uuid for d in SIMULATED}
    wait_for(lambda: query("constellation_export_age_seconds < 600"), timeout=120,
             what="the Parquet export's age (the export follows each run)")
    utilization = wait_for(lambda: len(found := query("DCGM_FI_DEV_GPU_UTIL")) == len(SIMULATED) and found,
                           timeout=60, what="every device's utilization in Prometheus")
    for series in utilization:
        labels = series["metric"]
        assert {"gpu", "UUID", "modelName", "Hostname"} <= set(labels), labels
        assert labels["simulated"] == "true"
    assert query("DCGM_FI_DEV_FB_USED"), "the devices' memory in use"
    wait_for(lambda: query('constellation_run_launches_total{outcome="launched"} >= 1'), timeout=30,
             what="the dispatcher's launches in Prometheus")
    assert query("constellation_job_queue_wait_seconds_count >= 1"), "queue waits, by mode"
    pools = query("constellation_pool_slots > 0")
    assert sorted(series["metric"]["device"] for series in pools) == sorted(d.uuid for d in SIMULATED)
    assert len(query("constellation_pool_slots_in_use >= 0")) == len(SIMULATED)


def test_device_and_fleet_history_come_from_prometheus_so_a_new_api_process_has_it(stack):
    """The GPUs page's telemetry and the Overview's fleet history are read from Prometheus through the
    API: an API process started after the job (as after a restart: it never saw a sample) answers
    the device samples and the job's throughput from before it started."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    account = account_in(stack["database_url"], "e2e-history")
    assert _wait_terminal(stack, account, _submit(stack, account, area=GENEVA, zoom=14))["state"] == "succeeded"
    wait_for(lambda: httpx.get(f"{stack['prometheus']}/api/v1/query", timeout=10, params={
        "query": "increase(constellation_device_tiles_total[2m]) > 0"}).json()["data"]["result"],
        timeout=60, what="the job's tiles scraped")
    started = time.time()
    settings = Settings(database_url=stack["database_url"], nats_url=stack["nats"], prometheus_url=stack["prometheus"])
    with TestClient(create_app(settings)) as fresh:
        history = fresh.get("/fleet/history", params={"seconds": 900}, headers=account.headers)
        assert history.status_code == 200, history.text
        found = history.json()
        assert found["step_s"] == 5
        series = {s["name"]: s["points"] for s in found["series"]}
        assert set(series) == {"queued", "running", "tiles_per_s", "pool_saturation"}
        assert max(v for _, v in series["tiles_per_s"]) > 0, series["tiles_per_s"]
        assert all(t < started for t, _ in series["tiles_per_s"][:2]) and len(series["queued"]) >= 2
        device = SIMULATED[0].uuid
        samples = fresh.get(f"/gpus/{device}/telemetry", params={"seconds": 600}, headers=account.headers).json()
        assert len(samples) >= 2 and samples[0]["device_uuid"] == device and samples[0]["simulated"] is True
        assert datetime.fromisoformat(samples[0]["ts"]).timestamp() < started
        assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"} <= set(samples[-1]["fields"])


def test_the_dashboards_dev_server_serves_its_pages_and_the_api_and_stream_on_one_origin(stack, tmp_path):
    """`make dev` runs the dashboard from its sources in Next.js's dev server: its pages, and on the same
    origin every other path proxied to the API — a member's key works, and the live stream's WebSocket
    delivers a job submitted through it, as in production."""
    import subprocess

    from constellation_core.waiting import free_port

    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    log = (tmp_path / "next-dev.log").open("w")
    server = subprocess.Popen(
        [str(REPO_ROOT / "web" / "node_modules" / ".bin" / "next"), "dev", str(REPO_ROOT / "web"),
         "--port", str(port), "--hostname", "127.0.0.1"],
        env={**os.environ, "CONSTELLATION_API_URL": stack["api"], "NEXT_TELEMETRY_DISABLED": "1"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def page() -> httpx.Response | None:  # the first request compiles the page
            try:
                answer = httpx.get(f"{origin}/app/jobs/", timeout=120)
            except httpx.HTTPError:
                return None
            return answer if answer.status_code == 200 else None

        jobs_page = wait_for(page, timeout=240, what="the dev server's Jobs page", interval=1)
        assert "/app/_next/" in jobs_page.text
        account = account_in(stack["database_url"], "e2e-dev-server")
        listed = httpx.get(f"{origin}/jobs", headers=account.headers, timeout=30)
        assert listed.status_code == 200 and listed.json()["data"] == [], listed.text
        assert httpx.get(f"{origin}/jobs", timeout=30).status_code == 401
        with ws_connect(f"ws://127.0.0.1:{port}/stream", additional_headers=account.headers, open_timeout=30) as ws:
            submitted = httpx.post(f"{origin}/jobs", json={"name": "through the dev server", "zoom": 14, "area": GENEVA},
                                   headers=account.headers, timeout=30)
            assert submitted.status_code == 201, submitted.text
            job_id = submitted.json()["id"]
            read_stream(ws, lambda m: m.get("job_id") == job_id and m["type"] == "job.state", timeout=60,
                        what="the job's first state through the dev server's proxy")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()


# A GPU sensor simulated devices do not have: its panel rightly shows no series here.
ABSENT_ON_SIMULATED_DEVICES = ("DCGM_FI_DEV_POWER_USAGE",)


def test_every_dashboard_panel_query_answers_from_the_live_prometheus(stack):
    """Every panel of the Grafana dashboards (infra/grafana/dashboards/*.json) asks the stack's
    Prometheus after a job: no query errors, and each returns series, except a GPU sensor simulated
    devices lack."""
    prometheus = stack["prometheus"]
    account = account_in(stack["database_url"], "e2e-dashboards")
    assert _wait_terminal(stack, account, _submit(stack, account, area=GENEVA, zoom=14))["state"] == "succeeded"

    def query(promql: str) -> dict:
        return httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()

    # Scraped after the job (its counters moved) and after its export.
    wait_for(lambda: query("constellation_export_age_seconds")["data"]["result"], timeout=120,
             what="the export's age in Prometheus")
    wait_for(lambda: query('increase(constellation_job_lifecycle_total{event="succeeded"}[5m]) > 0')["data"]["result"],
             timeout=60, what="the job's success scraped")
    boards = sorted((REPO_ROOT / "infra" / "grafana" / "dashboards").glob("*.json"))
    assert len(boards) == 3
    checked, empty = 0, []
    for board in boards:
        for panel in json.loads(board.read_text())["panels"]:
            for target in panel["targets"]:
                answer = query(target["expr"])
                assert answer["status"] == "success", (board.name, panel["title"], target["expr"], answer)
                checked += 1
                if not answer["data"]["result"] and not target["expr"].startswith(ABSENT_ON_SIMULATED_DEVICES):
                    empty.append((board.name, panel["title"], target["expr"]))
    assert not empty, f"panels with no series: {empty}"
    assert checked >= 20


def test_a_job_is_one_trace_from_its_submit_request_to_every_batch_on_every_device(stack):
    """With tracing on (as in `make demo`: every process sends its spans to the stack's Jaeger), a job's
    spans from the API, Postgres queries, NATS publishes, the dispatcher, the Dagster run worker and its
    ops, the device workers, the API's fan-out of each event to a watching client and the sensor that
    ends it form one tree under the submit request, read back through GET /jobs/{id}/trace; another
    member cannot read it."""
    account = account_in(stack["database_url"], "e2e-trace")
    with ws_connect(f"{stack['ws']}/stream", additional_headers=account.headers, open_timeout=10) as ws:
        job_id = _submit(stack, account, area=GENEVA, zoom=15, batch_size=8, mode="parallel")
        read_stream(ws, lambda m: m.get("job_id") == job_id and m["type"] == "job.state"
                    and m["payload"]["state"] in TERMINAL_JOB_STATES, what="the job to end")
    assert _job(stack, account, job_id)["state"] == "succeeded"
    engine = create_engine(stack["database_url"])
    with engine.connect() as conn:
        batches = dict(conn.execute(text("SELECT chunk_no, device_uuid FROM tile_chunks WHERE job_id = :id"),
                                    {"id": job_id}).all())
    engine.dispose()

    def complete_trace() -> dict | None:  # spans reach Jaeger within seconds of their end
        response = httpx.get(f"{stack['api']}/jobs/{job_id}/trace", headers=account.headers, timeout=10)
        if response.status_code != 200:
            return None
        found = response.json()
        names = [span["name"] for span in found["spans"]]
        # Every state and log line published reaches the watching client through the API's hub: one
        # fan-out span each (progress events are not traced one by one).
        published = [s for s in found["spans"] if s["name"] == "publish constellation"
                     and s["attributes"].get("constellation.event.type") in ("job.state", "job.log")]
        if ("end job" in names and names.count("infer batch") >= len(batches)
                and names.count("process constellation") == len(published)):
            return found
        return None

    found = wait_for(complete_trace, timeout=60, what=f"job {job_id}'s trace in Jaeger", interval=1)
    spans = {span["span_id"]: span for span in found["spans"]}
    print("\n".join(f"{s['start_ms']:9.1f} {s['duration_ms']:8.1f} ms  {s['service']:<30} {s['name']}"
                    for s in found["spans"]))  # the tree, for a failure's report (-s shows it)
    roots = [span for span in spans.values() if span["parent_id"] not in spans]
    assert [(r["service"], r["name"]) for r in roots] == [("constellation-api", "POST /jobs")], roots

    def named(name: str, service: str | None = None) -> list[dict]:
        return [s for s in spans.values() if s["name"] == name and (service is None or s["service"] == service)]

    def ancestors(span: dict) -> list[str]:
        chain = []
        while span["parent_id"] in spans:
            span = spans[span["parent_id"]]
            chain.append(span["name"])
        return chain

    submit_queries = [s for s in spans.values() if s["service"] == "constellation-api"
                      and s["attributes"].get("db.system") == "postgresql"]
    assert submit_queries, "the submit request's Postgres queries"
    published = [s for s in spans.values() if s["attributes"].get("messaging.system") == "nats"]
    assert {s["service"] for s in published} >= {"constellation-api", "constellation-run-worker",
                                                   "constellation-device-worker"}
    assert len(named("queue wait")) == 1
    fanned_out = named("process constellation", "constellation-api")
    assert fanned_out and all(spans[s["parent_id"]]["name"] == "publish constellation" for s in fanned_out)
    assert all(s["attributes"]["constellation.event.lag_ms"] >= 0 for s in fanned_out)
    (dispatch,) = named("dispatch")  # by the dispatcher, or the reconciler if Dagit was not up yet
    (run,) = named("run tile_inference", "constellation-run-worker")
    assert "dispatch" in ancestors(run) and run["attributes"]["constellation.job.id"] == job_id
    for op in ("plan tiles", "infer", *(f"admit on {d.label}" for d in SIMULATED)):
        (span,) = named(op, "constellation-run-worker")
        assert ancestors(span)[0] == "run tile_inference", (op, ancestors(span))
    batch_spans = named("infer batch", "constellation-device-worker")
    assert sorted((s["attributes"]["constellation.batch"], s["attributes"]["constellation.device.uuid"])
                  for s in batch_spans) == sorted(batches.items()), "one span per batch, on its device"
    assert all(s["attributes"]["constellation.tiles"] > 0 and s["duration_ms"] > 0 for s in batch_spans)
    labels = {d.uuid: d.label for d in SIMULATED}
    assert all(spans[s["parent_id"]]["name"] == f"admit on {labels[s['attributes']['constellation.device.uuid']]}"
               for s in batch_spans), "each batch is a child of its job's admission to its device"
    assert len(named("commit batch", "constellation-device-worker")) == len(batches)
    logs = httpx.get(f"{stack['api']}/events", params={"job_id": job_id, "limit": 500}, headers=account.headers).json()
    (planned,) = [e for e in logs["data"] if e["type"] == "job.log" and e["payload"]["message"].startswith("planned")]
    assert planned["payload"]["span_id"] == named("plan tiles")[0]["span_id"], "a log line names the span it came from"
    (end,) = named("end job", "constellation-run-worker")  # as its run ended, not at a sensor's tick
    assert end["attributes"]["constellation.job.state"] == "succeeded"
    assert not [s for s in spans.values() if s["error"]], "no failed span in a job that went well"
    assert dispatch["start_ms"] < run["start_ms"] < end["start_ms"]

    stranger = account_in(stack["database_url"], "e2e-trace-stranger")
    assert httpx.get(f"{stack['api']}/jobs/{job_id}/trace", headers=stranger.headers).status_code == 404


def test_five_jobs_on_two_devices_never_oversubscribe_a_device(stack):
    account = account_in(stack["database_url"], "e2e-five")
    submitted = {}
    for i, mode in enumerate(["parallel", "serial", "parallel", "serial", "parallel"]):
        response = httpx.post(
            f"{stack['api']}/jobs",
            json={"name": f"five-{i}", "zoom": 15, "area": GENEVA, "mode": mode, "batch_size": 8},
            headers=account.headers,
        )
        assert response.status_code == 201, response.text
        submitted[response.json()["id"]] = mode

    def all_finished():
        states = {
            job_id: httpx.get(f"{stack['api']}/jobs/{job_id}", headers=account.headers).json()["state"]
            for job_id in submitted
        }
        return states if all(s in TERMINAL_JOB_STATES for s in states.values()) else None

    try:
        states = wait_for(all_finished, timeout=JOB_DEADLINE_S * 2, what="five jobs to finish", interval=0.5)
    except Exception:
        pytest.fail(_dump_logs(stack))
    assert set(states.values()) == {"succeeded"}, (states, _dump_logs(stack))

    engine = create_engine(stack["database_url"])
    with engine.connect() as conn:
        step_rows = conn.execute(
            text("SELECT s.job_id::text AS job_id, g.uuid AS device, g.simulated, s.finished_at "
                 "FROM steps s JOIN gpus g ON g.id = s.gpu_id WHERE s.job_id = ANY(:ids)"),
            {"ids": list(submitted)},
        ).all()
        batches = conn.execute(
            text("SELECT job_id::text AS job_id, chunk_no, device_uuid AS device, started_at, finished_at "
                 "FROM tile_chunks WHERE job_id = ANY(:ids) ORDER BY started_at"),
            {"ids": list(submitted)},
        ).all()
        duplicates = conn.execute(
            text("SELECT count(*) - count(DISTINCT (job_id, z, x, y)) FROM tile_results WHERE job_id = ANY(:ids)"),
            {"ids": list(submitted)},
        ).scalar_one()
    engine.dispose()

    # No device ever ran two batches at once (its worker runs one at a time, whatever its pool holds).
    assert all(r.simulated and r.finished_at is not None for r in step_rows)
    by_device: dict[str, list] = {}
    for batch in batches:
        assert batch.finished_at is not None, batch
        by_device.setdefault(batch.device, []).append(batch)
    assert set(by_device) == {d.uuid for d in SIMULATED}
    for device, intervals in by_device.items():
        for earlier, later in zip(intervals, intervals[1:]):
            assert later.started_at >= earlier.finished_at, (
                f"{device} ran two batches at once: {earlier} / {later}\n"
                f"{_step_timeline(stack, [earlier.job_id, later.job_id])}\n{_dump_logs(stack)}")

    # A parallel job is admitted to every device, a serial job to one; batches run only where admitted.
    admitted = {job_id: {r.device for r in step_rows if r.job_id == job_id} for job_id in submitted}
    for job_id, mode in submitted.items():
        assert len(admitted[job_id]) == (len(SIMULATED) if mode == "parallel" else 1), (mode, admitted[job_id])
        assert {b.device for b in batches if b.job_id == job_id} <= admitted[job_id]
    assert duplicates == 0


BIG_JOB = {"zoom": 17, "area": GENEVA, "batch_size": 8}


def _submit(stack, account, **body) -> str:
    response = httpx.post(f"{stack['api']}/jobs", json={"name": "e2e", **BIG_JOB, **body}, headers=account.headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _job(stack, account, job_id) -> dict:
    return httpx.get(f"{stack['api']}/jobs/{job_id}", headers=account.headers).json()


def _wait_terminal(stack, account, job_id, timeout=JOB_DEADLINE_S * 2) -> dict:
    def terminal():
        job = _job(stack, account, job_id)
        return job if job["state"] in TERMINAL_JOB_STATES else None

    try:
        return wait_for(terminal, timeout=timeout, what=f"job {job_id} to end", interval=0.5)
    except Exception:
        pytest.fail(_dump_logs(stack))


def _busy_step(engine, job_id):
    """An open step of a job that has already stored some results: its device and its worker's pid."""
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT (g.spec->>'worker_pid')::int AS pid, g.uuid AS device FROM steps s "
                 "JOIN gpus g ON g.id = s.gpu_id "
                 "JOIN jobs j ON j.id = s.job_id "
                 "WHERE s.job_id = :id AND s.finished_at IS NULL AND j.tiles_done > 0 LIMIT 1"),
            {"id": job_id},
        ).first()


def _result_counts(engine, job_id):
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT (SELECT count(*) FROM tiles WHERE job_id = :id) AS planned, count(*) AS results, "
                 "count(DISTINCT (z, x, y)) AS distinct_tiles FROM tile_results WHERE job_id = :id"),
            {"id": job_id},
        ).one()


def test_sigkill_of_a_device_worker_loses_and_duplicates_no_tile(stack):
    """The worker dies with batches in hand: they roll back and run again (on the other device, or on
    the worker Ray starts again); the job succeeds with every tile once."""
    account = account_in(stack["database_url"], "e2e-kill-step")
    engine = create_engine(stack["database_url"])
    job_id = _submit(stack, account, mode="parallel")
    step = wait_for(lambda: _busy_step(engine, job_id), timeout=JOB_DEADLINE_S, what="a busy step", interval=0.05)
    os.kill(step.pid, signal.SIGKILL)

    job = _wait_terminal(stack, account, job_id)
    counts = _result_counts(engine, job_id)
    engine.dispose()
    assert job["state"] == "succeeded", _dump_logs(stack)
    assert counts.results == counts.distinct_tiles == counts.planned == job["tiles_total"]


def test_sigkill_of_a_device_compute_process_loses_and_duplicates_no_tile(stack):
    """The model's process dies under its worker: the batch it had is pending again, the worker starts
    a new compute process and goes on (the worker itself stays); the job succeeds with every tile once."""
    account = account_in(stack["database_url"], "e2e-kill-compute")
    engine = create_engine(stack["database_url"])
    job_id = _submit(stack, account, mode="parallel")
    device, before = wait_for(lambda: _computing_device(engine, job_id), timeout=JOB_DEADLINE_S,
                              what="a device computing the job's batches", interval=0.05)
    os.kill(before["compute_pid"], signal.SIGKILL)

    job = _wait_terminal(stack, account, job_id)
    counts = _result_counts(engine, job_id)
    after = wait_for(lambda: (s := _device_spec(engine, device))["compute_pid"] != before["compute_pid"] and s,
                     timeout=30, what="the device's new compute process", interval=0.2)
    engine.dispose()
    assert job["state"] == "succeeded", _dump_logs(stack)
    assert counts.results == counts.distinct_tiles == counts.planned == job["tiles_total"]
    assert after["worker_pid"] == before["worker_pid"], "the device worker lives on"
    assert os.path.exists(f"/proc/{after['compute_pid']}")


def _device_spec(engine, device_uuid) -> dict:
    with engine.connect() as conn:
        return conn.execute(text("SELECT spec FROM gpus WHERE uuid = :uuid"), {"uuid": device_uuid}).scalar_one()


def _computing_device(engine, job_id) -> tuple[str, dict] | None:
    """A device that has run batches of the job, and its spec, while the job still has pending ones."""
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT g.uuid, g.spec FROM gpus g WHERE g.gone_at IS NULL AND EXISTS "
                 "(SELECT 1 FROM tile_chunks c WHERE c.job_id = :id AND c.device_uuid = g.uuid) AND EXISTS "
                 "(SELECT 1 FROM tile_chunks c WHERE c.job_id = :id AND c.state = 'pending') LIMIT 1"),
            {"id": job_id},
        ).first()
    if row is None or not os.path.exists(f"/proc/{row.spec['compute_pid']}"):
        return None
    return row.uuid, row.spec


def test_killing_the_run_worker_ends_the_job_and_frees_the_device(stack):
    account = account_in(stack["database_url"], "e2e-kill-worker")
    engine = create_engine(stack["database_url"])
    job_id = _submit(stack, account, mode="serial")  # in-process: the op follows the job in the run worker
    wait_for(lambda: _busy_step(engine, job_id), timeout=JOB_DEADLINE_S, what="a busy step", interval=0.05)
    run_id = _job(stack, account, job_id)["dagster_run_id"]
    with DagsterInstance.from_config(stack["dagster_home"]) as instance:
        worker_pid = int(instance.get_run_by_id(run_id).tags["constellation/run_worker"].split(":")[0])
    os.kill(worker_pid, signal.SIGKILL)

    job = _wait_terminal(stack, account, job_id)
    counts = _result_counts(engine, job_id)

    def device_free() -> bool:  # the dead worker's step does not leave the device "busy" for ever
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) = 0 FROM steps WHERE job_id = :id AND finished_at IS NULL"),
                                {"id": job_id}).scalar_one()

    wait_for(device_free, timeout=60, what="the killed worker's step to be closed", interval=0.5)
    engine.dispose()
    assert job["state"] in ("succeeded", "failed"), job
    if job["state"] == "succeeded":  # a run retry finished it: still nothing lost or doubled
        assert counts.results == counts.distinct_tiles == counts.planned
    with DagsterInstance.from_config(stack["dagster_home"]) as instance:
        # Pools are counted per run (`granularity: run`): the device's slot is free once the dead
        # run is no longer in progress (run monitoring fails it).
        def run_ended():
            return instance.get_run_by_id(run_id).status.value in ("FAILURE", "CANCELED", "SUCCESS")

        wait_for(run_ended, timeout=60, what="the dead run to end and free its pool slot", interval=0.5)


def test_cancel_a_running_job_frees_its_devices(stack):
    account = account_in(stack["database_url"], "e2e-cancel")
    engine = create_engine(stack["database_url"])
    # Hundreds of small batches: even a fast GPU is still busy when the cancel comes.
    job_id = _submit(stack, account, mode="parallel", zoom=18, batch_size=8)
    wait_for(lambda: _busy_step(engine, job_id), timeout=JOB_DEADLINE_S, what="a busy step", interval=0.05)
    canceled = httpx.post(f"{stack['api']}/jobs/{job_id}/cancel", headers=account.headers)
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    done_at_cancel = canceled.json()["tiles_done"]

    def run_status() -> str | None:
        from dagster import RunsFilter

        with DagsterInstance.from_config(stack["dagster_home"]) as instance:
            records = instance.get_run_records(RunsFilter(tags={"constellation/job_id": job_id}), limit=1)
        return records[0].dagster_run.status.value if records else None

    def steps_done():
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT count(*) = 0 FROM steps WHERE job_id = :id AND finished_at IS NULL"), {"id": job_id}
            ).scalar_one()

    wait_for(steps_done, timeout=30, what="the canceled job's steps to stop", interval=0.2)
    counts = _result_counts(engine, job_id)
    engine.dispose()
    # Each device commits at most the batch it was committing: a batch of a canceled job is not stored.
    assert counts.results <= done_at_cancel + 8 * len(SIMULATED), (done_at_cancel, counts)
    assert _job(stack, account, job_id)["state"] == "canceled"
    # Its run ends: terminated by the dispatcher (CANCELED), or first done following the job (SUCCESS).
    wait_for(lambda: run_status() in ("CANCELED", "SUCCESS"), timeout=60, what="the Dagster run to end",
             interval=0.5)

    next_job = _submit(stack, account, mode="serial", zoom=14)
    assert _wait_terminal(stack, account, next_job)["state"] == "succeeded"


def test_inference_runs_are_exported_to_parquet_and_duckdb_automatically(stack):
    """What a user sees: a finished job's results turn up in the day's GeoParquet and in the DuckDB
    views without anyone asking (the export sensors, or their backstop)."""
    from datetime import UTC, datetime

    from constellation_core.analytics_db import connect

    account = account_in(stack["database_url"], "e2e-export")
    job_id = _submit(stack, account, mode="serial", zoom=14)
    job = _wait_terminal(stack, account, job_id)
    assert job["state"] == "succeeded"
    duckdb_path = stack["local_dir"] / "analytics" / "constellation.duckdb"

    def exported_tiles() -> int:
        with connect(duckdb_path, read_only=True) as conn:  # fails while Dagster writes it: "not yet"
            return conn.execute("SELECT count(*) FROM tile_results WHERE job_id = ?", [job_id]).fetchone()[0]

    try:
        wait_for(lambda: exported_tiles() == job["tiles_total"], timeout=120,
                 what="the job's tiles in the exported Parquet, through the DuckDB views", interval=1)
    except Exception as exc:
        with DagsterInstance.from_config(stack["dagster_home"]) as instance:
            runs = [(r.dagster_run.job_name, r.dagster_run.status.value, r.create_timestamp.isoformat())
                    for r in instance.get_run_records(limit=30)]
        pytest.fail(f"{exc!r}\nlatest Dagster runs: {runs}\n{_dump_logs(stack)}")
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert (stack["local_dir"] / "analytics" / "tile_results" / f"day={today}" / "part-0.parquet").exists()


def test_a_stream_client_that_reconnects_gets_every_event_exactly_once_in_order(stack):
    account = account_in(stack["database_url"], "e2e-reconnect")
    job_id = _submit(stack, account, mode="serial", batch_size=8)  # many progress events
    # First connection: from the beginning of the job, until some progress, then drop it mid-job.
    with ws_connect(f"{stack['ws']}/stream?job_id={job_id}&after=0", additional_headers=account.headers,
                    open_timeout=10) as ws:
        received = read_stream(ws, lambda m: m["type"] == "job.progress" and m["payload"]["tiles_done"] >= 16,
                               what="16 tiles of progress")
    last_seen = received[-1]["id"]
    # Events keep coming while no client is connected.
    wait_for(lambda: _job(stack, account, job_id)["tiles_done"] > received[-1]["payload"]["tiles_done"] + 8,
             timeout=JOB_DEADLINE_S, what="progress while disconnected", interval=0.1)
    with ws_connect(f"{stack['ws']}/stream?job_id={job_id}&after={last_seen}", additional_headers=account.headers,
                    open_timeout=10) as ws:
        received += read_stream(ws, lambda m: m["type"] == "job.state" and m["payload"]["state"] in TERMINAL_JOB_STATES,
                                what="the job's final state after resuming")

    ids = [m["id"] for m in received]
    history = httpx.get(f"{stack['api']}/events", params={"job_id": job_id, "limit": 500}, headers=account.headers).json()
    assert ids == [e["id"] for e in history["data"]], "every event of the job, once each, in order"
    assert received[-1]["payload"]["state"] == "succeeded"

    # The SSE log stream resumes the same way: from Last-Event-ID on, then it ends with the final state.
    def sse_ids(last_event_id: int) -> list[int]:
        with httpx.stream("GET", f"{stack['api']}/jobs/{job_id}/logs", headers={**account.headers,
                          "Last-Event-ID": str(last_event_id)}, timeout=30) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            return [int(line[4:]) for line in response.iter_lines() if line.startswith("id: ")]

    log_ids = [e["id"] for e in history["data"] if e["type"] in ("job.log", "job.state")]
    assert sse_ids(0) == log_ids
    assert sse_ids(log_ids[1]) == log_ids[2:]


def test_the_cli_submits_a_geojson_file_and_watches_it_finish(stack, tmp_path):
    import subprocess

    account = account_in(stack["database_url"], "e2e-cli")
    area = tmp_path / "geneva.geojson"
    area.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "Geneva"}, "geometry": GENEVA}]}))
    env = {**os.environ, "CONSTELLATION_API_URL": stack["api"], "CONSTELLATION_API_KEY": account.key, "COLUMNS": "200"}
    done = subprocess.run([str(BIN / "constellation"), "submit", str(area), "--zoom", "14", "--mode", "serial",
                           "--watch"], env=env, capture_output=True, text=True, timeout=JOB_DEADLINE_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted" in done.stdout and "succeeded" in done.stdout
    job_id = done.stdout.split("submitted ")[1].split()[0]
    assert _job(stack, account, job_id)["state"] == "succeeded"
    listed = subprocess.run([str(BIN / "constellation"), "ls"], env=env, capture_output=True, text=True, timeout=60)
    assert job_id in listed.stdout
    bad = area.with_name("bad.geojson")
    bad.write_text(json.dumps({"type": "Point", "coordinates": [6.1, 46.2]}))
    refused = subprocess.run([str(BIN / "constellation"), "submit", str(bad)], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 1 and "Polygon" in refused.stderr


def test_the_dashboard_submits_a_job_from_an_uploaded_file_and_shows_it_finish(stack, tmp_path):
    """In Debian's chromium via playwright-core (web/e2e/smoke.mjs): sign in; watch a long job run
    with a moving progress bar and cancel it from Jobs; upload a GeoJSON area on Submit (tile count
    estimated), see the job reach `succeeded` on Jobs and its page, its footprints drawn on the tile
    map and a clicked tile's result, its trace drawn as a waterfall from the browser's submit to each
    batch; the GPU charts receive points; Overview, Coverage (map), Usage
    (usage_go) and Analytics render; a bad area's reason shows next to the field. Screenshots of
    every page: web/e2e/screenshots/."""
    import subprocess


    assert (REPO_ROOT / "web" / "out" / "index.html").exists(), "build the dashboard first: make web"
    shutil.rmtree(REPO_ROOT / "web" / "e2e" / "screenshots", ignore_errors=True)  # only this run's
    account = account_in(stack["database_url"], "e2e-browser")
    area = tmp_path / "geneva.geojson"
    area.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": GENEVA}))
    # A long job (thousands of tiles on one device) for the browser to watch run and cancel.
    long_job = _submit(stack, account, zoom=18, mode="serial", batch_size=16, priority=-1)
    other_long_job = _submit(stack, account, zoom=18, mode="serial", batch_size=16, priority=-2)  # bulk cancel
    done = subprocess.run(
        ["node", "e2e/smoke.mjs", stack["api"], account.key, str(area), "e2e/screenshots",
         f"{long_job},{other_long_job}"],
        cwd=REPO_ROOT / "web", capture_output=True, text=True, timeout=JOB_DEADLINE_S + 60,
    )
    assert done.returncode == 0, done.stdout + done.stderr + _dump_logs(stack)
    assert "submitted from the browser and seen succeeded" in done.stdout
    assert "canceled from the Jobs page" in done.stdout
    assert _job(stack, account, long_job)["state"] == "canceled"
    assert _job(stack, account, other_long_job)["state"] == "canceled"
    shots = {p.name for p in (REPO_ROOT / "web" / "e2e" / "screenshots").glob("*.png")}
    assert {"signin.png", "submit.png", "jobs.png", "job.png", "gpus.png", "submit-error.png",
            "jobs-running.png", "jobs-canceled.png", "overview.png", "coverage.png", "usage.png",
            "analytics.png", "overview-dark.png", "submit-drawn.png", "gpus-timeline.png"} <= shots
    assert "the tile map draws" in done.stdout and "the GPU chart went from" in done.stdout
    assert "its 64 px imagery chip shows" in done.stdout and "the imagery shows under the tiles" in done.stdout
    assert {"job-imagery.png", "job-classes.png"} <= shots
    assert "the Overview draws the fleet's history from Prometheus" in done.stdout
    assert "ok: no page threw or logged an error" in done.stdout
    assert "a click on the job's bar opened its page" in done.stdout
    assert "ok: a drawn area: Estimated" in done.stdout
    assert "the job's trace drawn as a waterfall" in done.stdout and "job-trace.png" in shots
    assert "the planning log line's span link selects its span" in done.stdout


def test_an_admin_revokes_a_key_on_the_admin_page_and_its_live_channel_closes(stack):
    """web/e2e/admin.mjs in chromium: an admin creates an account (first key shown once) on the Admin
    page; a second browser signs in with that key; revoking it closes that browser's live channel, which
    says so and does not retry."""
    import subprocess

    admin = account_in(stack["database_url"], "e2e-admin", role="admin")
    done = subprocess.run(["node", "e2e/admin.mjs", stack["api"], admin.key, "e2e/screenshots"],
                          cwd=REPO_ROOT / "web", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "revoking it closed that key's live channel" in done.stdout


def test_a_run_parked_in_dagsters_queue_past_the_redispatch_window_is_never_launched_twice(stack):
    """Dagster starts at most `max_concurrent_runs` (8) runs; the next waits in its queue. Once it has
    waited past the re-dispatch window, new submissions wake the dispatcher, which claims it again: it
    must find the queued run and launch no second one (both launch paths share one guard)."""
    from dagster import DagsterRunStatus, RunsFilter

    account = account_in(stack["database_url"], "e2e-parked")
    engine = create_engine(stack["database_url"])
    # Zoom 18 (3,551 tiles each): none of the eight may end, freeing Dagster's run limit, before the parked
    # run has been claimed three times (at zoom 17 a faster device worker ended one first in CI).
    blockers = [_submit(stack, account, zoom=18, mode="serial", batch_size=16, priority=-5) for _ in range(8)]
    submitted = list(blockers)

    def runs_of(instance, job_id, statuses=None):
        return instance.get_run_records(RunsFilter(tags={"constellation/job_id": job_id}, statuses=statuses))

    parked = None
    try:
        with DagsterInstance.from_config(stack["dagster_home"]) as instance:
            # Lower priority than the eight: it waits in Dagster's queue while they hold the run limit.
            parked = _submit(stack, account, zoom=14, mode="serial", priority=-10)
            submitted.append(parked)
            wait_for(lambda: runs_of(instance, parked, [DagsterRunStatus.QUEUED]), timeout=60,
                     what="the parked job's run to wait in Dagster's queue", interval=0.2)

            def dispatched_at():
                with engine.connect() as conn:
                    return conn.execute(text("SELECT dispatched_at, now() - dispatched_at > make_interval(secs => :w) "
                                             "FROM jobs WHERE id = :id"),
                                        {"id": parked, "w": REDISPATCH_AFTER_S}).one()

            # Each new job wakes the dispatcher; it claims it and, once the parked job has outlived
            # the window, the parked job again (three times, in case the sensor claimed it first).
            wakers = []
            for _ in range(3):
                wait_for(lambda: dispatched_at()[1], timeout=30,
                         what="the parked job to outlive the re-dispatch window", interval=0.1)
                claimed_before = dispatched_at()[0]
                wakers.append(_submit(stack, account, zoom=14, mode="serial"))
                submitted.append(wakers[-1])
                wait_for(lambda: dispatched_at()[0] > claimed_before, timeout=30,
                         what="the parked job to be claimed again", interval=0.1)
            wait_for(lambda: all(runs_of(instance, j) for j in wakers), timeout=60,
                     what="the waking jobs' runs", interval=0.2)
            assert runs_of(instance, parked, [DagsterRunStatus.QUEUED]), "the parked run still waits"
            runs = runs_of(instance, parked)
            assert len(runs) == 1, (
                f"the parked job got {len(runs)} Dagster runs: "
                f"{[(r.dagster_run.run_id[:8], r.dagster_run.status.value) for r in runs]}")
    finally:
        # The parked job first, while its run surely waits in the queue: canceling the eight first frees
        # the run limit, and Dagster may launch the parked run before its cancel comes (seen in CI).
        for job_id in sorted(submitted, key=lambda job_id: job_id != parked):
            httpx.post(f"{stack['api']}/jobs/{job_id}/cancel", headers=account.headers)
        for job_id in submitted:
            _wait_terminal(stack, account, job_id)
        engine.dispose()
    # Canceling a job whose run waits in Dagster's queue takes the run out of the queue at once: the
    # dispatcher asks Dagit (the reconciling sensor only ticks every 10 s).
    with DagsterInstance.from_config(stack["dagster_home"]) as instance:
        wait_for(lambda: runs_of(instance, parked, [DagsterRunStatus.CANCELED]), timeout=5,
                 what="the parked job's queued run to be canceled", interval=0.1)
        run_id = runs_of(instance, parked)[0].dagster_run.run_id
    dispatcher = next(p for p in stack["processes"] if p.name == "dispatcher")
    assert f'"dagster_run_id": "{run_id}"' in dispatcher.log_path.read_text() and "run terminated" in \
        dispatcher.log_path.read_text()
