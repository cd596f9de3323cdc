"""NATS with JetStream: one stream over `constellation.>`, events published after commit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from constellation_core.events import STREAM_NAME, SUBJECT_ROOT, Event

STREAM_MAX_AGE_S = 7 * 24 * 3600


async def connect(url: str, *, name: str, **kwargs) -> NATS:
    return await nats.connect(url, name=name, connect_timeout=2, max_reconnect_attempts=-1, **kwargs)


async def ensure_stream(js: JetStreamContext) -> None:
    config = StreamConfig(
        name=STREAM_NAME,
        subjects=[f"{SUBJECT_ROOT}.>"],
        max_age=STREAM_MAX_AGE_S,
        duplicate_window=120,
    )
    try:
        await js.stream_info(STREAM_NAME)
        await js.update_stream(config)
    except NotFoundError:
        await js.add_stream(config)


async def publish_events(js: JetStreamContext, events: Iterable[Event]) -> None:
    for event in events:
        # The event id doubles as the JetStream message id, so a re-publish is deduplicated.
        await js.publish(event.subject, event.to_bytes(), headers={"Nats-Msg-Id": str(event.id)})


def publish_events_sync(url: str, events: Iterable[Event]) -> None:
    """For synchronous code (Dagster ops and sensors): connect, publish, close."""
    events = [e for e in events if e is not None]
    if not events:
        return

    async def _publish() -> None:
        nc = await nats.connect(url, name="constellation-dagster", connect_timeout=2, max_reconnect_attempts=1)
        try:
            await publish_events(nc.jetstream(), events)
        finally:
            await nc.drain()

    asyncio.run(_publish())
