"""P1: POST /jobs → `running` and → `succeeded`, as a stream client sees them, and where the time goes.

With `make demo` running: `.local/venv/bin/python bench/dispatch_latency.py --jobs 10 [--mode serial]`.
Jobs are submitted one at a time onto an idle stack, so each figure is pure dispatch latency. The
breakdown comes from Dagster's run record (via Dagit's GraphQL): POST → run created (the dispatch
sensor), run created → run worker started (queue + launch), worker started → `running` (process
start-up, imports, the first step), and POST → the job admitted to its device (the `steps` row the
op opens for the device worker, which then takes the job's first batch).
Before each job the bench waits until no Dagster run is active (the export runs of the last job).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx
from demo_client import demo_api, dev_key, wait_dagster_idle
from sqlalchemy import create_engine, text
from websockets.sync.client import connect

from constellation_core.settings import get_settings

# A small area (a few tiles at zoom 14), so the figures are dispatch, not inference.
AREA = {"type": "Polygon", "coordinates": [[[6.10, 46.18], [6.12, 46.18], [6.12, 46.20], [6.10, 46.20], [6.10, 46.18]]]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--mode", choices=["parallel", "serial"], default="parallel")
    args = parser.parse_args()
    phases: dict[str, list[float]] = {"POST → run created": [], "created → worker started": [],
                                      "worker started → running": []}
    settings = get_settings()
    key = dev_key(settings)
    to_running: list[float] = []
    to_succeeded: list[float] = []
    to_first_batch: list[float] = []
    to_step: list[float] = []
    engine = create_engine(settings.sync_database_url)
    with demo_api(settings) as client:
        for i in range(args.jobs):
            wait_dagster_idle(settings)
            with connect(f"ws://{settings.api_host}:{settings.api_port}/stream",
                         additional_headers={"Authorization": f"Bearer {key}"}) as ws:
                started = time.perf_counter()
                posted_at = time.time()
                job_id = client.post("/jobs", json={"name": f"bench {i}", "zoom": 14, "area": AREA,
                                                    "mode": args.mode}).json()["id"]
                running_at = None
                while True:
                    message = json.loads(ws.recv(timeout=120))
                    if message.get("job_id") != job_id:
                        continue
                    if message["type"] == "job.progress" and len(to_first_batch) < len(to_running):
                        to_first_batch.append(time.perf_counter() - started)
                    if message["type"] != "job.state":
                        continue
                    state = message["payload"]["state"]
                    if state == "running":
                        to_running.append(time.perf_counter() - started)
                        running_at = time.time()
                    elif state in ("succeeded", "failed", "canceled"):
                        to_succeeded.append(time.perf_counter() - started)
                        break
            with engine.connect() as conn:
                step_at = conn.execute(text("SELECT extract(epoch FROM min(started_at)) FROM steps WHERE job_id = :id"),
                                       {"id": job_id}).scalar_one()
            to_step.append(float(step_at) - posted_at)
            run = _run_times(settings.dagit_base_url, client.get(f"/jobs/{job_id}").json()["dagster_run_id"])
            phases["POST → run created"].append(run["creationTime"] - posted_at)
            phases["created → worker started"].append(run["startTime"] - run["creationTime"])
            phases["worker started → running"].append(running_at - run["startTime"])
    print(f"mode {args.mode}, {args.jobs} jobs one at a time")
    engine.dispose()
    rows = (("POST → running", to_running), ("POST → step on device", to_step),
            ("POST → first batch done", to_first_batch),
            ("POST → succeeded", to_succeeded), *phases.items())
    for name, values in rows:
        print(f"{name:<26} p50 {statistics.median(values):5.2f} s   p95 {percentile(values, 0.95):5.2f} s   "
              f"max {max(values):5.2f} s   (n={len(values)})")


def _run_times(dagit: str, run_id: str) -> dict[str, float]:
    query = '{ runOrError(runId: "%s") { ... on Run { creationTime startTime } } }' % run_id
    return httpx.post(f"{dagit}/graphql", json={"query": query}, timeout=10).json()["data"]["runOrError"]


if __name__ == "__main__":
    main()
