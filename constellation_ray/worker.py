"""The device worker: one long-lived process per device that streams batches to the model it holds.

A job's Dagster run admits the job to a device by opening a `steps` row for it (the op runs in the
device's pool, so Dagster still decides how many jobs a device holds at once). The device's worker
takes the next pending batch among the jobs admitted to it — highest priority first, then the oldest
job, then batch order — and runs the model on it. Three threads keep the device fed:

- the feeder claims the next batch (row lock, `SKIP LOCKED`, in its own transaction) and reads its
  tiles from the imagery while the device computes the current one;
- the device thread hands each batch to the device's compute process, which runs the model
  (`constellation_ray.compute`: an interpreter of its own, so these threads never hold the GIL the
  model's Python needs), one batch at a time (a device never runs two batches at once);
- the writer commits a batch's results, its `done` mark, its interval on the device, the job's and
  the step's progress, and the progress event together, then publishes the event.

A crash at any point leaves a batch pending (its transaction rolls back), never half-written or
doubled; another device the job is admitted to takes it. The compute process loads each model version
once and keeps it on its device. With nothing to do the worker sleeps on Postgres `LISTEN` (no polling loop).

This module does not import Ray: `constellation_ray.host` wraps `DeviceWorker` in a Ray actor.
"""

from __future__ import annotations

import logging
import os
import queue
import select as io_select  # (sqlalchemy's `select` is the query builder here)
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from uuid import UUID

import numpy as np
import psycopg
from sqlalchemy import (
    Connection,
    RootTransaction,
    and_,
    bindparam,
    exists,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from constellation_core import tracing
from constellation_core.bus import publisher
from constellation_core.db import sync_engine
from constellation_core.devices import Device, device_spec
from constellation_core.events import Event, record_event
from constellation_core.tables import (
    gpus,
    jobs,
    steps,
    tile_chunks,
    tile_results,
    tiles,
)
from constellation_ray.compute import ComputeLost, ComputeProcess

log = logging.getLogger(__name__)

# `NOTIFY constellation_devices, '<device uuid>'` wakes the device's worker (sent when a job is admitted).
WAKE_CHANNEL = "constellation_devices"

# `NOTIFY constellation_job_<job id hex>` (sent with each batch's commit, and when a step fails) tells
# the op following the job on its devices to look again (`batches_notified`), instead of polling.
JOB_CHANNEL_PREFIX = "constellation_job_"

# A batch's commit, as statements built once (their values as parameters, `b_…`).
_JOB_STATE_LOCKED = select(jobs.c.state).where(jobs.c.id == bindparam("b_job_id")).with_for_update()
_STORE_RESULTS = (pg_insert(tile_results).on_conflict_do_nothing(constraint="tile_results_job_tile_key")
                  .returning(tile_results.c.id))
_BATCH_DONE = (
    update(tile_chunks)
    .where(tile_chunks.c.job_id == bindparam("b_job_id"), tile_chunks.c.chunk_no == bindparam("b_chunk_no"))
    .values(state="done", device_uuid=bindparam("b_device_uuid"), started_at=bindparam("b_started_at"),
            finished_at=bindparam("b_finished_at"))
)
_STEP_COUNTS = (update(steps).where(steps.c.id == bindparam("b_step_id"))
                .values(tiles=steps.c.tiles + bindparam("b_tiles")))
_JOB_COUNTS = (
    update(jobs).where(jobs.c.id == bindparam("b_job_id"))
    .values(tiles_done=jobs.c.tiles_done + bindparam("b_tiles"),
            first_batch_at=func.coalesce(jobs.c.first_batch_at, func.clock_timestamp()))
    .returning(jobs.c.tiles_done)
)

# With no notification, an idle worker still looks once this often (a batch of a `parallel` job left by
# a worker that died: admissions and new batches come with a NOTIFY). Each look is a query: an idle
# stack's cost, not a backlog's.
IDLE_RECHECK_S = 5.0
# A job's first batch is not taken while a job ahead of it (higher priority, or as high and submitted
# earlier) that will come to this device has had its run started for less than AHEAD_PLANNING_S and is
# not admitted yet: its run is planning its tiles, and its admission (a NOTIFY) follows in tens of
# milliseconds. Runs start in the queue's order, but a small job's planning can finish first: with
# batches read a block at a time the device ran out of admitted jobs sooner and took the later job
# (P9, 40 jobs: 2 and 3 overtakes). Held back so, the worker looks again every AHEAD_RECHECK_S.
AHEAD_PLANNING_S = 1.0
AHEAD_RECHECK_S = 0.05
OPEN_READERS = 4
# Batches claimed and read ahead of the one on the device. Reading a batch's tiles (reprojection, on the
# worker's threads) can take longer than the device takes to compute one, above all a job's short last
# batch: with one read ahead, the device waited for the next job's first batch at each switch (P1b
# p50 0.08–0.11 s once the model ran in its own process and computed faster). Each read-ahead batch
# stays locked to this device until it runs (and the feeder holds one more while it waits for room).
READ_AHEAD = 2
SWITCH_INTERVAL_S = 0.001  # the worker's GIL switch interval (`serve`)


@dataclass(frozen=True)
class Admission:
    """A job admitted to this device: its open `steps` row and what its batches need."""
    step_id: UUID
    job_id: UUID
    run_id: UUID | None
    account_id: UUID
    tiles_total: int
    model_version: str
    model_uri: str
    imagery: str | None
    traceparent: str | None = None  # the span that admitted the job here (else the job's)


@dataclass
class ClaimedBatch:
    """A pending batch locked in its own open transaction, its tiles read from the imagery."""
    conn: Connection
    transaction: RootTransaction
    admission: Admission
    chunk_no: int
    tiles: list
    images: np.ndarray | None = None

    def close(self) -> None:
        if self.transaction.is_active:
            self.transaction.rollback()  # the batch is pending again, for any device
        self.conn.close()


@dataclass
class WorkerStats:
    batches: int = 0
    tiles: int = 0
    compute_s: float = 0.0
    model_loads: list[str] = field(default_factory=list)
    failed_steps: int = 0


class DeviceWorker:
    def __init__(self, device: Device, database_url: str, nats_url: str, demo_imagery_dir: str,
                 *, host: str, ray_node_id: str | None = None, torch_threads: int | None = None) -> None:
        tracing.setup("constellation-device-worker")
        self.device = device
        self.database_url = database_url
        self.nats_url = nats_url
        self.demo_imagery_dir = Path(demo_imagery_dir)
        self.engine = sync_engine(database_url)
        self.stats = WorkerStats()
        self._readers: dict[str, object] = {}
        self._stop = threading.Event()
        self.torch_device = self._torch_device()
        self._torch_threads = torch_threads if device.kind != "cuda" else None
        self.compute = self._start_compute()
        self.gpu_id = self._register(host, ray_node_id)

    # -- identity ---------------------------------------------------------------------------------

    def _register(self, host: str, ray_node_id: str | None) -> UUID:
        """Upsert this device in `gpus` (with its host), marked present."""
        d = self.device
        statement = pg_insert(gpus).values(
            uuid=d.uuid, name=d.label, total_mem_mb=d.total_mem_mb, compute_capability=d.compute_capability,
            simulated=d.simulated, host=host, ray_node_id=ray_node_id, gone_at=None,
            spec={**device_spec(d), "worker_pid": os.getpid(), "compute_pid": self.compute.pid,
                  "torch_threads": self.compute.torch_threads},
        )
        statement = statement.on_conflict_do_update(
            index_elements=[gpus.c.uuid],
            set_={c: statement.excluded[c] for c in ("name", "total_mem_mb", "compute_capability", "simulated",
                                                      "host", "ray_node_id", "gone_at", "spec")},
        ).returning(gpus.c.id)
        with self.engine.begin() as conn:
            return conn.execute(statement).scalar_one()

    def _start_compute(self) -> ComputeProcess:
        return ComputeProcess(self.torch_device, self._torch_threads, name=self.device.slug)

    def _note_compute_pid(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(update(gpus).where(gpus.c.id == self.gpu_id).values(
                    spec=gpus.c.spec.op("||")(func.jsonb_build_object(literal_column("'compute_pid'"),
                                                                      self.compute.pid))))
        except DBAPIError:  # Postgres away: the pid shown stays the old one
            log.warning("recording the new compute process failed", exc_info=True)

    def _torch_device(self) -> str:
        if self.device.kind != "cuda":
            return "cpu"
        # Ray narrowed CUDA_VISIBLE_DEVICES to this actor's GPU: it is cuda:0 inside.
        return "cuda:0"

    def identity(self) -> dict:
        return {"uuid": self.device.uuid, "gpu_id": str(self.gpu_id), "pid": os.getpid(),
                "compute_pid": self.compute.pid, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def report(self) -> dict:
        s = self.stats
        return {"batches": s.batches, "tiles": s.tiles, "compute_s": round(s.compute_s, 3),
                "model_loads": list(s.model_loads), "failed_steps": s.failed_steps}

    # -- the loop ---------------------------------------------------------------------------------

    def serve(self) -> None:
        """Run batches until stopped (the actor's lifetime)."""
        # The device thread hands each batch to the compute process and takes its result back; the
        # feeder and the writer hold the GIL most of the time. Python lets a waiting thread in after
        # the holder has run this long (5 ms by default): the device would wait that long per handoff.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        ready: queue.Queue[ClaimedBatch | None] = queue.Queue(maxsize=READ_AHEAD)
        feeder = threading.Thread(target=self._feed, args=(ready,), name=f"feed-{self.device.slug}", daemon=True)
        feeder.start()
        bus = publisher(self.nats_url)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"commit-{self.device.slug}") as writer:
            writing = None
            while not self._stop.is_set():
                batch = ready.get()
                if batch is None:
                    break
                a = batch.admission
                try:
                    prediction = self.compute.predict(a.model_version, a.model_uri, batch.images)
                except ComputeLost:
                    log.error("the device's compute process went away; its batch is pending again, and a new "
                              "process starts", exc_info=True, extra={"device": self.device.uuid})
                    batch.close()
                    self.compute.close()
                    self.compute = self._start_compute()
                    self._note_compute_pid()
                    continue
                except Exception as exc:  # noqa: BLE001 - the job's step fails, the worker goes on
                    self._fail(batch, exc)
                    continue
                if prediction.loaded:
                    self._model_loaded(a.model_version)
                self.stats.compute_s += prediction.seconds
                interval = (prediction.began, prediction.began + timedelta(seconds=prediction.seconds))
                if writing is not None:
                    writing.exception()  # at most one commit in flight (and its row locks)
                writing = writer.submit(self._commit_and_publish, bus, batch, prediction.classes,
                                        prediction.confidences, interval)
            if writing is not None:
                writing.exception()
        self.compute.close()

    def stop(self) -> None:
        self._stop.set()

    def _commit_and_publish(self, bus, batch: ClaimedBatch, classes, confidences, interval) -> None:
        """On the writer thread: commits, and so progress events, go out in the order batches ran.
        The batch's time on the device and its commit are spans of the job's trace."""
        a = batch.admission
        attributes = {"constellation.device.uuid": self.device.uuid, "constellation.device.name": self.device.label,
                      "constellation.batch": batch.chunk_no, "constellation.tiles": len(batch.tiles)}
        tracing.record_span("infer batch", a.traceparent, *interval, job_id=a.job_id, attributes={
            **attributes, "constellation.batch.ms": round((interval[1] - interval[0]).total_seconds() * 1000, 2)})
        with tracing.span_of_job("commit batch", a.traceparent, job_id=a.job_id, attributes=attributes) as span:
            try:
                event = self._commit(batch, classes, confidences, interval)
            except Exception as exc:  # noqa: BLE001 - _commit failed the step; the batch is pending again
                tracing.mark_failed(span, exc)
                return
            if event is not None:
                bus.publish([event])

    def _feed(self, ready: queue.Queue) -> None:
        """Claim and read the next batch while the device computes the current one."""
        listener = None
        while not self._stop.is_set():
            try:
                batch = self._claim()
            except Exception:  # noqa: BLE001 - Postgres away: try again shortly
                log.warning("claiming a batch failed", exc_info=True)
                time.sleep(1.0)
                continue
            if batch is None:
                listener = self._wait_for_work(listener, AHEAD_RECHECK_S if self._held_back() else IDLE_RECHECK_S)
                continue
            try:
                batch.images = self._read(batch)
            except Exception as exc:  # noqa: BLE001 - unreadable imagery fails the job's step
                self._fail(batch, exc)
                continue
            ready.put(batch)
        ready.put(None)

    def _wait_for_work(self, listener: psycopg.Connection | None, timeout_s: float) -> psycopg.Connection | None:
        """Sleep until a job is admitted to this device (NOTIFY), or `timeout_s` passes."""
        try:
            if listener is None or listener.closed:
                listener = _listen(self.database_url, WAKE_CHANNEL)
                return listener  # look once more: an admission may have come before LISTEN
            wait_notified(listener, timeout_s, lambda note: note.payload in (self.device.uuid, "*"))
        except psycopg.Error:
            log.warning("listening for work failed", exc_info=True)
            time.sleep(1.0)
            return None
        return listener

    def _pending(self, *columns, wait_for_jobs_ahead: bool = True, lock: bool = True):
        """The best pending batch of the jobs admitted here (its `columns`), locked as it is read unless
        `lock` is False. With `wait_for_jobs_ahead`, none that would start a job while a job ahead of it
        is still planning (AHEAD_PLANNING_S)."""
        query = (
            select(*columns)
            .select_from(
                tile_chunks.join(jobs, jobs.c.id == tile_chunks.c.job_id)
                .join(steps, steps.c.job_id == tile_chunks.c.job_id)
            )
            .where(steps.c.gpu_id == self.gpu_id, steps.c.finished_at.is_(None),
                   steps.c.metrics["error"].astext.is_(None),
                   jobs.c.state == "running", tile_chunks.c.state == "pending")
            .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id, tile_chunks.c.chunk_no)
            .limit(1)
        )
        if lock:
            query = query.with_for_update(of=tile_chunks, skip_locked=True)
        if wait_for_jobs_ahead:
            ahead, ahead_steps = jobs.alias("ahead"), steps.alias("ahead_steps")
            planning_ahead = exists().where(
                ahead.c.state == "running", ahead.c.first_batch_at.is_(None),
                or_(ahead.c.priority > jobs.c.priority,
                    and_(ahead.c.priority == jobs.c.priority, ahead.c.created_at < jobs.c.created_at)),
                ahead.c.updated_at > func.now() - timedelta(seconds=AHEAD_PLANNING_S),
                or_(ahead.c.device_uuid.is_(None), ahead.c.device_uuid == self.device.uuid),
                ~exists().where(ahead_steps.c.job_id == ahead.c.id, ahead_steps.c.gpu_id == self.gpu_id),
            )
            query = query.where(or_(jobs.c.first_batch_at.is_not(None), ~planning_ahead))
        return query

    # The claim's statements, built once per worker (this device's values are in them): built for
    # every batch, constructing them and their cache keys was ~15 % of the device worker's CPU (py-spy
    # over a P9 drain); SQLAlchemy keeps a statement object's cache key.
    @cached_property
    def _held_back_statement(self):
        return self._pending(tile_chunks.c.chunk_no, wait_for_jobs_ahead=False, lock=False)

    @cached_property
    def _claim_statement(self):
        chunk = self._pending(
            tile_chunks.c.job_id, tile_chunks.c.chunk_no, steps.c.id.label("step_id"), steps.c.run_id,
            steps.c.model_version, steps.c.model_uri, jobs.c.account_id, jobs.c.tiles_total,
            jobs.c.params["imagery"].astext.label("imagery"),
            func.coalesce(steps.c.traceparent, jobs.c.traceparent).label("traceparent"),
        ).cte("chunk")
        return (select(chunk, tiles.c.z, tiles.c.x, tiles.c.y)
                .join(tiles, (tiles.c.job_id == chunk.c.job_id) & (tiles.c.chunk_no == chunk.c.chunk_no))
                .order_by(tiles.c.z, tiles.c.x, tiles.c.y))

    def _held_back(self) -> bool:
        """Whether a batch is pending here that a job ahead, still planning, may keep back (or that
        another device holds: either way, worth a look again soon). Locks nothing: a claim never skips
        a batch because this looked at it."""
        with self.engine.connect() as conn:
            return conn.execute(self._held_back_statement).first() is not None

    def _claim(self) -> ClaimedBatch | None:
        """Lock the next pending batch of the jobs admitted here and fetch its tiles (one round trip)."""
        conn = self.engine.connect()
        transaction = conn.begin()
        try:
            rows = conn.execute(self._claim_statement).all()
            if not rows:
                conn.close()
                return None
            first = rows[0]
            admission = Admission(first.step_id, first.job_id, first.run_id, first.account_id, first.tiles_total,
                                  first.model_version, first.model_uri, first.imagery, first.traceparent)
            return ClaimedBatch(conn, transaction, admission, first.chunk_no, rows)
        except BaseException:
            conn.close()
            raise

    def _read(self, batch: ClaimedBatch) -> np.ndarray:
        from constellation_core.inference.imagery import TileReader, ensure_demo_scene

        path = batch.admission.imagery or str(ensure_demo_scene(self.demo_imagery_dir))
        reader = self._readers.get(path)
        if reader is None:
            if len(self._readers) >= OPEN_READERS:
                oldest = next(iter(self._readers))
                self._readers.pop(oldest).__exit__(None, None, None)
            reader = self._readers[path] = TileReader(path).__enter__()
        return reader.read_many(batch.tiles)

    def _model_loaded(self, model_version: str) -> None:
        """The compute process loaded this model version onto the device (once per version)."""
        self.stats.model_loads.append(model_version)
        log.info("model loaded", extra={"device": self.device.uuid, "model_version": model_version})

    def _commit(self, batch: ClaimedBatch, classes, confidences, interval: tuple[datetime, datetime]) -> Event | None:
        """Store the batch's results, mark it done with its interval on the device, count progress on
        the job and the step, and commit with the progress event."""
        a, conn = batch.admission, batch.conn
        began, ended = interval
        batch_s = (ended - began).total_seconds()
        try:
            state = conn.execute(_JOB_STATE_LOCKED, {"b_job_id": a.job_id}).scalar_one()
            if state != "running":
                return None  # canceled (or failed) since the claim: its batches are not stored
            # Already-stored results (from a worker that died after its commit) are kept, never doubled.
            # The rows as parameters of one cached statement (sent as multi-row VALUES), not a statement
            # with each batch's values in it, compiled anew for every batch.
            inserted = len(conn.execute(
                _STORE_RESULTS,
                [{"job_id": a.job_id, "z": t.z, "x": t.x, "y": t.y, "run_id": a.run_id, "class": c,
                  "confidence": p, "inference_ms": batch_s * 1000 / len(batch.tiles), "device": self.device.label,
                  "gpu_id": self.gpu_id, "model_version": a.model_version}
                 for t, c, p in zip(batch.tiles, classes, confidences)],
            ).all())
            conn.execute(_BATCH_DONE, {"b_job_id": a.job_id, "b_chunk_no": batch.chunk_no,
                                       "b_device_uuid": self.device.uuid, "b_started_at": began,
                                       "b_finished_at": ended})
            conn.execute(_STEP_COUNTS, {"b_step_id": a.step_id, "b_tiles": inserted})
            done = conn.execute(_JOB_COUNTS, {"b_job_id": a.job_id, "b_tiles": inserted}).scalar_one()
            event = record_event(
                conn, "job.progress", account_id=a.account_id, job_id=a.job_id, run_id=a.run_id,
                payload={"tiles_done": done, "tiles_total": a.tiles_total, "device": self.device.uuid,
                         "tiles_per_s": round(len(batch.tiles) / batch_s, 2) if batch_s else None,
                         "batch": {"tiles": len(batch.tiles), "started_at": began.isoformat(),
                                   "finished_at": ended.isoformat()}},
            )
            notify_job(conn, a.job_id)
            batch.transaction.commit()
            self.stats.batches += 1
            self.stats.tiles += inserted
            return event
        except DBAPIError:
            log.warning("committing a batch failed; it is pending again", exc_info=True,
                        extra={"job_id": str(a.job_id), "device": self.device.uuid})
            raise
        except Exception as exc:
            self._fail_step(a, exc)
            raise
        finally:
            batch.close()

    def _fail(self, batch: ClaimedBatch, exc: BaseException) -> None:
        batch.close()
        a = batch.admission
        now = datetime.now(UTC)
        tracing.record_span("infer batch", a.traceparent, now, now, job_id=a.job_id, attributes={
            "constellation.device.uuid": self.device.uuid, "constellation.device.name": self.device.label,
            "constellation.batch": batch.chunk_no, "constellation.tiles": len(batch.tiles)},
            error=f"{type(exc).__name__}: {exc}"[:1000])
        self._fail_step(a, exc)

    def _fail_step(self, admission: Admission, exc: BaseException) -> None:
        """Record the error on the job's step here: this device takes no more of its batches, and the
        op that follows the step raises it (Dagster's retry policy decides what comes next)."""
        log.error("a batch failed", exc_info=exc, extra={"job_id": str(admission.job_id), "device": self.device.uuid})
        self.stats.failed_steps += 1
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(steps).where(steps.c.id == admission.step_id)
                    .values(metrics=steps.c.metrics.op("||")(func.jsonb_build_object(
                        literal_column("'error'"), f"{self.device.label}: {exc!r}"[:2000])))
                )
                notify_job(conn, admission.job_id)
        except Exception:  # noqa: BLE001 - Postgres away: the batch stays pending and is retried
            log.warning("recording the failure failed", exc_info=True)


def wake(conn: Connection, device_uuid: str) -> None:
    """Wake the worker of a device (delivered when `conn`'s transaction commits)."""
    _notify(conn, WAKE_CHANNEL, device_uuid)


def job_channel(job_id: UUID) -> str:
    return f"{JOB_CHANNEL_PREFIX}{job_id.hex}"


def notify_job(conn: Connection, job_id: UUID) -> None:
    """Tell whoever follows the job that its batches changed (delivered when `conn`'s transaction commits)."""
    _notify(conn, job_channel(job_id))


def _notify(conn: Connection, channel: str, payload: str = "") -> None:
    conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload})


def _listen(database_url: str, channel: str) -> psycopg.Connection:
    """A connection of its own (not pooled: it stays LISTENing) that receives `channel`'s notifications."""
    listener = psycopg.connect(_libpq_url(database_url), autocommit=True)
    listener.execute(f'LISTEN "{channel}"')
    return listener


def wait_notified(listener: psycopg.Connection, timeout_s: float,
                  wanted: Callable[[psycopg.Notify], bool] = lambda note: True) -> bool:
    """Wait until a notification `wanted` arrives on `listener` (True) or `timeout_s` passes (False).

    Sleeps in `select` on the connection's socket: psycopg's own `notifies(timeout=…)` wakes every
    0.1 s to look (~0.15 % of a core for each idle device worker). A dropped connection raises
    psycopg's error, as `notifies` does."""
    deadline = time.monotonic() + timeout_s
    while True:
        if any(wanted(note) for note in listener.notifies(timeout=0)):  # what has come, without waiting
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not io_select.select([listener.fileno()], [], [], remaining)[0]:
            return False


@contextmanager
def batches_notified(database_url: str, job_id: UUID) -> Iterator[Callable[[float], None]]:
    """A `wait(timeout_s)` that returns when one of the job's batches was committed or its step failed
    (`notify_job`), or after timeout_s. Listening starts before this yields: look at the batches after
    entering, then wait, and no notification is missed. Should Postgres be out of reach, `wait` sleeps
    (the caller's look tells it the outage)."""
    listener: psycopg.Connection | None = None

    def wait(timeout_s: float) -> None:
        nonlocal listener
        try:
            if listener is None or listener.closed:
                listener = _listen(database_url, job_channel(job_id))
                return  # listening from now: look again at once
            wait_notified(listener, timeout_s)
        except psycopg.Error:
            if listener is not None:
                listener.close()
            listener = None
            time.sleep(timeout_s)

    wait(0)
    try:
        yield wait
    finally:
        if listener is not None:
            listener.close()


def _libpq_url(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
