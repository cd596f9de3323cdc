"""Which queued jobs to launch, and as which Dagster run. Shared by the fast-path dispatcher process
(launches within milliseconds of a `queued` event) and the `dispatch_queued_jobs` sensor (the
reconciler, which catches whatever the fast path missed)."""

from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import Connection, func, select, text, update

from constellation_core.devices import choose_device
from constellation_core.tables import gpus, jobs, steps
from constellation_dagster.inference.jobs import (
    ACCOUNT_TAG,
    ALL_JOBS,
    CORRELATION_TAG,
    DEVICES,
    JOB_ID_TAG,
    serial_job_name,
    tile_inference,
)

DISPATCH_BATCH = 100
# A job asked for but not yet running is looked at again after this long (Dagster is checked for a
# run of the job first, so a run that merely waits in the queue is never launched twice).
REDISPATCH_AFTER_S = 60


@dataclass(frozen=True)
class Launch:
    job_id: UUID
    job_name: str
    run_config: dict
    tags: dict[str, str]


def claim_due_jobs(conn: Connection, limit: int = DISPATCH_BATCH):
    """Queued jobs not yet asked for (or asked for long ago), highest priority first; marks them."""
    due = (
        select(jobs.c.id, jobs.c.priority, jobs.c.submitted_by, jobs.c.correlation_id, jobs.c.params)
        .where(
            jobs.c.state == "queued",
            jobs.c.dagster_run_id.is_(None),
            jobs.c.dispatched_at.is_(None)
            | (jobs.c.dispatched_at < func.now() - text(f"interval '{REDISPATCH_AFTER_S} seconds'")),
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
    the least busy device now, by open steps and NVML utilization and free memory (each choice
    counts, so one batch's serial jobs spread out)."""
    busy = _busy_steps_by_device(conn) if rows else {}
    launches = []
    for row in rows:
        job = tile_inference
        if row.params.get("mode") == "serial":
            device = choose_device(DEVICES, busy)
            busy[device.uuid] = busy.get(device.uuid, 0) + 1
            job = next(j for j in ALL_JOBS if j.name == serial_job_name(device))
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
                },
            )
        )
    return launches


def _busy_steps_by_device(conn: Connection) -> dict[str, int]:
    rows = conn.execute(
        select(gpus.c.uuid, func.count(steps.c.id))
        .select_from(gpus.outerjoin(steps, (steps.c.gpu_id == gpus.c.id) & steps.c.finished_at.is_(None)))
        .group_by(gpus.c.uuid)
    ).all()
    return {uuid: count for uuid, count in rows}
