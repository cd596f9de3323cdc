"""The API's Prometheus series."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from constellation_core.analytics_db import DATASETS
from constellation_core.tables import events, gpus, jobs, steps
from constellation_core.vocabulary import DEFAULT_MODE, JOB_STATES

REQUESTS = Counter("constellation_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "constellation_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
JOBS_SUBMITTED = Counter("constellation_jobs_submitted_total", "Jobs accepted by POST /jobs")
STREAM_CLIENTS = Gauge("constellation_stream_clients", "Connected WebSocket stream clients")
STREAM_DROPPED = Counter("constellation_stream_clients_dropped_total", "Stream clients dropped for being too slow")
EVENT_LAG = Histogram(
    "constellation_stream_event_lag_seconds", "An event's commit (its `ts`) to its send on a live WebSocket",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
NATS_PUBLISH_FAILURES = Counter("constellation_nats_publish_failures_total",
                                "Events the API could not publish to NATS (stream clients resume from Postgres)")


FIRST_BATCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
STEP_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# A job entering a state, as the lifecycle counters name it.
LIFECYCLE = {"queued": "submitted", "running": "started", "succeeded": "succeeded", "failed": "failed",
             "canceled": "canceled"}


# How old the figures read from Postgres may be when scraped. Reading them scans the jobs' history
# (~36 ms of CPU in the API and Postgres with 2,400 jobs; Prometheus scrapes every 5 s): read at most
# this often, they cost a third of that, and a job's counts reach Prometheus within ~20 s.
DATABASE_FIGURES_MAX_AGE_S = 15.0


@dataclass(eq=False)  # (registered with Prometheus's registry, which hashes its collectors)
class DatabaseFigures:
    """Series read from Postgres (and the export folder) when scraped, at most every
    DATABASE_FIGURES_MAX_AGE_S: every API process reports the same figures, the system of record's,
    whichever one Prometheus reaches and however often it restarted. Counters come from rows that
    only grow (`events`, each device's steps)."""

    jobs_by_state: dict[str, int] = field(default_factory=dict)
    lifecycle: dict[tuple[str, str], int] = field(default_factory=dict)
    device_tiles: dict[tuple[str, str], int] = field(default_factory=dict)
    first_batch_waits: dict[str, tuple] = field(default_factory=dict)  # mode → (count, sum, per bucket)
    step_durations: dict[str, tuple] = field(default_factory=dict)  # device → (count, sum, per bucket)
    newest_export: float | None = None  # mtime of the newest Parquet partition (its age is taken when scraped)
    read_at: float | None = None  # time.monotonic() of the last read

    def stale(self) -> bool:
        return self.read_at is None or time.monotonic() - self.read_at >= DATABASE_FIGURES_MAX_AGE_S

    async def refresh(self, conn: AsyncConnection, analytics_root: Path) -> None:
        self.jobs_by_state = dict((await conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))).all())
        state = events.c.payload["state"].astext
        mode = func.coalesce(jobs.c.params["mode"].astext, DEFAULT_MODE)
        self.lifecycle = {(row[0], row[1]): row[2] for row in (await conn.execute(
            select(state, mode, func.count()).select_from(events.join(jobs, jobs.c.id == events.c.job_id))
            .where(events.c.type == "job.state").group_by(state, mode))).all()}
        self.device_tiles = {(row[0], row[1]): row[2] for row in (await conn.execute(
            select(gpus.c.uuid, gpus.c.name, func.coalesce(func.sum(steps.c.tiles), 0))
            .select_from(gpus.outerjoin(steps, steps.c.gpu_id == gpus.c.id)).group_by(gpus.c.uuid, gpus.c.name))).all()}
        wait = func.extract("epoch", jobs.c.first_batch_at - jobs.c.created_at)
        self.first_batch_waits = await _histograms(conn, mode, wait, FIRST_BATCH_BUCKETS,
                                                   select_from=jobs, where=jobs.c.first_batch_at.is_not(None))
        took = func.extract("epoch", steps.c.finished_at - steps.c.started_at)
        self.step_durations = await _histograms(conn, gpus.c.uuid, took, STEP_BUCKETS,
                                                select_from=steps.join(gpus, gpus.c.id == steps.c.gpu_id),
                                                where=steps.c.finished_at.is_not(None))
        partitions = (p for dataset in DATASETS for p in (analytics_root / dataset).glob("day=*/*.parquet"))
        self.newest_export = max((p.stat().st_mtime for p in partitions), default=None)
        self.read_at = time.monotonic()

    def collect(self):
        by_state = GaugeMetricFamily("constellation_jobs", "Jobs in each state, all accounts", labels=["state"])
        for job_state in JOB_STATES:
            by_state.add_metric([job_state], self.jobs_by_state.get(job_state, 0))
        yield by_state
        lifecycle = CounterMetricFamily(
            "constellation_job_lifecycle", "Jobs that entered each stage of their life (submitted, started, "
            "succeeded, failed, canceled), by mode", labels=["event", "mode"])
        for (job_state, job_mode), count in sorted(self.lifecycle.items()):
            if job_state in LIFECYCLE:
                lifecycle.add_metric([LIFECYCLE[job_state], job_mode], count)
        yield lifecycle
        tiles = CounterMetricFamily("constellation_device_tiles", "Tiles each device inferred (rate: its tiles/s)",
                                    labels=["device", "name"])
        for (uuid, name), count in sorted(self.device_tiles.items()):
            tiles.add_metric([uuid, name], count)
        yield tiles
        yield _histogram_family("constellation_job_first_batch_wait_seconds", "A job's submission to its first "
                                "batch done, by mode", "mode", self.first_batch_waits, FIRST_BATCH_BUCKETS)
        yield _histogram_family("constellation_step_duration_seconds", "A job's step on a device: its admission to "
                                "its end", "device", self.step_durations, STEP_BUCKETS)
        if self.newest_export is not None:
            yield GaugeMetricFamily("constellation_export_age_seconds", "Age of the newest Parquet partition the "
                                    "analytics read", value=max(0.0, time.time() - self.newest_export))


async def _histograms(conn: AsyncConnection, key, value, buckets: tuple, *, select_from, where) -> dict[str, tuple]:
    """Per `key`: how many rows, the sum of `value`, and how many have `value` ≤ each bucket (one scan)."""
    rows = (await conn.execute(
        select(key, func.count(), func.coalesce(func.sum(value), 0),
               *(func.count().filter(value <= b) for b in buckets))
        .select_from(select_from).where(where).group_by(key))).all()
    return {row[0]: (row[1], float(row[2]), row[3:]) for row in rows}


def _histogram_family(name: str, documentation: str, label: str, figures: dict[str, tuple],
                      buckets: tuple) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for key, (count, total, cumulative) in sorted(figures.items()):
        family.add_metric([key], [*((floatToGoString(b), c) for b, c in zip(buckets, cumulative, strict=True)),
                                  ("+Inf", count)],
                          sum_value=total)
    return family


DATABASE_FIGURES = DatabaseFigures()
REGISTRY.register(DATABASE_FIGURES)
