"""What the bench scripts share: an HTTP client for the running `make demo` (its dev API key) and the
demo's area of interest."""

from __future__ import annotations

import time

import httpx

from constellation_core.settings import Settings, get_settings
from constellation_core.waiting import wait_for

GENEVA = {"type": "Polygon", "coordinates": [[[6.10, 46.18], [6.19, 46.18], [6.19, 46.23], [6.10, 46.23], [6.10, 46.18]]]}
TERMINAL = ("succeeded", "failed", "canceled")


def dev_key(settings: Settings | None = None) -> str:
    return ((settings or get_settings()).local_dir / "dev-api-key").read_text().strip()


def demo_api(settings: Settings | None = None) -> httpx.Client:
    """A client for the demo's API, authenticated with the dev key."""
    settings = settings or get_settings()
    return httpx.Client(base_url=f"http://{settings.api_host}:{settings.api_port}",
                        headers={"Authorization": f"Bearer {dev_key(settings)}"}, timeout=30)


def wait_finished(client: httpx.Client, job_ids: list[str], *, timeout: float) -> dict[str, str]:
    """Wait until every job has ended; their final states. Each poll asks only until the first job
    still going (states only move forward): a bench that asked for all of them twice a second would
    load the 2-core stack it measures (40 jobs: ~80 requests/s, most of a core in the API)."""
    states: dict[str, str] = {}

    def finished() -> dict[str, str] | None:
        for job_id in job_ids:
            if job_id not in states:
                state = client.get(f"/jobs/{job_id}").json()["state"]
                if state not in TERMINAL:
                    return None
                states[job_id] = state
        return states

    return wait_for(finished, timeout=timeout, what=f"{len(job_ids)} bench jobs to end", interval=0.5)


ACTIVE_RUNS = ("{ runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING]}) "
               "{ ... on Runs { results { runId } } } }")


def wait_dagster_idle(settings: Settings | None = None, timeout: float = 300) -> None:
    """Each inference run triggers export runs; measure only when no Dagster run is active."""
    dagit = (settings or get_settings()).dagit_base_url

    def idle() -> bool:
        data = httpx.post(f"{dagit}/graphql", json={"query": ACTIVE_RUNS}, timeout=10).json()["data"]
        return not data["runsOrError"]["results"]

    wait_for(idle, timeout=timeout, what="Dagster to be idle", interval=0.5)


LATEST_RUN = "{ runsOrError(limit: 1) { ... on Runs { results { creationTime } } } }"


def wait_dagster_quiet(settings: Settings | None = None, quiet_s: float = 30, timeout: float = 600) -> None:
    """No active run, and no run created for `quiet_s` seconds: after a backlog the export sensors keep
    launching catch-up exports for a while, which is not what an idle stack costs."""
    dagit = (settings or get_settings()).dagit_base_url
    wait_dagster_idle(settings, timeout)

    def quiet() -> bool:
        data = httpx.post(f"{dagit}/graphql", json={"query": LATEST_RUN}, timeout=10).json()["data"]
        results = data["runsOrError"]["results"]
        return not results or time.time() - results[0]["creationTime"] >= quiet_s

    wait_for(quiet, timeout=timeout, what=f"no new Dagster run for {quiet_s:.0f} s", interval=1)
    wait_dagster_idle(settings, timeout)
