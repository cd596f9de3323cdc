"""The fast-path dispatcher: launches a Dagster run the moment a job is queued, and terminates it
the moment the job is canceled.

The dispatch sensor only ticks every ~5 s (the sensor daemon's loop); this process listens for
`queued` events on NATS and launches runs through Dagit's GraphQL API (dagster-graphql's client) at
once. The sensor stays as the reconciler: a job this process could not launch (Dagit down, a crash)
is released to it, or picked up by it after the re-dispatch window. Both go through the one launch
guard (`claim_launches`); here each job's row stays locked until its launch is through, so no other
launcher can find the job without its run. Cancels go the same way: this process asks Dagit to
terminate the job's live runs; the `terminate_canceled_runs` sensor reconciles what it missed.
"""

import asyncio
import logging
import time
from datetime import UTC, datetime
from urllib.parse import urlparse
from uuid import UUID

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Engine

from constellation_core import tracing
from constellation_core.bus import connect
from constellation_core.events import SUBJECT_ROOT, Event
from constellation_dagster.inference.dispatch import claim_launches, dispatch_span, release, runs_to_terminate
from constellation_dagster.inference.jobs import DEVICE_TAG, DEVICES, PARALLEL_JOB

log = logging.getLogger(__name__)
LOCATION = "constellation_dagster"
RETRY_S = 1.0  # after a failed launch (Dagit down), the next try

# Exported on 127.0.0.1:`dispatcher_metrics_port` (`constellation-dev dispatcher`), scraped by Prometheus.
LAUNCHES = Counter("constellation_run_launches_total", "Runs the dispatcher asked Dagit for, by outcome", ["outcome"])
LAUNCH_SECONDS = Histogram("constellation_run_launch_duration_seconds", "One launch through Dagit's GraphQL API",
                           buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
QUEUE_WAIT = Histogram("constellation_job_queue_wait_seconds", "A job's submission to its run's launch", ["mode"],
                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
REPOSITORY = "__repository__"
IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


class PoolSaturation:
    """Each device pool's slots, read from Dagster at scrape: its limit, and the runs holding one (a
    run holds a slot of every pool it uses from its start to its end: a parallel run every device's,
    a serial run its device's; runs waiting in Dagster's queue hold none)."""

    def __init__(self, instance: DagsterInstance) -> None:
        self.instance = instance

    def collect(self):
        limit = GaugeMetricFamily("constellation_pool_slots", "A device pool's slots (jobs it holds at once)",
                                  labels=["pool", "device"])
        used = GaugeMetricFamily("constellation_pool_slots_in_use", "A device pool's slots held by runs",
                                 labels=["pool", "device"])
        runs = self.instance.get_runs(RunsFilter(statuses=IN_PROGRESS))
        for device in DEVICES:
            info = self.instance.event_log_storage.get_concurrency_info(device.pool)
            limit.add_metric([device.pool, device.uuid], info.slot_count)
            used.add_metric([device.pool, device.uuid], sum(
                1 for run in runs if run.job_name == PARALLEL_JOB or run.tags.get(DEVICE_TAG) == device.uuid))
        yield limit
        yield used


def graphql_client(dagit_url: str) -> DagsterGraphQLClient:
    url = urlparse(dagit_url)
    return DagsterGraphQLClient(url.hostname, port_number=url.port, use_https=url.scheme == "https", timeout=10)


def dispatch_once(engine: Engine, instance: DagsterInstance, client: DagsterGraphQLClient) -> tuple[int, int]:
    """Launch every due job, one at a time (each in its own transaction, so a job's row lock is held
    only through its own launch); returns how many runs were launched and how many launches failed.
    Jobs whose launch failed are released at the end (due again: for this process's next try, or the
    reconciler sensor's)."""
    launched, failed = 0, []
    while True:
        with engine.begin() as conn:
            claimed, launches = claim_launches(conn, instance, limit=1)
            if not claimed:
                break
            for launch in launches:
                if _launch(client, launch):
                    launched += 1
                else:
                    failed.append(launch.job_id)
    if failed:
        with engine.begin() as conn:
            release(conn, failed)
    return launched, len(failed)


def _launch(client: DagsterGraphQLClient, launch) -> bool:
    """Ask Dagit for the job's run, in a `dispatch` span of the job's trace."""
    with dispatch_span(launch, "dispatcher") as (span, tags):
        launched = _submit(client, launch, tags)
        if not launched:
            span.set_status(StatusCode.ERROR, "Dagit refused the launch (left to the reconciler)")
        return launched


def _submit(client: DagsterGraphQLClient, launch, tags: dict[str, str]) -> bool:
    started = time.monotonic()
    try:
        run_id = client.submit_job_execution(
            launch.job_name, repository_location_name=LOCATION, repository_name=REPOSITORY,
            run_config=launch.run_config, tags=tags,
        )
    except Exception:  # noqa: BLE001 - the reconciler sensor takes the job instead
        LAUNCHES.labels(outcome="failed").inc()
        log.warning("launch failed; leaving the job to the dispatch sensor", exc_info=True,
                    extra={"job_id": str(launch.job_id)})
        return False
    LAUNCHES.labels(outcome="launched").inc()
    LAUNCH_SECONDS.observe(time.monotonic() - started)
    if launch.created_at is not None:
        QUEUE_WAIT.labels(mode=launch.mode).observe(max(0.0, (datetime.now(UTC) - launch.created_at).total_seconds()))
    log.info("run launched", extra={"job_id": str(launch.job_id), "dagster_run_id": run_id,
                                    "dagster_job": launch.job_name})
    return True


def terminate_canceled(instance: DagsterInstance, client: DagsterGraphQLClient, job_ids: list[UUID]) -> int:
    """Ask Dagit to stop the live runs of these canceled jobs (a queued run leaves Dagster's queue, a
    started one gets its cancel); returns how many were asked. A refusal is left to the sensor."""
    asked = 0
    for run_id in runs_to_terminate(instance, job_ids):
        try:
            client.terminate_run(run_id)
            asked += 1
            log.info("run terminated", extra={"dagster_run_id": run_id})
        except (DagsterGraphQLClientError, OSError):
            log.warning("terminate failed; leaving the run to the terminate sensor", exc_info=True,
                        extra={"dagster_run_id": run_id})
    return asked


async def run_dispatcher(engine: Engine, nats_url: str, dagit_url: str) -> None:
    tracing.setup("constellation-dispatcher")
    client = graphql_client(dagit_url)
    instance = DagsterInstance.get()  # $DAGSTER_HOME: the launch guard reads Dagster's runs
    REGISTRY.register(PoolSaturation(instance))
    wake = asyncio.Event()
    wake.set()  # launch whatever is already due
    canceled: set[UUID] = set()

    async def on_state(msg) -> None:
        try:
            event = Event.from_bytes(msg.data)
        except ValueError:
            return
        state = event.payload.get("state")
        if state == "queued":
            wake.set()
        elif state == "canceled" and event.job_id is not None:
            canceled.add(event.job_id)
            wake.set()

    nc = await connect(nats_url, name="constellation-dispatcher")
    await nc.subscribe(f"{SUBJECT_ROOT}.jobs.*.state", cb=on_state)
    try:
        while True:
            await wake.wait()
            wake.clear()
            job_ids = list(canceled)
            canceled.clear()
            try:
                if job_ids:
                    await asyncio.to_thread(terminate_canceled, instance, client, job_ids)
                    job_ids = []
                _, failed = await asyncio.to_thread(dispatch_once, engine, instance, client)
            except Exception:  # noqa: BLE001 - Postgres out of reach (restarting): this process goes on
                # A claim whose COMMIT failed left its job due again, and the launch guard sees a run
                # launched before the failure; a job's cancel not yet passed on is tried again.
                log.warning("dispatching failed; trying again shortly", exc_info=True)
                canceled.update(job_ids)
                failed = True
            if failed:  # Dagit or Postgres unreachable (starting, restarting): try again shortly, the sensor behind us
                asyncio.get_running_loop().call_later(RETRY_S, wake.set)
    finally:
        await nc.drain()
