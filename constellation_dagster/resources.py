"""Resources for the external systems the code location talks to."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import dagster as dg
from sqlalchemy import Connection, Engine

from constellation_core.bus import publish_events_sync
from constellation_core.db import sync_engine
from constellation_core.events import Event


class SystemOfRecord(dg.ConfigurableResource):
    """The `constellation` Postgres database (jobs, runs, tiles, events)."""

    database_url: str

    @property
    def engine(self) -> Engine:
        return sync_engine(self.database_url)

    @contextmanager
    def begin(self) -> Iterable[Connection]:
        with self.engine.begin() as conn:
            yield conn


class EventBus(dg.ConfigurableResource):
    """NATS JetStream. Publish only events whose transaction has committed."""

    nats_url: str

    def publish(self, events: Iterable[Event | None]) -> None:
        publish_events_sync(self.nats_url, [e for e in events if e is not None])
