"""Dependencies shared by the routers, as `Annotated` aliases."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from api.accounts.auth import Account, authenticate, key_from_headers
from api.metrics import NATS_PUBLISH_FAILURES
from constellation_core.bus import publish_events
from constellation_core.events import Event
from constellation_core.settings import Settings

log = logging.getLogger(__name__)


# Dependencies are `async def` even when they never await: FastAPI runs a plain `def` dependency in
# its thread pool, a thread hop per request for a dictionary lookup.


async def get_engine(request: Request) -> AsyncEngine:
    return request.app.state.engine


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def current_account(
    engine: EngineDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Account:
    return await authenticate(engine, key_from_headers(authorization, x_api_key))


CurrentAccount = Annotated[Account, Depends(current_account)]


class EventPublisher:
    """Publishes committed events to NATS. A failure is logged, not raised: the `events` row
    is the durable record, and stream clients resume from it."""

    def __init__(self, request: Request) -> None:
        self._nats = request.app.state.nats

    async def __call__(self, *events: Event) -> None:
        try:
            await publish_events(self._nats.jetstream(), events)
        except Exception:  # noqa: BLE001 - see class docstring
            NATS_PUBLISH_FAILURES.inc(len(events))
            log.warning("could not publish events to NATS", exc_info=True, extra={"event_ids": [e.id for e in events]})


async def get_publisher(request: Request) -> EventPublisher:
    return EventPublisher(request)


PublisherDep = Annotated[EventPublisher, Depends(get_publisher)]
