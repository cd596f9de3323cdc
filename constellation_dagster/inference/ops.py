"""Ops of the tile-inference jobs.

No `from __future__ import annotations` here: Dagster reads the annotations at definition time.
"""

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import dagster as dg
import mercantile
from opentelemetry import trace
from shapely import wkt
from sqlalchemy import Connection, bindparam, func, literal, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from constellation_core import tracing
from constellation_core.db import OUTAGE_ERRORS
from constellation_core.devices import Device, from_spec
from constellation_core.events import record_event, transition_job
from constellation_core.tables import gpus as gpus_table
from constellation_core.tables import jobs, runs, steps, tile_chunks
from constellation_core.tiles import plan_tiles as plan_tile_grid
from constellation_core.vocabulary import DEFAULT_BATCH_SIZE
from constellation_dagster.models.assets import latest_model
from constellation_dagster.resources import EventBus, GpuFleet, SystemOfRecord

# Planning re-checks the cap the API enforced at submit time, with headroom for a changed setting.
PLAN_CAP = 100_000


# An op that loses Postgres (a restart, a failover) runs again in its run after a pause rather than
# failing: Dagster's run retries do not cover a run that failed in an op (`retry_on_asset_or_op_failure`
# is off, so a genuine failure ends the job at once). Twenty tries three seconds apart ride out a minute.
OUTAGE_RETRIES = 20
OUTAGE_RETRY_WAIT_S = 3.0


# The run tag carrying the job's trace context (`jobs.traceparent`, or the dispatch span's).
TRACEPARENT_TAG = "constellation/traceparent"


class TileJobConfig(dg.Config):
    job_id: str


def op_span(context: dg.OpExecutionContext, name: str, job_id: UUID, **attributes: object):
    """The op's span in its job's trace: a child of the run's span where the run worker traces its
    run (`constellation_dagster.zygote`), else of the context the run's tags carry."""
    inside_run_span = trace.get_current_span().get_span_context().is_valid
    return tracing.span_of_job(
        name, None if inside_run_span else context.run.tags.get(TRACEPARENT_TAG), job_id=job_id,
        attributes={"dagster.run_id": context.run_id, "dagster.op": context.op_handle.name,
                    "dagster.retry_number": context.retry_number, **attributes})


def is_outage(exc: BaseException) -> bool:
    """Whether an error says Postgres was out of reach (refused, restarted under a query), not that
    the work itself failed: the error or one it was raised from (Dagster's Postgres storages, which
    the admit op reads for the model, give up connecting with their own `DagsterPostgresException`)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OUTAGE_ERRORS) or (
                isinstance(exc, DBAPIError) and exc.connection_invalidated):
            return True
        seen.add(id(exc))
        exc = exc.__cause__
    return False


@contextmanager
def through_outages() -> Iterator[None]:
    """Run an op's body so that an outage of Postgres asks Dagster to run the op again (in the same
    run, `OUTAGE_RETRY_WAIT_S` later) instead of failing it. Every op is safe to run again: planning
    and admission are idempotent or recorded in one transaction, and following resumes."""
    try:
        yield
    except Exception as exc:
        if not is_outage(exc):
            raise
        raise dg.RetryRequested(max_retries=OUTAGE_RETRIES, seconds_to_wait=OUTAGE_RETRY_WAIT_S) from exc


def start_run(context: dg.OpExecutionContext, job_id: UUID, db: SystemOfRecord, bus: EventBus) -> tuple[UUID, bool]:
    """Mark the job running and record this Dagster run in `runs`; True when this started the job
    (it was queued: not a retry, nor an op run again)."""
    with db.begin() as conn:
        run_id = conn.execute(
            pg_insert(runs)
            .values(job_id=job_id, dagster_run_id=context.run_id, state="running")
            .on_conflict_do_update(index_elements=[runs.c.dagster_run_id], set_={"state": "running"})
            .returning(runs.c.id)
        ).scalar_one()
        event = transition_job(
            conn, job_id, "running", run_id=run_id, detail={"dagster_run_id": context.run_id},
            dagster_run_id=context.run_id,
        )
    bus.publish([event])
    return run_id, event is not None


# The ops pass nothing through Dagster: each finds what it needs in Postgres (this Dagster run's `runs`
# row, the job's steps on its devices), and their dependencies carry no value (`Nothing`). An output
# that carries a value is stored by an IO manager (a pickle file per op and run) and costs Dagster
# events of its own — `HANDLED_OUTPUT`, then `LOADED_INPUT` and `STEP_INPUT` in the next op: 7 of a
# serial run's 29 events, and Dagster's event writes are the bulk of a small job's run-worker CPU (P9).
PLANNED = "planned"
ADMITTED = "admitted"


def run_lineage(run: dg.DagsterRun, instance: dg.DagsterInstance) -> list[str]:
    """The run's id, then its parent's, its parent's parent's… to its root's: a run retry and the
    runs it re-executes."""
    ids = [run.run_id]
    parent = run.parent_run_id
    while parent and parent not in ids:
        ids.append(parent)
        ancestor = instance.get_run_by_id(parent)
        parent = ancestor.parent_run_id if ancestor is not None else None
    if run.root_run_id and run.root_run_id not in ids:
        ids.append(run.root_run_id)
    return ids


def run_row(conn: Connection, context: dg.OpExecutionContext) -> UUID:
    """This Dagster run's `runs` row (`plan_tiles` records it). A run retry re-executes only the ops
    that had not succeeded (Dagster's default `FROM_FAILURE` strategy): when its `plan_tiles` did not
    run, it carries on with the row of the nearest run it re-executes that recorded one, and with the
    steps that run's admit ops opened (still open: their run worker was killed)."""
    own = conn.execute(select(runs.c.id).where(runs.c.dagster_run_id == context.run_id)).scalar_one_or_none()
    if own is not None:
        return own
    lineage = run_lineage(context.run, context.instance)
    rows = dict(conn.execute(select(runs.c.dagster_run_id, runs.c.id).where(runs.c.dagster_run_id.in_(lineage))).all())
    nearest = next((rows[run_id] for run_id in lineage if run_id in rows), None)
    if nearest is None:
        raise dg.Failure(description=f"run {context.run_id} has no runs row, nor has any run it re-executes: "
                                     "its plan_tiles op never ran")
    return nearest


# A job's tiles and its batches, each in one statement whatever their number: the tiles' columns go as
# arrays (`unnest`), each footprint made from its bounds in Postgres. Given as rows to one statement,
# they went as one INSERT per row (psycopg's executemany): 4,648 statements in a 40-job backlog (P9),
# ~0.5 s of Postgres time, beside a WKT text per tile built and parsed.
INSERT_TILES = text("""
INSERT INTO tiles (job_id, z, x, y, chunk_no, footprint)
SELECT :job_id, t.z, t.x, t.y, t.chunk_no, ST_MakeEnvelope(t.west, t.south, t.east, t.north, 4326)
FROM unnest(CAST(:z AS int[]), CAST(:x AS int[]), CAST(:y AS int[]), CAST(:chunk_no AS int[]),
            CAST(:west AS float8[]), CAST(:south AS float8[]), CAST(:east AS float8[]), CAST(:north AS float8[]))
     AS t(z, x, y, chunk_no, west, south, east, north)
ON CONFLICT DO NOTHING
""").bindparams(bindparam("job_id", type_=PG_UUID(as_uuid=True)))
INSERT_CHUNKS = text("""
INSERT INTO tile_chunks (job_id, chunk_no, tiles)
SELECT :job_id, n, least(:batch, :tiles - n * :batch) FROM generate_series(0, :chunks - 1) AS n
ON CONFLICT DO NOTHING
""").bindparams(bindparam("job_id", type_=PG_UUID(as_uuid=True)))


def tile_columns(job_id: UUID, planned: list, batch: int) -> dict:
    """`INSERT_TILES`' parameters: the planned tiles' columns, each tile in batch `i // batch`."""
    bounds = [mercantile.bounds(t.x, t.y, t.z) for t in planned]
    return {"job_id": job_id, "z": [t.z for t in planned], "x": [t.x for t in planned],
            "y": [t.y for t in planned], "chunk_no": [i // batch for i in range(len(planned))],
            "west": [b.west for b in bounds], "south": [b.south for b in bounds],
            "east": [b.east for b in bounds], "north": [b.north for b in bounds]}


@dg.op(out=dg.Out(dg.Nothing, description="The job's tiles planned (their count in its metadata)"))
def plan_tiles(context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, bus: EventBus) -> None:
    """Start the run (job `running`, the run in `runs`), then cover the job's area with web-mercator
    tiles at its zoom and store each with its footprint, in chunks of the job's batch size.

    Idempotent: a retried run finds its tiles already there."""
    job_id = UUID(config.job_id)
    began = time.time()
    with through_outages(), op_span(context, "plan tiles", job_id) as span:
        run_id, started = start_run(context, job_id, db, bus)
        with db.begin() as conn:
            job = conn.execute(
                select(jobs.c.zoom, jobs.c.account_id, jobs.c.params, jobs.c.created_at, jobs.c.traceparent,
                       func.ST_AsText(jobs.c.aoi).label("aoi"))
                .where(jobs.c.id == job_id)
            ).one()
        if started:  # the job's wait, once: from its submission to the start of its first run
            tracing.record_span("queue wait", job.traceparent, job.created_at, began, job_id=job_id,
                                attributes={"constellation.job.mode": job.params.get("mode")})
        with db.begin() as conn:
            batch = int(job.params.get("batch_size", DEFAULT_BATCH_SIZE))
            planned = plan_tile_grid(wkt.loads(job.aoi), job.zoom, PLAN_CAP)
            conn.execute(INSERT_TILES, tile_columns(job_id, planned, batch))
            chunks = math.ceil(len(planned) / batch)
            conn.execute(INSERT_CHUNKS, {"job_id": job_id, "chunks": chunks, "batch": batch, "tiles": len(planned)})
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(tiles_total=len(planned)))
            event = record_event(
                conn, "job.log", account_id=job.account_id, job_id=job_id, run_id=run_id,
                payload={"level": "info", "message": f"planned {len(planned)} tiles at zoom {job.zoom} "
                                                     f"in {chunks} batches of {batch}"},
            )
        bus.publish([event], flush=True)
        span.set_attributes({"constellation.tiles": len(planned), "constellation.batches": chunks,
                             "constellation.zoom": job.zoom})
        context.add_output_metadata({"tiles": len(planned), "batches": chunks, "zoom": job.zoom})


def make_admit_op(device: Device) -> dg.OpDefinition:
    """One op per device, in that device's pool: a run starts only while each of its devices' pools has
    a free slot, and the pool's limit is how many jobs the device holds at once (the device worker
    runs one batch at a time, the highest-priority job's first)."""

    @dg.op(
        name=f"admit_on_{device.slug}",
        pool=device.pool,
        description=f"Admit the job to the device worker of {device.label}.",
        tags={"constellation/device": device.uuid},
        ins={PLANNED: dg.In(dg.Nothing)},
        out=dg.Out(dg.Nothing, description="The job's step on the device opened"),
    )
    def admit(context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, bus: EventBus,
              gpus: GpuFleet) -> None:
        job_id = UUID(config.job_id)
        with through_outages(), op_span(context, f"admit on {device.label}", job_id,
                                        **{"constellation.device.uuid": device.uuid}):
            model_path, model_version = latest_model(context.instance)
            with db.begin() as conn:  # (one transaction: an op run again after an outage admits once)
                run_id = run_row(conn, context)
                job = conn.execute(select(jobs.c.account_id).where(jobs.c.id == job_id)).one()
                gpus.admit(conn, job_id=job_id, run_id=run_id, device=device, step_key=context.op_handle.name,
                           model_version=model_version, model_uri=str(model_path))
                event = _log(conn, job, job_id, run_id, f"{device.label}: admitted (model {model_version})")
        bus.publish([event])

    return admit


@dg.op(ins={ADMITTED: dg.In(dg.Nothing)}, out=dg.Out(dg.Nothing, description="The job inferred (its figures in "
                                                                               "its metadata)"))
def infer(context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, bus: EventBus,
          gpus: GpuFleet) -> None:
    """Follow the job on the devices this run admitted it to until none of its batches is pending, the
    job ends, or its devices are lost; close each device's step with its figures (also on failure), and
    record the run's metrics from the batches: tiles, device-seconds (compute time), devices."""
    job_id = UUID(config.job_id)
    with through_outages(), db.begin() as conn:  # the steps this run's admit ops opened
        run_id = run_row(conn, context)
        steps_on = [(row.id, from_spec(row.spec)) for row in conn.execute(
            select(steps.c.id, gpus_table.c.spec).join(gpus_table, gpus_table.c.id == steps.c.gpu_id)
            .where(steps.c.job_id == job_id, steps.c.run_id == run_id).order_by(steps.c.started_at))]
    with through_outages(), op_span(context, "infer", job_id, **{"constellation.devices": len(steps_on)}):
        try:
            outcome = gpus.follow(db, job_id, steps_on)
        except BaseException as exc:  # a failure, a cancel (SIGINT), the run worker asked to stop
            if not is_outage(exc):  # (an outage: the op runs again and follows on, its steps open)
                _close_steps(context, db, bus, job_id, run_id, steps_on, None, repr(exc))
            raise
        _close_steps(context, db, bus, job_id, run_id, steps_on, outcome, outcome.error)
        if outcome.error:
            raise dg.Failure(description=outcome.error)
        with db.begin() as conn:
            left = conn.execute(
                select(func.count()).select_from(tile_chunks)
                .where(tile_chunks.c.job_id == job_id, tile_chunks.c.state == "pending")
            ).scalar_one()
            state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one()
            unfinished = bool(left) and state == "running"
            if not unfinished:
                metrics = run_metrics(conn, job_id)
                conn.execute(update(runs).where(runs.c.id == run_id).values(metrics=metrics))
        if unfinished:
            reason = outcome.stopped_because
            if outcome.devices_gone and _run_elsewhere(context, db, bus, job_id, run_id, steps_on):
                reason += "; the job runs again on a device that serves"
            raise dg.Failure(description=f"{left} batches were not inferred: {reason}")
    context.add_output_metadata(metrics)


# A run that gave up on its job because every device it admitted the job to is gone (their workers or
# node died) carries this tag when another device serves: the job is not failed; the reconciler
# (`sensors.reconcile_run_outcomes`) runs it again, placed on a device that serves, and it carries on
# from its batches not done. At most MAX_DEVICE_RELAUNCHES times per job: a fleet whose nodes keep
# dying fails the job rather than moving it for ever.
DEVICES_GONE_TAG = "constellation/devices_gone"
MAX_DEVICE_RELAUNCHES = 2


def _run_elsewhere(context: dg.OpExecutionContext, db: SystemOfRecord, bus: EventBus, job_id: UUID, run_id: UUID,
                   steps_on: list[tuple[UUID, Device]]) -> bool:
    """Tag this run for the reconciler to run the job again on a serving device (see DEVICES_GONE_TAG);
    False when no other device serves or the job has moved MAX_DEVICE_RELAUNCHES times already."""
    from constellation_dagster.inference.jobs import JOB_ID_TAG  # (jobs.py builds its jobs from these ops)

    gone = [device.uuid for _, device in steps_on]
    with db.begin() as conn:
        serving = conn.execute(select(func.count()).select_from(gpus_table)
                               .where(gpus_table.c.gone_at.is_(None), gpus_table.c.uuid.not_in(gone))).scalar_one()
    if not serving:
        return False
    moved = context.instance.get_runs_count(
        dg.RunsFilter(tags={JOB_ID_TAG: str(job_id), DEVICES_GONE_TAG: "true"}))
    if moved >= MAX_DEVICE_RELAUNCHES:
        return False
    context.instance.add_run_tags(context.run_id, {DEVICES_GONE_TAG: "true"})
    with db.begin() as conn:
        job = conn.execute(select(jobs.c.account_id).where(jobs.c.id == job_id)).one()
        labels = ", ".join(device.label for _, device in steps_on)
        event = _log(conn, job, job_id, run_id, f"{labels}: gone (its worker or machine stopped); the job will "
                                                f"run again on a device that serves", level="warning")
    bus.publish([event], flush=True)
    return True


def _close_steps(context: dg.OpExecutionContext, db: SystemOfRecord, bus: EventBus, job_id: UUID, run_id: UUID,
                 steps_on: list[tuple[UUID, Device]], outcome, error: str | None) -> None:
    """Close the job's steps on its devices with their figures, and log one line per device."""
    with db.begin() as conn:
        job = conn.execute(select(jobs.c.account_id).where(jobs.c.id == job_id)).one()
        events = []
        for step_id, device in steps_on:
            figures = close_step(conn, step_id, job_id, device, error)
            line = (f"{device.label}: {figures['tiles']} tiles in {figures['compute_seconds']:.2f} s on the device "
                    f"({figures['tiles_per_s'] or 0:.0f} tiles/s)")
            if outcome is not None and outcome.stopped_because:
                line += f"; {outcome.stopped_because}"
            if error:
                line += f"; failed: {error}"
            context.log.info(line)
            events.append(_log(conn, job, job_id, run_id, line, level="error" if error else "info"))
    bus.publish(events, flush=True)


def run_metrics(conn: Connection, job_id: UUID) -> dict:
    row = conn.execute(
        select(
            func.coalesce(func.sum(tile_chunks.c.tiles), 0).label("tiles"),
            func.coalesce(func.sum(func.extract("epoch", tile_chunks.c.finished_at - tile_chunks.c.started_at)), 0)
            .label("gpu_seconds"),
            func.count(func.distinct(tile_chunks.c.device_uuid)).label("devices"),
        ).where(tile_chunks.c.job_id == job_id, tile_chunks.c.state == "done")
    ).one()
    return {
        "tiles": int(row.tiles),
        "gpu_seconds": round(float(row.gpu_seconds), 3),
        "devices": row.devices,
        "tiles_per_gpu_second": round(row.tiles / float(row.gpu_seconds), 2) if row.gpu_seconds else None,
        # peak memory and energy belong to a device worker shared by many jobs, not to one job
        "peak_mem_mb": None,
        "energy_joules": None,
    }


def close_step(conn: Connection, step_id: UUID, job_id: UUID, device: Device, error: str | None) -> dict:
    """End the step; its figures come from the job's batches on the device (the worker counted its tiles)."""
    batches = conn.execute(
        select(
            func.count().label("batches"),
            func.coalesce(func.sum(func.extract("epoch", tile_chunks.c.finished_at - tile_chunks.c.started_at)), 0)
            .label("compute_s"),
            func.min(tile_chunks.c.started_at).label("first"), func.max(tile_chunks.c.finished_at).label("last"),
        ).where(tile_chunks.c.job_id == job_id, tile_chunks.c.state == "done",
                tile_chunks.c.device_uuid == device.uuid)
    ).one()
    step = conn.execute(select(steps.c.tiles, steps.c.metrics).where(steps.c.id == step_id)).one()
    compute_s = float(batches.compute_s)
    figures = {
        "tiles": step.tiles,
        "batches": batches.batches,
        "compute_seconds": round(compute_s, 3),
        "tiles_per_s": round(step.tiles / compute_s, 2) if compute_s else None,
        "error": error or step.metrics.get("error"),
        # wall-clock bounds of the job's work on the device (device-idle bench)
        "first_batch_at": batches.first.timestamp() if batches.first else None,
        "last_batch_at": batches.last.timestamp() if batches.last else None,
    }
    conn.execute(update(steps).where(steps.c.id == step_id)
                 .values(finished_at=func.clock_timestamp(), metrics=steps.c.metrics.op("||")(literal(figures, JSONB))))
    return figures


def _log(conn: Connection, job, job_id: UUID, run_id: UUID, message: str, level: str = "info"):
    return record_event(conn, "job.log", account_id=job.account_id, job_id=job_id, run_id=run_id,
                        payload={"level": level, "message": message})
