"""Resources for the external systems the code location talks to."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

import dagster as dg
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from constellation_core import tracing
from constellation_core.bus import publisher
from constellation_core.db import sync_engine
from constellation_core.devices import Device, device_spec, discover
from constellation_core.events import Event
from constellation_core.tables import gpus, jobs, steps, tile_chunks
from constellation_ray.worker import batches_notified, wake

log = logging.getLogger(__name__)


class SystemOfRecord(dg.ConfigurableResource):
    """The `constellation` Postgres database (jobs, runs, tiles, events)."""

    database_url: str

    @property
    def engine(self) -> Engine:
        return sync_engine(self.database_url)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only transaction whose queries all see the same snapshot (REPEATABLE READ)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield conn


class EventBus(dg.ConfigurableResource):
    """NATS JetStream. Publish only events whose transaction has committed.

    Publishing does not block (a background connection sends in order); `flush` waits for the
    acknowledgements, which ops and sensors do before they finish. NATS being away never fails the
    work: the events are committed in Postgres already, they wait in the publisher while it lives, and
    the API's stream fans out from Postgres what it missed when NATS is back.
    """

    nats_url: str

    def publish(self, events: Iterable[Event | None], *, flush: bool = False) -> None:
        try:
            publisher(self.nats_url).publish(events)
        except Exception:  # noqa: BLE001 - see the class's docstring
            log.warning("NATS is out of reach: events not published (they are in Postgres)", exc_info=True)
            return
        if flush:
            self.flush()

    def flush(self) -> None:
        try:
            publisher(self.nats_url).flush()
        except Exception:  # noqa: BLE001 - see the class's docstring
            log.warning("NATS did not acknowledge the events in time: they wait in the publisher", exc_info=True)


@dataclass(frozen=True)
class Followed:
    """How following a job on a device ended: every batch done (both None), the job or device gone
    (`stopped_because`; `devices_gone` for the latter), or the device's worker failed a batch (`error`)."""
    stopped_because: str | None = None
    error: str | None = None
    devices_gone: bool = False


class GpuFleet(dg.ConfigurableResource):
    """The devices, as the code location sees them, and the hand-over of jobs to their workers.

    The device workers (`constellation_ray`, one Ray actor per device) do the inference; an op admits
    its job to a device (`admit`) and follows it there (`follow`).
    """

    simulated_gpus: int | None = None
    # A following op looks at its job's batches when a device worker commits one of them or fails its
    # step (a Postgres notification), and at least this often (a cancel, a device gone); how long a
    # device may be gone (its worker or node died) before the op stops waiting for it. A worker Ray
    # restarts is back within seconds but loads its model again: up to ~40 s on two busy cores in the
    # chaos test.
    recheck_seconds: float = 1.0
    gone_grace_seconds: float = 90.0

    def devices(self) -> list[Device]:
        return discover(self.simulated_gpus)

    def sync(self, conn: Connection, devices: list[Device] | None = None) -> dict[str, UUID]:
        """Make sure each device has its `gpus` row (its worker adds its host and presence); return
        device uuid → gpus.id."""
        ids = {}
        for device in devices if devices is not None else self.devices():
            statement = pg_insert(gpus).values(
                uuid=device.uuid, name=device.label, total_mem_mb=device.total_mem_mb,
                compute_capability=device.compute_capability, simulated=device.simulated, spec=device_spec(device),
            )
            statement = statement.on_conflict_do_update(
                index_elements=[gpus.c.uuid],
                set_={c: statement.excluded[c] for c in ("name", "total_mem_mb", "compute_capability", "simulated")},
            ).returning(gpus.c.id)
            ids[device.uuid] = conn.execute(statement).scalar_one()
        return ids

    def admit(self, conn: Connection, *, job_id: UUID, run_id: UUID, device: Device, step_key: str,
              model_version: str, model_uri: str) -> UUID:
        """Open the job's step on the device and wake the device's worker (at commit)."""
        # Read, not upserted: an upsert locks the device's row and waited (~17 ms per admission in a
        # P9 backlog) for the worker's transaction that touched it; the worker registers its row.
        row = conn.execute(select(gpus.c.id, gpus.c.spec["worker_pid"].as_integer().label("worker_pid"))
                           .where(gpus.c.uuid == device.uuid)).one_or_none()
        gpu_id, worker_pid = row if row is not None else (self.sync(conn, [device])[device.uuid], None)
        step_id = conn.execute(
            pg_insert(steps).values(
                job_id=job_id, run_id=run_id, gpu_id=gpu_id, step_key=step_key, pid=worker_pid or os.getpid(),
                model_version=model_version, model_uri=model_uri,
                traceparent=tracing.current_traceparent(),  # the device's batch spans are its children
            ).returning(steps.c.id)
        ).scalar_one()
        wake(conn, device.uuid)
        return step_id

    def follow(self, db: SystemOfRecord, job_id: UUID, admitted: list[tuple[UUID, Device]]) -> Followed:
        """Wait until none of the job's batches is pending, the job is no longer running, a device's
        worker failed one of its batches, or every device it was admitted to has been gone for
        `gone_grace_seconds`."""
        step_ids = [step_id for step_id, _ in admitted]
        pending = (select(tile_chunks.c.chunk_no)
                   .where(tile_chunks.c.job_id == job_id, tile_chunks.c.state == "pending").exists())
        state = select(jobs.c.state).where(jobs.c.id == job_id).scalar_subquery()
        query = (
            select(pending.label("pending"), state.label("state"),
                   func.max(steps.c.metrics["error"].astext).label("error"),
                   func.bool_and(func.coalesce(
                       func.extract("epoch", func.now() - gpus.c.gone_at) > self.gone_grace_seconds, False))
                   .label("all_gone"))
            .select_from(steps.join(gpus, gpus.c.id == steps.c.gpu_id))
            .where(steps.c.id.in_(step_ids))
        )
        # Woken by the job's batch commits rather than polling (which, with 8 jobs held per device,
        # was ~40 queries and as many connection checks a second).
        with batches_notified(db.database_url, job_id) as wait:
            while True:
                with db.engine.connect() as conn:
                    row = conn.execute(query).one()
                if row.error:
                    return Followed(error=row.error)
                if row.state != "running":
                    return Followed(stopped_because=f"stopped, the job is {row.state}")
                if not row.pending:
                    return Followed()
                if row.all_gone:
                    return Followed(stopped_because="its devices are gone (their workers or machines stopped)",
                                    devices_gone=True)
                wait(self.recheck_seconds)
