"""The one place that builds the code location's Definitions."""

import dagster as dg

from constellation_dagster.analytics.assets import (
    analytics_duckdb,
    analytics_export,
    analytics_refresh,
    run_metrics_parquet,
    tile_results_parquet,
)
from constellation_dagster.analytics.sensors import export_sensors
from constellation_dagster.inference.jobs import ALL_JOBS
from constellation_dagster.inference.sensors import (
    dispatch_queued_jobs,
    reconcile_run_outcomes,
    run_outcome_sensors,
    terminate_canceled_runs,
)
from constellation_dagster.models.assets import landcover_model, landcover_model_accuracy
from constellation_dagster.resources import EventBus, GpuFleet, SystemOfRecord

defs = dg.Definitions(
    assets=[landcover_model, tile_results_parquet, run_metrics_parquet, analytics_duckdb],
    asset_checks=[landcover_model_accuracy],
    jobs=[*ALL_JOBS, analytics_export, analytics_refresh],
    sensors=[dispatch_queued_jobs, terminate_canceled_runs, reconcile_run_outcomes, *export_sensors,
             *run_outcome_sensors],
    resources={
        "db": SystemOfRecord(database_url=dg.EnvVar("DATABASE_URL")),
        "bus": EventBus(nats_url=dg.EnvVar("NATS_URL")),
        "gpus": GpuFleet(),
    },
)
