"""Ops of the tile-inference jobs.

No `from __future__ import annotations` here: Dagster reads the annotations at definition time.
"""

import math
from uuid import UUID

import dagster as dg
from shapely import wkt
from sqlalchemy import Connection, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from constellation_core.devices import Device
from constellation_core.events import record_event, transition_job
from constellation_core.tables import jobs, runs, steps, tile_chunks, tiles
from constellation_core.tiles import plan_tiles as plan_tile_grid
from constellation_core.vocabulary import DEFAULT_BATCH_SIZE
from constellation_dagster.models.assets import latest_model
from constellation_dagster.resources import EventBus, GpuFleet, SystemOfRecord

# Planning re-checks the cap the API enforced at submit time, with headroom for a changed setting.
PLAN_CAP = 100_000

# Transient failures (a dropped connection, a device hiccup) are retried with backoff and jitter.
INFERENCE_RETRY = dg.RetryPolicy(max_retries=3, delay=1.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


class TileJobConfig(dg.Config):
    job_id: str


def start_run(context: dg.OpExecutionContext, job_id: UUID, db: SystemOfRecord, bus: EventBus) -> UUID:
    """Mark the job running and record this Dagster run in `runs`."""
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
    return run_id


@dg.op(
    out={"run_id": dg.Out(UUID, description="The `runs` row of this Dagster run"),
         "planned": dg.Out(int, description="Tiles planned")},
)
def plan_tiles(context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, bus: EventBus):
    """Start the run (job `running`, the run in `runs`), then cover the job's area with web-mercator
    tiles at its zoom and store each with its footprint, in chunks of the job's batch size.

    One op rather than two: each op of the parallel job is a process of its own, and the device
    waits for all of them. Idempotent: a retried run finds its tiles already there."""
    job_id = UUID(config.job_id)
    run_id = start_run(context, job_id, db, bus)
    with db.begin() as conn:
        job = conn.execute(
            select(jobs.c.zoom, jobs.c.account_id, jobs.c.params, func.ST_AsText(jobs.c.aoi).label("aoi"))
            .where(jobs.c.id == job_id)
        ).one()
        batch = int(job.params.get("batch_size", DEFAULT_BATCH_SIZE))
        planned = plan_tile_grid(wkt.loads(job.aoi), job.zoom, PLAN_CAP)
        rows = [
            {"job_id": job_id, "z": t.z, "x": t.x, "y": t.y, "chunk_no": i // batch,
             "footprint": func.ST_GeomFromText(t.footprint.wkt, 4326)}
            for i, t in enumerate(planned)
        ]
        for start in range(0, len(rows), 1000):
            conn.execute(pg_insert(tiles).values(rows[start:start + 1000]).on_conflict_do_nothing())
        chunks = [{"job_id": job_id, "chunk_no": n, "tiles": min(batch, len(planned) - n * batch)}
                  for n in range(math.ceil(len(planned) / batch))]
        if chunks:
            conn.execute(pg_insert(tile_chunks).values(chunks).on_conflict_do_nothing())
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(tiles_total=len(planned)))
        event = record_event(
            conn, "job.log", account_id=job.account_id, job_id=job_id, run_id=run_id,
            payload={"level": "info", "message": f"planned {len(planned)} tiles at zoom {job.zoom} "
                                                 f"in {len(chunks)} batches of {batch}"},
        )
    bus.publish([event], flush=True)
    context.add_output_metadata({"tiles": len(planned), "batches": len(chunks), "zoom": job.zoom},
                                output_name="planned")
    yield dg.Output(run_id, "run_id")
    yield dg.Output(len(planned), "planned")




def make_infer_op(device: Device) -> dg.OpDefinition:
    """One op per device, in that device's pool: the pool's limit is how many jobs the device holds
    at once (its queue; the device worker runs one batch at a time, the highest-priority job's first)."""

    @dg.op(
        name=f"infer_on_{device.slug}",
        pool=device.pool,
        retry_policy=INFERENCE_RETRY,
        description=f"Hand the job's tile batches to the device worker of {device.label} and follow them.",
        tags={"constellation/device": device.uuid},
        out=dg.Out(int, description="Tiles this device inferred for the job"),
    )
    def infer(context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, bus: EventBus,
              gpus: GpuFleet, run_id: UUID, planned: int) -> int:
        return infer_on_device(context, UUID(config.job_id), run_id, device, db, bus, gpus)

    return infer


def infer_on_device(context: dg.OpExecutionContext, job_id: UUID, run_id: UUID, device: Device,
                    db: SystemOfRecord, bus: EventBus, gpus: GpuFleet) -> int:
    """Admit the job to the device (its `steps` row, with the model to use), wake the device's worker,
    and follow the job until none of its batches is pending, the job ends, or the device is lost.

    The step is closed with its figures from the batches' intervals on the device, also on failure.
    """
    model_path, model_version = latest_model(context.instance)
    with db.begin() as conn:
        job = conn.execute(select(jobs.c.account_id).where(jobs.c.id == job_id)).one()
        step_id = gpus.admit(conn, job_id=job_id, run_id=run_id, device=device, step_key=context.op_handle.name,
                             model_version=model_version, model_uri=str(model_path))
        bus.publish([_log(conn, job, job_id, run_id, f"{device.label}: admitted (model {model_version})")])
    outcome, error = None, None
    try:
        outcome = gpus.follow(db, step_id, job_id, device)
        if outcome.error:
            raise dg.Failure(description=outcome.error)
    except BaseException as exc:
        error = error or repr(exc)
        raise
    finally:
        with db.begin() as conn:
            figures = close_step(conn, step_id, job_id, device, error)
            summary = (f"{device.label}: {figures['tiles']} tiles in {figures['compute_seconds']:.2f} s on the device "
                       f"({figures['tiles_per_s'] or 0:.0f} tiles/s)")
            if outcome is not None and outcome.stopped_because:
                summary += f"; {outcome.stopped_because}"
            if error:
                summary += f"; failed: {error}"
            summary_event = _log(conn, job, job_id, run_id, summary, level="error" if error else "info")
        bus.publish([summary_event], flush=True)
    context.log.info(summary)
    context.add_output_metadata({"tiles": figures["tiles"], "device": device.label,
                                 "compute_seconds": figures["compute_seconds"], "model_version": model_version})
    return figures["tiles"]


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


@dg.op
def summarise(context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, run_id: UUID,
              inferred: list[int]) -> None:
    """Record the run's metrics from its batches: tiles, device-seconds (the batches' compute time),
    devices; fail the run when batches are left that no device took (its devices were lost)."""
    job_id = UUID(config.job_id)
    with db.begin() as conn:
        left = conn.execute(
            select(func.count()).select_from(tile_chunks)
            .where(tile_chunks.c.job_id == job_id, tile_chunks.c.state == "pending")
        ).scalar_one()
        state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one()
        if left and state == "running":
            raise dg.Failure(description=f"{left} batches were not inferred: the job's devices were lost "
                                         "(a retry admits it to the devices there are now)")
        row = conn.execute(
            select(
                func.coalesce(func.sum(tile_chunks.c.tiles), 0).label("tiles"),
                func.coalesce(func.sum(func.extract("epoch", tile_chunks.c.finished_at - tile_chunks.c.started_at)), 0)
                .label("gpu_seconds"),
                func.count(func.distinct(tile_chunks.c.device_uuid)).label("devices"),
            ).where(tile_chunks.c.job_id == job_id, tile_chunks.c.state == "done")
        ).one()
        metrics = {
            "tiles": int(row.tiles),
            "gpu_seconds": round(float(row.gpu_seconds), 3),
            "devices": row.devices,
            "tiles_per_gpu_second": round(row.tiles / float(row.gpu_seconds), 2) if row.gpu_seconds else None,
            # energy and peak memory are per device worker, not per job, now that workers are shared
            "peak_mem_mb": None,
            "energy_joules": None,
        }
        conn.execute(update(runs).where(runs.c.id == run_id).values(metrics=metrics))
    context.add_output_metadata(metrics)
