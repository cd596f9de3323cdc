"""Ops of the tile-inference jobs.

No `from __future__ import annotations` here: Dagster reads the annotations at definition time.
"""

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import dagster as dg
import numpy as np
from shapely import wkt
from sqlalchemy import Connection, RootTransaction, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from constellation_core.devices import Device, energy_counter_mj
from constellation_core.events import record_event, transition_job
from constellation_core.settings import get_settings
from constellation_core.tables import gpus as gpus_table
from constellation_core.tables import jobs, runs, steps, tile_chunks, tile_results, tiles
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


def start_run(context: dg.OpExecutionContext, job_id: UUID, db: SystemOfRecord, bus: EventBus,
              gpus: GpuFleet) -> UUID:
    """Mark the job running, record this Dagster run in `runs`, refresh the `gpus` table."""
    with db.begin() as conn:
        gpus.sync(conn)
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
def plan_tiles(context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, bus: EventBus,
               gpus: GpuFleet):
    """Start the run (job `running`, the run in `runs`), then cover the job's area with web-mercator
    tiles at its zoom and store each with its footprint, in chunks of the job's batch size.

    One op rather than two: each op of the parallel job is a process of its own, and the device
    waits for all of them. Idempotent: a retried run finds its tiles already there."""
    job_id = UUID(config.job_id)
    run_id = start_run(context, job_id, db, bus, gpus)
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
    """One op per device, in that device's pool: Dagster never runs more of them at once, across
    all runs, than the pool has slots."""

    @dg.op(
        name=f"infer_on_{device.slug}",
        pool=device.pool,
        retry_policy=INFERENCE_RETRY,
        description=f"Run the CNN over the job's pending tile batches on {device.label}.",
        tags={"constellation/device": device.uuid},
        out=dg.Out(int, description="Tiles this step inferred"),
    )
    def infer(context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, bus: EventBus,
              gpus: GpuFleet, run_id: UUID, planned: int) -> int:
        return infer_pending_batches(context, UUID(config.job_id), run_id, device, db, bus, gpus)

    return infer


def infer_pending_batches(context: dg.OpExecutionContext, job_id: UUID, run_id: UUID, device: Device,
                          db: SystemOfRecord, bus: EventBus, gpus: GpuFleet) -> int:
    """Claim pending batches one at a time (work stealing) until none is left or the job ends.

    The step's interval on the device is recorded in `steps`, finished even when the step fails.
    """
    from constellation_core.inference.imagery import TileReader, ensure_demo_scene
    from constellation_core.inference.model import TileClassifier

    model_path, model_version = latest_model(context.instance)
    with db.begin() as conn:
        # plan_tiles synced the gpus table moments ago; a lookup is enough (sync if it is missing).
        gpu_id = conn.execute(select(gpus_table.c.id).where(gpus_table.c.uuid == device.uuid)).scalar_one_or_none()
        gpu_id = gpu_id or gpus.sync(conn)[device.uuid]
        job = conn.execute(select(jobs.c.account_id, jobs.c.params, jobs.c.tiles_total).where(jobs.c.id == job_id)).one()
    imagery = job.params.get("imagery") or str(ensure_demo_scene(get_settings().local_dir / "imagery"))
    with gpus.lease(device) as torch_device:
        with db.begin() as conn:
            step_id = conn.execute(
                pg_insert(steps).values(
                    job_id=job_id, run_id=run_id, gpu_id=gpu_id, step_key=context.op_handle.name,
                    pid=os.getpid(), cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                ).returning(steps.c.id)
            ).scalar_one()
            bus.publish([_log(conn, job, job_id, run_id, f"{device.label}: inference step started "
                                                         f"(model {model_version}, pid {os.getpid()})")])
        started = time.perf_counter()
        energy_at_start = energy_counter_mj(device)
        batches = BatchRunner(job_id, run_id, job.account_id, job.tiles_total, device, gpu_id, model_version)
        error = None
        try:
            classifier = TileClassifier(model_path, torch_device)
            with TileReader(imagery) as reader:
                batches.run(db, reader, classifier, started, lambda event: bus.publish([event]))
        except Exception as exc:
            error = repr(exc)
            raise
        finally:
            elapsed = time.perf_counter() - started
            energy_at_end = energy_counter_mj(device)
            energy_j = (round((energy_at_end - energy_at_start) / 1000, 3)
                        if energy_at_start is not None and energy_at_end is not None else None)
            summary = (f"{device.label}: {batches.inferred} tiles in {elapsed:.1f} s "
                       f"({batches.inferred / elapsed if elapsed else 0:.0f} tiles/s)")
            if batches.stopped_because:
                summary += f"; stopped, the job is {batches.stopped_because}"
            if error:
                summary += f"; failed: {error}"
            # The step's figures and its summary line in one transaction; one flush publishes the
            # batches' events and the summary (the publisher keeps their order).
            with db.begin() as conn:
                conn.execute(
                    update(steps).where(steps.c.id == step_id).values(
                        finished_at=func.clock_timestamp(), tiles=batches.inferred,
                        metrics={"seconds": round(elapsed, 3), "compute_seconds": round(batches.compute_s, 3),
                                 "tiles_per_s": round(batches.inferred / elapsed, 2) if elapsed else None,
                                 "peak_mem_mb": _peak_memory_mb(torch_device), "energy_joules": energy_j,
                                 "torch_threads": _torch_threads(), "error": error,
                                 # wall-clock bounds of the work on the device (device-idle bench)
                                 "first_batch_at": batches.first_batch_at, "last_batch_at": batches.last_batch_at},
                    )
                )
                summary_event = _log(conn, job, job_id, run_id, summary, level="error" if error else "info")
            bus.publish([summary_event], flush=True)
    context.log.info(summary)
    context.add_output_metadata({"tiles": batches.inferred, "device": device.label, "seconds": round(elapsed, 2),
                                 "model_version": model_version})
    return batches.inferred


def _log(conn: Connection, job, job_id: UUID, run_id: UUID, message: str, level: str = "info"):
    return record_event(conn, "job.log", account_id=job.account_id, job_id=job_id, run_id=run_id,
                        payload={"level": level, "message": message})


@dataclass
class ClaimedBatch:
    """A pending batch locked in its own open transaction, its tiles read from the imagery."""
    conn: Connection
    transaction: RootTransaction
    chunk_no: int
    tiles: list
    images: np.ndarray

    def close(self) -> None:
        if self.transaction.is_active:
            self.transaction.rollback()  # the batch is pending again, for any device
        self.conn.close()


class BatchRunner:
    """Infers a job's pending batches, pipelined so the device never waits on the database.

    Commits overlap the work: while a writer thread commits batch k's results, this thread claims
    batch k+1 (row lock, `SKIP LOCKED`), reads its tiles and runs the model on them. Each batch stays
    locked in its own transaction until its results, its `done` mark and its progress event commit
    together: a crash at any point leaves it pending, never half-written, never doubled.
    """

    def __init__(self, job_id: UUID, run_id: UUID, account_id: UUID, tiles_total: int, device: Device,
                 gpu_id: UUID, model_version: str) -> None:
        self.job_id, self.run_id, self.account_id, self.tiles_total = job_id, run_id, account_id, tiles_total
        self.device, self.gpu_id, self.model_version = device, gpu_id, model_version
        self.inferred = 0
        self.compute_s = 0.0
        self.first_batch_at: float | None = None
        self.last_batch_at: float | None = None
        self.stopped_because: str | None = None

    def run(self, db: SystemOfRecord, reader, classifier, started: float, publish) -> None:
        """Infer until no batch is pending or the job is no longer running; `publish` gets each
        batch's progress event, in order."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-commit") as writer:
            writing = None
            try:
                while (batch := self.claim(db, reader)) is not None:
                    began = datetime.now(UTC)
                    if self.first_batch_at is None:
                        self.first_batch_at = began.timestamp()
                    t0 = time.perf_counter()
                    classes, confidences = classifier.predict(batch.images)
                    batch_s = time.perf_counter() - t0
                    self.compute_s += batch_s
                    ended = began + timedelta(seconds=batch_s)
                    self.last_batch_at = ended.timestamp()
                    if writing is not None:
                        publish(writing.result())  # at most one commit in flight: progress stays ordered
                    writing = writer.submit(self.commit, batch, classes, confidences, (began, ended), started)
                if writing is not None:
                    publish(writing.result())
                    writing = None
            finally:
                if writing is not None:
                    writing.exception()  # let an in-flight commit end (it closes its batch either way)

    def claim(self, db: SystemOfRecord, reader) -> ClaimedBatch | None:
        """Lock the next pending batch and read its tiles; None when there is none or the job ended."""
        job_id = self.job_id
        conn = db.engine.connect()
        transaction = conn.begin()
        try:
            # One round trip: lock the first pending batch of a running job and fetch its tiles.
            chunk = (
                select(tile_chunks.c.chunk_no)
                .where(tile_chunks.c.job_id == job_id, tile_chunks.c.state == "pending",
                       select(jobs.c.id).where(jobs.c.id == job_id, jobs.c.state == "running").exists())
                .order_by(tile_chunks.c.chunk_no).limit(1).with_for_update(skip_locked=True)
                .cte("chunk")
            )
            batch = conn.execute(
                select(chunk.c.chunk_no, tiles.c.z, tiles.c.x, tiles.c.y)
                .join(tiles, (tiles.c.job_id == job_id) & (tiles.c.chunk_no == chunk.c.chunk_no))
                .order_by(tiles.c.z, tiles.c.x, tiles.c.y)
            ).all()
            if not batch:
                state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one()
                if state != "running":
                    self.stopped_because = state
                conn.close()
                return None
            chunk_no = batch[0].chunk_no
            images = np.stack([reader.read(t.z, t.x, t.y) for t in batch])
            return ClaimedBatch(conn, transaction, chunk_no, batch, images)
        except BaseException:
            conn.close()
            raise

    def commit(self, batch: ClaimedBatch, classes, confidences, interval: tuple[datetime, datetime], started: float):
        """Store the batch's results, mark it done with its interval on the device, count progress;
        commit; the progress event (which carries the batch's interval: the live device timeline)."""
        job_id, conn = self.job_id, batch.conn
        began, ended = interval
        batch_s = (ended - began).total_seconds()
        try:
            # Already-stored results (from a step that died after its commit) are kept, never doubled.
            inserted = len(conn.execute(
                pg_insert(tile_results)
                .values([
                    {"job_id": job_id, "z": t.z, "x": t.x, "y": t.y, "run_id": self.run_id, "class": c,
                     "confidence": p, "inference_ms": batch_s * 1000 / len(batch.tiles), "device": self.device.label,
                     "gpu_id": self.gpu_id, "model_version": self.model_version}
                    for t, c, p in zip(batch.tiles, classes, confidences)
                ])
                .on_conflict_do_nothing(constraint="tile_results_job_tile_key")
                .returning(tile_results.c.id)
            ).all())
            conn.execute(
                update(tile_chunks)
                .where(tile_chunks.c.job_id == job_id, tile_chunks.c.chunk_no == batch.chunk_no)
                .values(state="done", device_uuid=self.device.uuid, started_at=began, finished_at=ended)
            )
            done = conn.execute(
                update(jobs).where(jobs.c.id == job_id)
                .values(tiles_done=jobs.c.tiles_done + inserted).returning(jobs.c.tiles_done)
            ).scalar_one()
            self.inferred += inserted
            elapsed = time.perf_counter() - started
            event = record_event(
                conn, "job.progress", account_id=self.account_id, job_id=job_id, run_id=self.run_id,
                payload={"tiles_done": done, "tiles_total": self.tiles_total, "device": self.device.uuid,
                         "tiles_per_s": round(self.inferred / elapsed, 2) if elapsed else None,
                         "batch": {"tiles": len(batch.tiles), "started_at": began.isoformat(),
                                   "finished_at": ended.isoformat()}},
            )
            batch.transaction.commit()
            return event
        finally:
            batch.close()


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _peak_memory_mb(torch_device: str) -> float | None:
    if not torch_device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


@dg.op
def summarise(context: dg.OpExecutionContext, config: TileJobConfig, db: SystemOfRecord, run_id: UUID,
              inferred: list[int]) -> None:
    """Record the run's metrics from its steps: tiles, tiles/s, device-seconds, peak memory, energy."""
    with db.begin() as conn:
        row = conn.execute(
            select(
                func.coalesce(func.sum(steps.c.tiles), 0).label("tiles"),
                func.coalesce(func.sum(func.extract("epoch", steps.c.finished_at - steps.c.started_at)), 0)
                .label("gpu_seconds"),
                func.count(func.distinct(steps.c.gpu_id)).label("devices"),
                func.max(steps.c.metrics["peak_mem_mb"].as_float()).label("peak_mem_mb"),
                func.sum(steps.c.metrics["energy_joules"].as_float()).label("energy_joules"),
            ).where(steps.c.run_id == run_id)
        ).one()
        metrics = {
            "tiles": int(row.tiles),
            "gpu_seconds": round(float(row.gpu_seconds), 3),
            "devices": row.devices,
            "tiles_per_gpu_second": round(row.tiles / float(row.gpu_seconds), 2) if row.gpu_seconds else None,
            "peak_mem_mb": row.peak_mem_mb,
            # NVML's energy counter over the steps; None on simulated/CPU devices (never invented)
            "energy_joules": round(float(row.energy_joules), 3) if row.energy_joules is not None else None,
        }
        conn.execute(update(runs).where(runs.c.id == run_id).values(metrics=metrics))
    context.add_output_metadata(metrics)
