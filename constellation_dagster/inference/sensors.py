"""Dispatch queued jobs to Dagster, and mirror Dagster's run outcomes back onto jobs."""


from uuid import UUID

import dagster as dg
from sqlalchemy import func, select, text, update

from constellation_core.events import transition_job
from constellation_core.tables import gpus, jobs, runs, steps
from constellation_dagster.inference.jobs import (
    ACCOUNT_TAG,
    ALL_JOBS,
    CORRELATION_TAG,
    DEVICES,
    JOB_ID_TAG,
    serial_job_name,
    tile_inference,
)
from constellation_dagster.resources import EventBus, SystemOfRecord

DISPATCH_BATCH = 100
# A job asked for but not yet running is asked for again after this long; the run key makes the
# repeat a no-op when the first request did create a run.
REDISPATCH_AFTER_S = 60


def _busy_steps_by_device(conn) -> dict[str, int]:
    rows = conn.execute(
        select(gpus.c.uuid, func.count(steps.c.id))
        .select_from(gpus.outerjoin(steps, (steps.c.gpu_id == gpus.c.id) & steps.c.finished_at.is_(None)))
        .group_by(gpus.c.uuid)
    ).all()
    return {uuid: count for uuid, count in rows}


@dg.sensor(
    jobs=ALL_JOBS,
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches a tile_inference run for each queued job (run key = job id).",
)
def dispatch_queued_jobs(context: dg.SensorEvaluationContext, db: SystemOfRecord) -> dg.SensorResult:
    # State lives in jobs.dispatched_at rather than a cursor: an id/time cursor can skip a job
    # whose transaction committed late, and the run key already makes re-requests harmless.
    with db.begin() as conn:
        due = (
            select(jobs.c.id, jobs.c.priority, jobs.c.submitted_by, jobs.c.correlation_id, jobs.c.params)
            .where(
                jobs.c.state == "queued",
                jobs.c.dagster_run_id.is_(None),
                (jobs.c.dispatched_at.is_(None))
                | (jobs.c.dispatched_at < func.now() - text(f"interval '{REDISPATCH_AFTER_S} seconds'")),
            )
            .order_by(jobs.c.priority.desc(), jobs.c.created_at)
            .limit(DISPATCH_BATCH)
            .with_for_update(skip_locked=True)
        )
        rows = conn.execute(due).all()
        if rows:
            conn.execute(update(jobs).where(jobs.c.id.in_([r.id for r in rows])).values(dispatched_at=func.now()))
        busy = _busy_steps_by_device(conn) if rows else {}
    run_requests = []
    for row in rows:
        job = tile_inference
        if row.params.get("mode") == "serial":
            # The least busy device now; each choice counts, so one tick's serial jobs spread out.
            device = min(DEVICES, key=lambda d: (busy.get(d.uuid, 0), d.index))
            busy[device.uuid] = busy.get(device.uuid, 0) + 1
            job = next(j for j in ALL_JOBS if j.name == serial_job_name(device))
        run_requests.append(
            dg.RunRequest(
                run_key=str(row.id),
                job_name=job.name,
                run_config={"ops": {name: {"config": {"job_id": str(row.id)}} for name in _configured_ops(job)}},
                tags={
                    JOB_ID_TAG: str(row.id),
                    ACCOUNT_TAG: row.submitted_by,
                    CORRELATION_TAG: row.correlation_id or "",
                    "dagster/priority": str(row.priority),
                },
            )
        )
    return dg.SensorResult(run_requests=run_requests)


def _configured_ops(job: dg.JobDefinition) -> list[str]:
    return [node.name for node in job.graph.nodes]


def _mirror_outcome(status: dg.DagsterRunStatus, state: str) -> dg.RunStatusSensorDefinition:
    @dg.run_status_sensor(
        name=f"job_{state}_on_run_{status.value.lower()}",
        run_status=status,
        monitored_jobs=ALL_JOBS,
        minimum_interval_seconds=1,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Marks the job {state} (and publishes it) when its Dagster run ends {status.value}.",
    )
    def _sensor(context: dg.RunStatusSensorContext, db: SystemOfRecord, bus: EventBus) -> None:
        run = context.dagster_run
        job_id = run.tags.get(JOB_ID_TAG)
        if not job_id:
            return
        if status == dg.DagsterRunStatus.FAILURE and run.tags.get("dagster/will_retry") == "true":
            context.log.info(f"run {run.run_id} failed and will be retried; job {job_id} stays running")
            return
        with db.begin() as conn:
            # A re-executed run (run retry) reuses its root run's `runs` row: start_run ran there.
            run_row = conn.execute(
                update(runs)
                .where(runs.c.dagster_run_id.in_([run.run_id, run.root_run_id or run.run_id]))
                .values(state=state, finished_at=func.now())
                .returning(runs.c.id)
            ).scalar_one_or_none()
            error = None
            if status == dg.DagsterRunStatus.FAILURE and context.failure_event:
                error = context.failure_event.message
            event = transition_job(
                conn, UUID(job_id), state, run_id=run_row, detail={"dagster_run_id": run.run_id},
                **({"error": error} if error else {}),
            )
        bus.publish([event], flush=True)

    return _sensor


run_outcome_sensors = [
    _mirror_outcome(dg.DagsterRunStatus.SUCCESS, "succeeded"),
    _mirror_outcome(dg.DagsterRunStatus.FAILURE, "failed"),
    _mirror_outcome(dg.DagsterRunStatus.CANCELED, "canceled"),
]


@dg.sensor(
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Terminates the Dagster run of a job canceled through the API.",
)
def terminate_canceled_runs(context: dg.SensorEvaluationContext, db: SystemOfRecord) -> dg.SkipReason | None:
    with db.begin() as conn:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.dagster_run_id).where(
                jobs.c.state == "canceled",
                jobs.c.dagster_run_id.is_not(None),
                jobs.c.finished_at > func.now() - text("interval '10 minutes'"),
            )
        ).all()
    terminated = []
    for row in rows:
        run = context.instance.get_run_by_id(row.dagster_run_id)
        if run is not None and not run.is_finished and run.status != dg.DagsterRunStatus.CANCELING:
            context.instance.run_coordinator.cancel_run(row.dagster_run_id)
            terminated.append(row.dagster_run_id)
    return None if terminated else dg.SkipReason("no run to terminate")
