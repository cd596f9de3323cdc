"""GET /jobs/{id}/logs: the job's log lines and state changes as Server-Sent Events.

History comes from `events`, then live lines from the stream hub, with no gap and no repeat; each
message carries its event id, so a client that reconnects with `Last-Event-ID` (browsers do it by
themselves) resumes exactly where it left off. The stream ends after the job's terminal state.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from uuid import UUID

from sqlalchemy import select

from api.stream.hub import StreamHub, Subscriber
from constellation_core.events import Event
from constellation_core.tables import events, jobs

LOG_TYPES = ("job.log", "job.state")
TERMINAL = ("succeeded", "failed", "canceled")
KEEPALIVE_S = 15.0


def sse(event: Event) -> str:
    data = {"ts": event.ts.isoformat(), "run_id": str(event.run_id) if event.run_id else None}
    if event.type == "job.log":
        data |= {"level": event.payload.get("level", "info"), "message": event.payload.get("message", "")}
        kind = "log"
    else:
        data |= {"state": event.payload.get("state"), "message": f"job {event.payload.get('state')}",
                 **({"error": event.payload["error"]} if event.payload.get("error") else {})}
        kind = "state"
    return f"id: {event.id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"


def _ends(event: Event) -> bool:
    return event.type == "job.state" and event.payload.get("state") in TERMINAL


async def log_stream(engine, hub: StreamHub, job_id: UUID, after: int) -> AsyncIterator[str]:
    subscriber = Subscriber(topics={("logs", job_id)})
    hub.add(subscriber)  # before reading history: nothing committed meanwhile is missed
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(
                select(events).where(events.c.job_id == job_id, events.c.id > after, events.c.type.in_(LOG_TYPES))
                .order_by(events.c.id)
            )).mappings().all()
            state = (await conn.execute(select(jobs.c.state).where(jobs.c.id == job_id))).scalar_one()
        last = after
        yield "retry: 2000\n\n"
        for row in rows:
            event = Event.model_validate(dict(row))
            yield sse(event)
            last = event.id
            if _ends(event):
                return
        if state in TERMINAL:  # ended before `after`: nothing more will come
            return
        while True:
            try:
                event = await asyncio.wait_for(subscriber.queue.get(), timeout=KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event is None or subscriber.dropped:
                return  # server shutting down or client too slow: it reconnects with Last-Event-ID
            if not isinstance(event, Event) or event.type not in LOG_TYPES or event.id <= last:
                continue
            yield sse(event)
            last = event.id
            if _ends(event):
                return
    finally:
        hub.remove(subscriber)
