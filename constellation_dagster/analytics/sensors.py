"""Materialize the exports automatically after each inference run."""

from datetime import UTC, datetime

import dagster as dg

from constellation_dagster.analytics.assets import analytics_export, analytics_refresh
from constellation_dagster.inference.jobs import ALL_JOBS


def _days(start: float | None, end: float | None) -> list[str]:
    stamps = [t for t in (start, end) if t] or [datetime.now(UTC).timestamp()]
    return sorted({datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d") for t in stamps})


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=ALL_JOBS,
    request_jobs=[analytics_export, analytics_refresh],
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After an inference run succeeds, export its day(s) to Parquet and refresh DuckDB.",
)
def export_after_inference(context: dg.RunStatusSensorContext):
    run_id = context.dagster_run.run_id
    record = context.instance.get_run_record_by_id(run_id)
    # A run that crossed midnight wrote results on both days.
    for day in _days(record.start_time if record else None, record.end_time if record else None):
        yield dg.RunRequest(run_key=f"export-{run_id}-{day}", job_name=analytics_export.name, partition_key=day)
    yield dg.RunRequest(run_key=f"refresh-{run_id}", job_name=analytics_refresh.name)
