"""Materialize the exports automatically after inference runs.

Under a backlog, exporting after every run would rewrite the same day's Parquet once per job and
take CPU from inference; the sensor waits until no inference run is active, or until the last
export is EXPORT_MAX_AGE_S old, and then exports every day since the last export. A backlog may end
with a failed or canceled run, which exports nothing: a backstop sensor exports any success still
unexported every EXPORT_MAX_AGE_S / 2, so none waits for the next run. (Each sensor tick is a gRPC
call into the code server and a few storage queries: with nothing queued, run-status sensors ticking
every second were most of the idle stack's CPU; exports are not in a hurry.)
"""

from datetime import UTC, date, datetime, timedelta

import dagster as dg

from constellation_dagster.analytics.assets import analytics_export, analytics_refresh
from constellation_dagster.inference.jobs import ALL_JOBS

EXPORT_MAX_AGE_S = 60
EXPORT_SENSOR_INTERVAL_S = 10
ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED]


def _day(stamp: float) -> date:
    return datetime.fromtimestamp(stamp, UTC).date()


def days_to_export(run_start: float | None, run_end: float | None, last_export_day: date | None) -> list[str]:
    """The run's day(s) (a run that crossed midnight wrote on both), and every day since the last export."""
    stamps = [t for t in (run_start, run_end) if t] or [datetime.now(UTC).timestamp()]
    days = {_day(t) for t in stamps}
    if last_export_day is not None:
        first, last = min(days | {last_export_day}), max(days)
        days |= {first + timedelta(n) for n in range((last - first).days + 1)}
    return sorted(d.isoformat() for d in days)


def covered_by_export(run_start: float | None, run_end: float | None, export_created: float | None,
                      export_day: date | None) -> bool:
    """Whether an export already holds the run's results: one created after the run ended, of the
    run's only day. (After a backlog the run-status sensors catch up on each run's end in turn; without
    this, every one of them would rewrite the same day.)"""
    if run_end is None or export_created is None or export_created <= run_end:
        return False
    return {_day(t) for t in (run_start, run_end) if t} == {export_day}


def _export_requests(instance: dg.DagsterInstance, record: dg.RunRecord | None, *, key: str):
    """Export every day since the last export, and refresh DuckDB — unless inference runs are still
    active and the last export is recent (the run that ends the backlog, or the backstop, will do it)."""
    last_export = instance.get_run_records(dg.RunsFilter(job_name=analytics_export.name), limit=1)
    last = last_export[0] if last_export else None
    last_day = date.fromisoformat(last.dagster_run.tags["dagster/partition"]) if last else None
    if record is not None and last is not None and covered_by_export(
            record.start_time, record.end_time, last.create_timestamp.timestamp(), last_day):
        return dg.SkipReason("a later export already holds this run's results")
    busy = any(
        instance.get_runs_count(dg.RunsFilter(job_name=job.name, statuses=ACTIVE)) for job in ALL_JOBS
    )
    if busy and last is not None and last.create_timestamp.timestamp() > datetime.now(UTC).timestamp() - EXPORT_MAX_AGE_S:
        return dg.SkipReason("inference runs are active; exporting when they finish")
    days = days_to_export(record.start_time if record else None, record.end_time if record else None, last_day)
    return [
        *(dg.RunRequest(run_key=f"export-{key}-{day}", job_name=analytics_export.name, partition_key=day)
          for day in days),
        dg.RunRequest(run_key=f"refresh-{key}", job_name=analytics_refresh.name),
    ]


def _latest_success(instance: dg.DagsterInstance, since: datetime | None) -> dg.RunRecord | None:
    """The inference run that succeeded last (after `since`, if given)."""
    records = [record for job in ALL_JOBS for record in instance.get_run_records(
        dg.RunsFilter(job_name=job.name, statuses=[dg.DagsterRunStatus.SUCCESS], updated_after=since), limit=1)]
    return max(records, key=lambda r: r.update_timestamp, default=None)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=ALL_JOBS,
    request_jobs=[analytics_export, analytics_refresh],
    minimum_interval_seconds=EXPORT_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After inference runs succeed, export their day(s) to Parquet and refresh DuckDB "
                f"(once the backlog drains, or at least every {EXPORT_MAX_AGE_S} s under load).",
)
def export_after_inference(context: dg.RunStatusSensorContext):
    run_id = context.dagster_run.run_id
    return _export_requests(context.instance, context.instance.get_run_record_by_id(run_id), key=run_id)


@dg.sensor(
    minimum_interval_seconds=EXPORT_MAX_AGE_S // 2,
    default_status=dg.DefaultSensorStatus.RUNNING,
    jobs=[analytics_export, analytics_refresh],
    description="Backstop: exports inference successes the run-status sensors skipped (they skip while a "
                "backlog runs, and the run that ends it may end in a way that exports nothing).",
)
def export_backstop(context: dg.SensorEvaluationContext):
    instance = context.instance
    last_export = instance.get_run_records(dg.RunsFilter(job_name=analytics_export.name), limit=1)
    newest = _latest_success(instance, since=last_export[0].create_timestamp if last_export else None)
    if newest is None:
        return dg.SkipReason("every inference success is exported")
    return _export_requests(instance, newest, key=f"backstop-{newest.dagster_run.run_id}")


export_sensors = [export_after_inference, export_backstop]
