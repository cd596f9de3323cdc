"""Which queued jobs to launch, and as which Dagster run: the one launch guard.

Both launch paths go through `claim_launches`: the fast-path dispatcher process (launches within
milliseconds of a `queued` event) and the `dispatch_queued_jobs` sensor (the reconciler, which
catches whatever the fast path missed). A job is launched only when it is queued, claimed by no one
else (row lock, `SKIP LOCKED`), not claimed within the re-dispatch window, and has no live Dagster
run (queued, starting, started or canceling): a run that waits in Dagster's queue is never doubled.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import dagster as dg
from opentelemetry.trace import Span, SpanKind
from sqlalchemy import Connection, func, select, update

from constellation_core import tracing
from constellation_core.devices import Device, choose_device, fill_rates
from constellation_core.rates import device_rates
from constellation_core.settings import get_settings
from constellation_core.tables import gpus, jobs
from constellation_dagster.inference.jobs import (
    ACCOUNT_TAG,
    ALL_JOBS,
    CORRELATION_TAG,
    DEVICES,
    JOB_ID_TAG,
    serial_job_name,
    tile_inference,
)
from constellation_dagster.inference.ops import TRACEPARENT_TAG

DISPATCH_BATCH = 100
# The reconciler sensor leaves a job that was never asked for to the dispatcher for this long after its
# submission. The dispatcher asks for jobs one at a time, in priority order, the moment they are
# queued; a sensor that took every job not yet asked for took the lower-priority end of a burst
# (up to DISPATCH_BATCH jobs, created as runs after its tick) while the dispatcher went on with later
# ones, so Dagster's queue (priority, then the order runs were created) started later jobs of the same
# priority first: 11–45 of 160 jobs overtaken in a P9 backlog (2 with this). A dispatcher that is down, or whose
# launch failed (it hands the job back at once), leaves the job to the sensor after this.
RECONCILE_GRACE_S = 30.0
# A Dagster run in one of these may still run its job: while one exists, the job gets no other run.
LIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass(frozen=True)
class Launch:
    job_id: UUID
    job_name: str
    run_config: dict
    tags: dict[str, str]
    mode: str = "parallel"
    created_at: datetime | None = None  # the job's submission (its queue wait ends at the launch)


def claim_launches(
    conn: Connection, instance: dg.DagsterInstance, limit: int = DISPATCH_BATCH, *, grace_s: float = 0.0
) -> tuple[int, list[Launch]]:
    """Claim up to `limit` due jobs and plan a run for each that has no live Dagster run; a job never
    asked for is due once it was submitted `grace_s` ago.

    Returns how many jobs were claimed and the launches. The claimed rows stay locked until `conn`'s
    transaction ends: a caller that launches before it commits cannot race another launcher."""
    rows = _claim_due_jobs(conn, limit, grace_s)
    if not rows:
        return 0, []
    live = jobs_with_live_runs(instance, [row.id for row in rows])
    return len(rows), plan_launches(conn, [row for row in rows if row.id not in live])


def live_runs(instance: dg.DagsterInstance, job_ids: list[UUID]) -> list[dg.DagsterRun]:
    """The Dagster runs of these jobs that may still run (queued in Dagster's queue included)."""
    records = instance.get_run_records(
        dg.RunsFilter(tags={JOB_ID_TAG: [str(job_id) for job_id in job_ids]}, statuses=LIVE_RUN_STATUSES)
    )
    return [record.dagster_run for record in records]


def runs_to_terminate(instance: dg.DagsterInstance, job_ids: list[UUID]) -> list[str]:
    """The live runs of these (canceled) jobs that no one has asked to stop yet."""
    return [run.run_id for run in live_runs(instance, job_ids) if run.status != dg.DagsterRunStatus.CANCELING]


# A failed run Dagster said it would retry, with no retry this long after: the retry is not coming
# (Dagster's retry daemon moves its cursor past a failure it could not handle, e.g. with Postgres down).
# Its retry comes within seconds, or once the daemon is back (~20 s here after a kill); the reconciling
# sensor then runs the job again itself and first tells Dagster not to retry (`sensors.RELAUNCHED_TAG`).
RETRY_GRACE_S = 45
WILL_RETRY_TAG = "dagster/will_retry"  # Dagster's: whether its retry daemon will retry a failed run
RETRY_NUMBER_TAG = "dagster/retry_number"  # Dagster's, on a retry: which one (a run's first attempt has none)


def jobs_with_live_runs(instance: dg.DagsterInstance, job_ids: list[UUID]) -> set[UUID]:
    """The jobs with a run that may still run — or a failed run Dagster is about to retry: a launch
    meanwhile would run the job twice at once (its retry starts moments later)."""
    live = {UUID(run.tags[JOB_ID_TAG]) for run in live_runs(instance, job_ids)}
    others = [str(job_id) for job_id in job_ids if job_id not in live]
    if not others:
        return live
    retrying = instance.get_run_records(dg.RunsFilter(
        tags={JOB_ID_TAG: others, WILL_RETRY_TAG: "true"}, statuses=[dg.DagsterRunStatus.FAILURE],
        updated_after=datetime.now(UTC) - timedelta(seconds=RETRY_GRACE_S)))
    return live | {UUID(record.dagster_run.tags[JOB_ID_TAG]) for record in retrying}


def _claim_due_jobs(conn: Connection, limit: int, grace_s: float = 0.0):
    """Queued jobs not yet asked for (submitted over `grace_s` ago) or asked for over the re-dispatch
    window ago, highest priority first; marks them asked for now."""
    window = timedelta(seconds=get_settings().redispatch_after_s)
    never_asked = jobs.c.dispatched_at.is_(None)
    if grace_s > 0:
        never_asked &= jobs.c.created_at < func.now() - timedelta(seconds=grace_s)
    due = (
        select(jobs.c.id, jobs.c.priority, jobs.c.submitted_by, jobs.c.correlation_id, jobs.c.params,
               jobs.c.created_at, jobs.c.traceparent, jobs.c.tiles_total)
        .where(
            jobs.c.state == "queued",
            jobs.c.dagster_run_id.is_(None),
            never_asked | (jobs.c.dispatched_at < func.now() - window),
        )
        .order_by(jobs.c.priority.desc(), jobs.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = conn.execute(due).all()
    if rows:
        conn.execute(update(jobs).where(jobs.c.id.in_([r.id for r in rows])).values(dispatched_at=func.now()))
    return rows


def release(conn: Connection, job_ids: list[UUID]) -> None:
    """Hand jobs back to the reconciler at once (their launch failed)."""
    conn.execute(update(jobs).where(jobs.c.id.in_(job_ids), jobs.c.state == "queued").values(dispatched_at=None))


def plan_launches(conn: Connection, rows) -> list[Launch]:
    """The run for each claimed job: `tile_inference` for parallel jobs; for serial jobs the job of
    the device where it would finish first: the tiles left to infer, before it, of the launched jobs
    of the same or higher priority bound to it (a device worker takes the highest-priority job's
    batches first; a parallel job counts its share on each device), and its own, at the device's rate
    over the last two minutes (`constellation_core.rates`: a fleet's devices need not be equally fast); then
    NVML utilization and free memory. A device marked gone (its worker or node died) gets no serial job
    while another serves: with no work ahead it would otherwise look the soonest, and the job would wait
    there until its run gave up on the device. The choice is recorded on the job (`jobs.device_uuid`, in
    `conn`'s transaction) and counts for the next one, so serial jobs claimed together spread out by
    their sizes."""
    serial = any(row.params.get("mode") == "serial" for row in rows)
    rates = fill_rates(DEVICES, device_rates(conn)) if serial else {}
    ahead = _work_ahead(conn, rates, excluding=[row.id for row in rows]) if serial else []
    candidates = _serving(conn) if serial else DEVICES
    launches = []
    for row in rows:
        job, device_uuid = tile_inference, None
        if row.params.get("mode") == "serial":
            device = choose_device(candidates, _tiles_before(ahead, row.priority), rates, row.tiles_total or 0)
            device_uuid = device.uuid
            conn.execute(update(jobs).where(jobs.c.id == row.id).values(device_uuid=device_uuid))
            job = next(j for j in ALL_JOBS if j.name == serial_job_name(device))
        ahead.extend(_shares(device_uuid, row.priority, row.tiles_total or 0, rates))
        launches.append(
            Launch(
                job_id=row.id,
                job_name=job.name,
                run_config={"ops": {node.name: {"config": {"job_id": str(row.id)}} for node in job.graph.nodes}},
                tags={
                    JOB_ID_TAG: str(row.id),
                    ACCOUNT_TAG: row.submitted_by,
                    CORRELATION_TAG: row.correlation_id or "",
                    "dagster/priority": str(row.priority),
                    **({TRACEPARENT_TAG: row.traceparent} if getattr(row, "traceparent", None) else {}),
                },
                mode=row.params.get("mode", "parallel"),
                created_at=getattr(row, "created_at", None),
            )
        )
    return launches


def _serving(conn: Connection) -> list[Device]:
    """The devices not marked gone in `gpus`; all of them if every one is (one may come back)."""
    gone = set(conn.execute(select(gpus.c.uuid).where(gpus.c.gone_at.is_not(None))).scalars())
    return [device for device in DEVICES if device.uuid not in gone] or DEVICES


def _tiles_before(ahead: list[tuple[str, int, float]], priority: int) -> dict[str, float]:
    """Device uuid → the tiles a new job of this priority would wait for there."""
    before: dict[str, float] = {}
    for device_uuid, job_priority, tiles in ahead:
        if job_priority >= priority:
            before[device_uuid] = before.get(device_uuid, 0) + tiles
    return before


def _work_ahead(conn: Connection, rates: dict[str, float], excluding: list[UUID]) -> list[tuple[str, int, float]]:
    """(device uuid, priority, tiles not yet inferred) of the launched jobs — running, or queued with a
    run asked for — but those being placed now, by device and priority: a serial job on the device it
    is bound to, a parallel job (no device) a share on each device. One query on `jobs`, whatever the
    size of Dagster's queue."""
    left = func.sum(func.greatest(func.coalesce(jobs.c.tiles_total, 0) - jobs.c.tiles_done, 0))
    rows = conn.execute(
        select(jobs.c.device_uuid, jobs.c.priority, left)
        .where((jobs.c.state == "running") | ((jobs.c.state == "queued") & jobs.c.dispatched_at.is_not(None)),
               jobs.c.id.not_in(excluding))
        .group_by(jobs.c.device_uuid, jobs.c.priority)
    ).all()
    return [share for device_uuid, priority, tiles in rows
            for share in _shares(device_uuid, priority, float(tiles), rates)]


def _shares(device_uuid: str | None, priority: int, tiles: float,
            rates: dict[str, float]) -> list[tuple[str, int, float]]:
    """A job's tiles as work ahead on each device: all on its device (serial), or a share on each
    (parallel) in proportion to the devices' rates (each device's worker takes the job's next batch
    when it is free, so a faster device takes more of them)."""
    if device_uuid is not None:
        return [(device_uuid, priority, tiles)]
    total = sum(rates.get(device.uuid, 1.0) for device in DEVICES)
    return [(device.uuid, priority, tiles * rates.get(device.uuid, 1.0) / total) for device in DEVICES]


@contextmanager
def dispatch_span(launch: Launch, by: str) -> Iterator[tuple[Span, dict[str, str]]]:
    """A `dispatch` span in the job's trace, and the launch's tags carrying its context (so the run's
    spans are its children), for the block that asks Dagster for the run."""
    with tracing.span_of_job("dispatch", launch.tags.get(TRACEPARENT_TAG), job_id=launch.job_id,
                             kind=SpanKind.CLIENT,
                             attributes={"dagster.job": launch.job_name, "constellation.dispatched_by": by}) as span:
        yield span, {**launch.tags, **({TRACEPARENT_TAG: tracing.current_traceparent()} if span.is_recording() else {})}
