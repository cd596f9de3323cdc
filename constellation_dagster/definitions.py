"""The one place that builds the code location's Definitions."""

import dagster as dg

from constellation_dagster.inference.jobs import tile_inference
from constellation_dagster.inference.sensors import dispatch_queued_jobs, run_outcome_sensors
from constellation_dagster.resources import EventBus, SystemOfRecord

defs = dg.Definitions(
    jobs=[tile_inference],
    sensors=[dispatch_queued_jobs, *run_outcome_sensors],
    resources={
        "db": SystemOfRecord(database_url=dg.EnvVar("DATABASE_URL")),
        "bus": EventBus(nats_url=dg.EnvVar("NATS_URL")),
    },
)
