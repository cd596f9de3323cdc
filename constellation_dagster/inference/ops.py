"""Ops of the `tile_inference` job.

No `from __future__ import annotations` here: Dagster reads the annotations at definition time.
"""


from uuid import UUID

import dagster as dg
from shapely import wkt
from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from constellation_core.events import record_event, transition_job
from constellation_core.tables import jobs, runs, tiles
from constellation_core.tiles import plan_tiles as plan_tile_grid
from constellation_dagster.resources import EventBus, SystemOfRecord

# Planning re-checks the cap the API enforced at submit time, with headroom for a changed setting.
PLAN_CAP = 100_000


class TileJobConfig(dg.Config):
    job_id: str


@dg.op(out=dg.Out(UUID, description="The `runs` row of this Dagster run"))
def start_run(context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, bus: EventBus) -> UUID:
    """Mark the job running and record this Dagster run in `runs`."""
    job_id = UUID(config.job_id)
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
    context.log.info(f"job {job_id} running as run {run_id}")
    return run_id


@dg.op(out=dg.Out(int, description="Tiles planned"))
def plan_tiles(
    context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, bus: EventBus, run_id: UUID
) -> int:
    """Cover the job's area with web-mercator tiles at its zoom; store each with its footprint."""
    job_id = UUID(config.job_id)
    with db.begin() as conn:
        job = conn.execute(
            select(jobs.c.zoom, jobs.c.account_id, func.ST_AsText(jobs.c.aoi).label("aoi")).where(jobs.c.id == job_id)
        ).one()
        planned = plan_tile_grid(wkt.loads(job.aoi), job.zoom, PLAN_CAP)
        if planned:
            conn.execute(
                pg_insert(tiles)
                .values(
                    [
                        {"job_id": job_id, "z": t.z, "x": t.x, "y": t.y,
                         "footprint": func.ST_GeomFromText(t.footprint.wkt, 4326)}
                        for t in planned
                    ]
                )
                .on_conflict_do_nothing(index_elements=["job_id", "z", "x", "y"])
            )
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(tiles_total=len(planned)))
        event = record_event(
            conn, "job.log", account_id=job.account_id, job_id=job_id, run_id=run_id,
            payload={"level": "info", "message": f"planned {len(planned)} tiles at zoom {job.zoom}"},
        )
    bus.publish([event])
    context.add_output_metadata({"tiles": len(planned), "zoom": job.zoom})
    return len(planned)


@dg.op
def summarise(context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, run_id: UUID, tiles_planned: int):
    """Record the run's metrics."""
    with db.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(metrics={"tiles_planned": tiles_planned}))
    context.add_output_metadata({"tiles_planned": tiles_planned})
