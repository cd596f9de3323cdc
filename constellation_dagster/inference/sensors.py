"""Dispatch queued jobs to Dagster, and mirror Dagster's run outcomes back onto jobs."""

import logging
import time
from uuid import UUID

import dagster as dg
from sqlalchemy import func, select, text, update

from constellation_core import tracing
from constellation_core.events import transition_job
from constellation_core.tables import jobs, runs, steps, tile_chunks
from constellation_dagster.inference.dispatch import (
    RECONCILE_GRACE_S,
    RETRY_GRACE_S,
    RETRY_NUMBER_TAG,
    WILL_RETRY_TAG,
    claim_launches,
    dispatch_span,
    plan_launches,
    runs_to_terminate,
)
from constellation_dagster.inference.jobs import ALL_JOBS, JOB_ID_TAG
from constellation_dagster.inference.ops import DEVICES_GONE_TAG, TRACEPARENT_TAG, run_lineage
from constellation_dagster.resources import EventBus, SystemOfRecord

# The dispatcher process launches and terminates runs the moment a job is queued or canceled; the
# two sensors behind it only reconcile what it missed (it was down, Dagit refused), so they need not
# tick every second (each tick is a gRPC call into the code server and a few Postgres round trips).
RECONCILE_INTERVAL_S = 10
# The two that back the dispatcher up tick less often: it launches and terminates within milliseconds,
# and launches whatever is due again as it starts after a crash; a job is due to the dispatch sensor
# only RECONCILE_GRACE_S after its submission anyway. A tick of any sensor costs ~35 ms of CPU with
# nothing to do (the daemon, the code server and Postgres together): ~30 ticks a minute were ~1.8 % of
# a core of the idle stack (`bench/idle_cpu.py`).
BACKSTOP_INTERVAL_S = 30


@dg.sensor(
    jobs=ALL_JOBS,
    minimum_interval_seconds=BACKSTOP_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reconciler: launches a run for each queued job the fast-path dispatcher did not take within "
                f"{RECONCILE_GRACE_S:.0f} s of its submission (run key = job id).",
)
def dispatch_queued_jobs(context: dg.SensorEvaluationContext, db: SystemOfRecord) -> dg.SensorResult:
    # State lives in jobs.dispatched_at rather than a cursor: an id/time cursor can skip a job
    # whose transaction committed late. The launch guard skips jobs that have a live run.
    with db.begin() as conn:
        _, launches = claim_launches(conn, context.instance, grace_s=RECONCILE_GRACE_S)
    return dg.SensorResult(run_requests=[
        dg.RunRequest(run_key=str(launch.job_id), job_name=launch.job_name, run_config=launch.run_config,
                      tags=traced_dispatch(launch, "reconciler"))
        for launch in launches
    ])



def traced_dispatch(launch, by: str) -> dict[str, str]:
    """The launch's tags, carrying the context of a `dispatch` span in the job's trace."""
    tracing.setup("constellation-dagster-sensors")
    with dispatch_span(launch, by) as (_, tags):
        return tags


def _mirror_outcome(status: dg.DagsterRunStatus, state: str, interval_s: int) -> dg.RunStatusSensorDefinition:
    @dg.run_status_sensor(
        name=f"job_{state}_on_run_{status.value.lower()}",
        run_status=status,
        monitored_jobs=ALL_JOBS,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(f"Marks the job {state} (and publishes it) when its Dagster run ends {status.value}"
                     + (" and its run worker did not (it does as the run ends)."
                        if status == dg.DagsterRunStatus.SUCCESS else ".")),
    )
    def _sensor(context: dg.RunStatusSensorContext, db: SystemOfRecord, bus: EventBus) -> None:
        error = run_failure_message(context.instance, context.dagster_run.run_id) \
            if status == dg.DagsterRunStatus.FAILURE else None
        apply_run_outcome(context.log, db, bus, context.instance, context.dagster_run, status, error)

    return _sensor


# On a failed run the reconciler runs again itself: Dagster's `dagster/will_retry` is set to false on it
# (its retry daemon reads that tag before retrying, so a late retry cannot run the job twice at once),
# and this tag says a new run was asked for (asked again, deduplicated by run key, should that fail).
RELAUNCHED_TAG = "constellation/relaunched"


def retry_pending(run: dg.DagsterRun, retries_enabled: bool = False) -> bool:
    """Whether another run of this failed run's job may be coming: Dagster's retry, or the reconciler's
    (also for a run whose devices are all gone: `ops.DEVICES_GONE_TAG`). With Dagster's run retries on,
    a failed run without `dagster/will_retry` is undecided, not final: the retry daemon sets the tag
    when it comes to the failure (one written while Postgres restarted can lack it)."""
    undecided = "true" if retries_enabled else "false"
    return (run.tags.get(WILL_RETRY_TAG, undecided) == "true" or run.tags.get(RELAUNCHED_TAG) == "true"
            or run.tags.get(DEVICES_GONE_TAG) == "true")


# The engine event Dagster's retry daemon writes on a failed run when its retry could not be created
# (it then sets `dagster/will_retry` to false): the job is not over, the reconciler runs it again.
RETRY_FAILED_MESSAGE = "Failed to retry run"


def retry_failed(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    return run.tags.get(RELAUNCHED_TAG) != "true" and any(
        entry.user_message == RETRY_FAILED_MESSAGE or (
            entry.dagster_event is not None and entry.dagster_event.message == RETRY_FAILED_MESSAGE)
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT))


OUTCOMES = {dg.DagsterRunStatus.SUCCESS: "succeeded", dg.DagsterRunStatus.FAILURE: "failed",
            dg.DagsterRunStatus.CANCELED: "canceled"}


def apply_run_outcome(log, db: SystemOfRecord, bus: EventBus, instance: dg.DagsterInstance, run: dg.DagsterRun,
                      status: dg.DagsterRunStatus, error: str | None) -> bool:
    """Put a finished Dagster run's outcome on its job (and publish it); False when there is nothing to
    do: no job, a failed run Dagster retries, or the job already ended."""
    job_id = run.tags.get(JOB_ID_TAG)
    if not job_id:
        return False
    if status == dg.DagsterRunStatus.FAILURE and retry_pending(run, instance.run_retries_enabled):
        # (A run-status sensor may come to the failure late, after the reconciler ran the job again.)
        log.info(f"run {run.run_id} failed and will be retried; job {job_id} stays running")
        # The failed attempt in the job's trace; the retry (same tags, so the same trace) follows it.
        tracing.setup("constellation-dagster-sensors")
        now = time.time()
        tracing.record_span("run failed", run.tags.get(TRACEPARENT_TAG), now, now, job_id=job_id, attributes={
            "dagster.run_id": run.run_id, "dagster.retry_number": int(run.tags.get(RETRY_NUMBER_TAG, "0")),
            "constellation.retried": True}, error=(error or "the run failed")[:1000])
        return False
    outcome = OUTCOMES[status]
    error = error if status == dg.DagsterRunStatus.FAILURE else None
    tracing.setup("constellation-dagster-sensors")
    with tracing.span_of_job("end job", run.tags.get(TRACEPARENT_TAG), job_id=job_id,
                             attributes={"dagster.run_id": run.run_id, "dagster.run_status": status.value}) as span:
        event = _end_job(log, db, run, job_id, status, outcome, error, instance)
        span.set_attribute("constellation.job.state", event.payload["state"] if event else "unchanged")
        if event is None:
            return False
        bus.publish([event], flush=True)
    return True


def _end_job(log, db: SystemOfRecord, run: dg.DagsterRun, job_id: str, status: dg.DagsterRunStatus, outcome: str,
             error: str | None, instance: dg.DagsterInstance):
    with db.begin() as conn:
        if status == dg.DagsterRunStatus.FAILURE and _every_batch_done(conn, UUID(job_id)):
            # The run worker ended after the job's last batch committed (killed, or interrupted
            # while Dagster wrote its last events): Dagster cannot retry a run with no step left
            # to run, and the user's job is complete — every tile inferred once.
            outcome = "succeeded"
            log.info(f"run {run.run_id} failed after every batch of job {job_id} was done: {error}")
        # A re-executed run (run retry) reuses the `runs` row of the nearest run it re-executes that
        # recorded one (`ops.run_row`); one that had to run `start_run` again (its parent failed before
        # recording it) has a row of its own: all of them end.
        lineage = run_lineage(run, instance)
        rows = dict(conn.execute(
            update(runs)
            .where(runs.c.dagster_run_id.in_(lineage))
            .values(state=outcome, finished_at=func.now())
            .returning(runs.c.dagster_run_id, runs.c.id)
        ).all())
        run_row = next((rows[run_id] for run_id in lineage if run_id in rows), None)
        # A step whose process was killed never closed its `steps` row: the device would look
        # busy forever. The run has ended, so none of its steps still holds a device.
        conn.execute(
            update(steps).where(steps.c.run_id.in_(list(rows.values())), steps.c.finished_at.is_(None))
            .values(finished_at=func.now(), metrics=steps.c.metrics.op("||")(
                func.jsonb_build_object("error", "its process ended without closing the step")))
        )
        detail = {"dagster_run_id": run.run_id}
        if error and outcome == "succeeded":
            detail["run_failure"] = error
        event = transition_job(
            conn, UUID(job_id), outcome, run_id=run_row, detail=detail,
            **({"error": error} if error and outcome == "failed" else {}),
        )
        if event is not None:
            # The job has ended: an earlier run of it that ended unseen (killed, then run again by the
            # reconciler) holds no device and runs no more either.
            conn.execute(update(runs).where(runs.c.job_id == UUID(job_id), runs.c.state == "running")
                         .values(state="failed", finished_at=func.now()))
            conn.execute(
                update(steps).where(steps.c.job_id == UUID(job_id), steps.c.finished_at.is_(None))
                .values(finished_at=func.now(), metrics=steps.c.metrics.op("||")(
                    func.jsonb_build_object("error", "its run ended without closing the step")))
            )
    return event


# A job whose run ended this long ago but still shows `running` missed its run-status sensor (a tick
# that failed is not evaluated again: Dagster moves the sensor's cursor past it).
OUTCOME_GRACE_S = 30



@dg.sensor(
    jobs=ALL_JOBS,
    minimum_interval_seconds=RECONCILE_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reconciler: ends a running job whose latest Dagster run ended when the run-status sensors "
                "did not, and runs again a job whose failed run Dagster said it would retry but did not.",
)
def reconcile_run_outcomes(context: dg.SensorEvaluationContext, db: SystemOfRecord,
                           bus: EventBus) -> dg.SensorResult | dg.SkipReason:
    with db.begin() as conn:
        running = conn.execute(
            select(jobs.c.id).where(jobs.c.state == "running",
                                    jobs.c.updated_at < func.now() - text(f"interval '{OUTCOME_GRACE_S} seconds'"))
        ).scalars().all()
    if not running:
        return dg.SkipReason("no job has been running long")
    latest: dict[str, dg.RunRecord] = {}
    for record in context.instance.get_run_records(
            dg.RunsFilter(tags={JOB_ID_TAG: [str(job_id) for job_id in running]})):
        job_id = record.dagster_run.tags[JOB_ID_TAG]
        if job_id not in latest or record.create_timestamp > latest[job_id].create_timestamp:
            latest[job_id] = record
    ended, unretried = 0, {}  # job id → its failed run, to run again
    retries = context.instance.run_retries_enabled
    for job_id, record in latest.items():
        run = record.dagster_run
        finished_at = record.end_time or 0
        if run.status not in OUTCOMES or time.time() - finished_at < OUTCOME_GRACE_S:
            continue
        if run.status == dg.DagsterRunStatus.FAILURE and (retry_pending(run, retries)
                                                          or retry_failed(context.instance, run)):
            # (Dagster never retries a run whose devices were gone: it failed in an op. It runs again at once.)
            if run.tags.get(DEVICES_GONE_TAG) == "true" or time.time() - finished_at >= RETRY_GRACE_S:
                unretried[UUID(job_id)] = run
            continue
        failure = run_failure_message(context.instance, run.run_id) if run.status == dg.DagsterRunStatus.FAILURE \
            else None
        if apply_run_outcome(context.log, db, bus, context.instance, run, run.status, failure):
            context.log.info(f"job {job_id} had missed the end of its run {run.run_id} ({run.status.value})")
            ended += 1
    requests = []
    if unretried:
        # A new run carries on from the job's batches that are not done (each batch is done once).
        with db.begin() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.priority, jobs.c.submitted_by, jobs.c.correlation_id, jobs.c.params,
                       jobs.c.traceparent, jobs.c.tiles_total)
                .where(jobs.c.id.in_(list(unretried)), jobs.c.state == "running")
            ).all()
            launches = plan_launches(conn, rows)
        for launch in launches:
            failed_run = unretried[launch.job_id].run_id
            context.instance.add_run_tags(failed_run, {WILL_RETRY_TAG: "false", RELAUNCHED_TAG: "true"})
            why = ("its devices were gone" if unretried[launch.job_id].tags.get(DEVICES_GONE_TAG) == "true"
                   else "it failed and was never retried")
            context.log.info(f"job {launch.job_id}: run {failed_run} ended ({why}); running it again "
                             f"({launch.job_name})")
            requests.append(dg.RunRequest(run_key=f"{launch.job_id}/after/{failed_run}", job_name=launch.job_name,
                                          run_config=launch.run_config, tags=traced_dispatch(launch, "recovery")))
    if requests:
        return dg.SensorResult(run_requests=requests)
    return dg.SkipReason(f"ended {ended} jobs" if ended else "every running job's run is still going")


# A job's `error` holds at most this much of its run's failure.
FAILURE_MESSAGE_CHARS = 2000
STEP_ERROR_WRAPPER = "DagsterExecutionStepExecutionError"  # Dagster's wrapper of an op's own exception


def run_failure_message(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why the run failed, as a user should read it: each failed op's reason (the description of the
    `Failure` it raised, else its error's message), else the message of the run's last RUN_FAILURE
    event ("Steps failed: ['infer']" alone, or a run that failed outside its ops), if any."""
    reasons = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        data = event.step_failure_data if event is not None else None
        if data is None:
            continue
        described = data.user_failure_data.description if data.user_failure_data is not None else None
        error = data.error
        while error is not None and error.cls_name == STEP_ERROR_WRAPPER and error.cause is not None:
            error = error.cause  # the op's own exception, under Dagster's "Error occurred while executing op"
        reason = described or (error.message.strip() if error is not None else "")
        if reason:
            reasons.append(f"{event.step_key}: {reason}")
    if reasons:
        return "; ".join(reasons)[:FAILURE_MESSAGE_CHARS]
    failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    return failures[-1].dagster_event.message if failures and failures[-1].dagster_event else None


def _every_batch_done(conn, job_id: UUID) -> bool:
    """The job was planned and none of its batches is left."""
    counts = conn.execute(
        select(func.count(), func.count().filter(tile_chunks.c.state != "done"))
        .where(tile_chunks.c.job_id == job_id)
    ).one()
    return counts[0] > 0 and counts[1] == 0


# How soon a run's end shows on its job when its run worker did not show it. Every tick costs the
# daemon, a gRPC call into the code server and Postgres (also with nothing queued: ~10 ms of CPU in each
# of the daemon and the code server). A run worker ends its job itself as its run ends
# (`end_job_of_ended_run`): on success, and on a failure Dagster will not retry. So these sensors only
# catch run workers that died first (run monitoring then fails the run), failures that are retried
# (decided by Dagster's retry daemon) and runs canceled in Dagit (the API cancels a job at once).
# A success or a cancel needs these sensors only when its run worker died at the very end, or when
# the run was canceled in Dagit: rare enough for a slower tick.
RARE_OUTCOME_INTERVAL_S = 30
run_outcome_sensors = [
    _mirror_outcome(dg.DagsterRunStatus.SUCCESS, "succeeded", RARE_OUTCOME_INTERVAL_S),
    _mirror_outcome(dg.DagsterRunStatus.FAILURE, "failed", RECONCILE_INTERVAL_S),
    _mirror_outcome(dg.DagsterRunStatus.CANCELED, "canceled", RARE_OUTCOME_INTERVAL_S),
]


def end_job_of_ended_run(instance: dg.DagsterInstance, run_id: str, *, database_url: str, nats_url: str) -> bool:
    """The run worker's last act: when its run succeeded, or failed and Dagster will not run it again
    (`dagster/will_retry` is false: Dagster sets it as the run worker reports the failure), end the
    job and publish it now, not at the run-status sensor's next tick (which ends the job should the
    worker die first; ending a job twice does nothing). A failure Dagster retries, or one whose retry
    is undecided, stays with the sensors. False when there was nothing to do."""
    run = instance.get_run_by_id(run_id)
    if run is None or not run.tags.get(JOB_ID_TAG):
        return False
    error = None
    if run.status == dg.DagsterRunStatus.FAILURE:
        if retry_pending(run, instance.run_retries_enabled):
            # Dagster may run it again (or has not decided): the failure sensor follows it, and records
            # the failed attempt in the job's trace once.
            return False
        error = run_failure_message(instance, run_id) or "the run failed"
    elif run.status != dg.DagsterRunStatus.SUCCESS:
        return False
    return apply_run_outcome(logging.getLogger(__name__), SystemOfRecord(database_url=database_url),
                             EventBus(nats_url=nats_url), instance, run, run.status, error)


@dg.sensor(
    minimum_interval_seconds=BACKSTOP_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reconciler: terminates the Dagster run of a job canceled through the API (or drops it from "
                "Dagster's queue) when the fast-path dispatcher did not.",
)
def terminate_canceled_runs(context: dg.SensorEvaluationContext, db: SystemOfRecord) -> dg.SkipReason | None:
    with db.begin() as conn:
        canceled = conn.execute(
            select(jobs.c.id).where(jobs.c.state == "canceled",
                                    jobs.c.finished_at > func.now() - text("interval '10 minutes'"))
        ).scalars().all()
    terminated = runs_to_terminate(context.instance, list(canceled)) if canceled else []
    for run_id in terminated:
        context.instance.run_coordinator.cancel_run(run_id)
    return None if terminated else dg.SkipReason("no run to terminate")
