"""The one place that builds the code location's Definitions."""

import dagster as dg

from constellation_dagster.inference.jobs import ALL_JOBS
from constellation_dagster.inference.sensors import (
    dispatch_queued_jobs,
    run_outcome_sensors,
    terminate_canceled_runs,
)
from constellation_dagster.models.assets import landcover_model, landcover_model_accuracy
from constellation_dagster.resources import EventBus, GpuFleet, SystemOfRecord

defs = dg.Definitions(
    assets=[landcover_model],
    asset_checks=[landcover_model_accuracy],
    jobs=ALL_JOBS,
    sensors=[dispatch_queued_jobs, terminate_canceled_runs, *run_outcome_sensors],
    resources={
        "db": SystemOfRecord(database_url=dg.EnvVar("DATABASE_URL")),
        "bus": EventBus(nats_url=dg.EnvVar("NATS_URL")),
        "gpus": GpuFleet(),
    },
)
