"""Resources for the external systems the code location talks to."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from uuid import UUID

import dagster as dg
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert

from constellation_core.bus import publisher
from constellation_core.db import sync_engine
from constellation_core.devices import Device, cpu_threads, discover
from constellation_core.events import Event
from constellation_core.tables import gpus


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


class EventBus(dg.ConfigurableResource):
    """NATS JetStream. Publish only events whose transaction has committed.

    Publishing does not block (a background connection sends in order); `flush` waits for the
    acknowledgements, which ops and sensors do before they finish.
    """

    nats_url: str

    def publish(self, events: Iterable[Event | None], *, flush: bool = False) -> None:
        bus = publisher(self.nats_url)
        bus.publish(events)
        if flush:
            bus.flush()

    def flush(self) -> None:
        publisher(self.nats_url).flush()


class GpuFleet(dg.ConfigurableResource):
    """The devices of this host (NVML GPUs, declared simulated GPUs, or the CPU).

    Each inference step leases one device: CUDA_VISIBLE_DEVICES is set in the step's process before
    CUDA starts, so the step sees exactly its GPU (simulated and CPU devices hide every GPU).
    """

    simulated_gpus: int | None = None

    def devices(self) -> list[Device]:
        return discover(self.simulated_gpus)

    def sync(self, conn: Connection) -> dict[str, UUID]:
        """Keep the `gpus` table current; return device uuid → gpus.id."""
        ids = {}
        for device in self.devices():
            statement = pg_insert(gpus).values(
                uuid=device.uuid, name=device.label, total_mem_mb=device.total_mem_mb,
                compute_capability=device.compute_capability, simulated=device.simulated,
            )
            statement = statement.on_conflict_do_update(
                index_elements=[gpus.c.uuid],
                set_={c: statement.excluded[c] for c in ("name", "total_mem_mb", "compute_capability", "simulated")},
            ).returning(gpus.c.id)
            ids[device.uuid] = conn.execute(statement).scalar_one()
        return ids

    @contextmanager
    def lease(self, device: Device) -> Iterator[str]:
        """Narrow this process to `device`; yields the torch device string to use."""
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device.index) if device.kind == "cuda" else ""
        if device.kind != "cuda":
            # Simulated devices share the host's cores: each gets its share of torch's threads
            # rather than every step oversubscribing all of them.
            import torch

            torch.set_num_threads(cpu_threads(self.devices()))
        try:
            yield device.torch_device
        finally:
            if previous is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = previous
