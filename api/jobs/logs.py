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

from api.accounts.auth import Account
from api.events.service import Delivered, history
from api.stream.hub import StreamHub, Subscriber
from constellation_core.events import Event
from constellation_core.tables import jobs
from constellation_core.vocabulary import LOG_EVENT_TYPES, TERMINAL_JOB_STATES

KEEPALIVE_S = 15.0
HISTORY_LIMIT = 10_000


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
    return event.type == "job.state" and event.payload.get("state") in TERMINAL_JOB_STATES


async def log_stream(engine, hub: StreamHub, account: Account, job_id: UUID, after: int) -> AsyncIterator[str]:
    """The caller has been checked for access to the job."""
    subscriber = Subscriber(account=account, topics={("logs", job_id)})
    hub.add(subscriber)  # before reading history: nothing committed meanwhile is missed
    delivered = Delivered(after)
    try:
        try:
            until = await hub.position()  # every later event comes live, in id order
        except TimeoutError:  # the hub has not reached Postgres since this API started: the client retries
            yield "retry: 2000\n\n"
            return
        async with engine.connect() as conn:
            past = await history(conn, account, after=after, job_id=job_id, types=LOG_EVENT_TYPES,
                                 limit=HISTORY_LIMIT, until=until)
            state = (await conn.execute(select(jobs.c.state).where(jobs.c.id == job_id))).scalar_one()
        yield "retry: 2000\n\n"
        for event in past:
            yield sse(event)
            delivered.mark(event)
            if _ends(event):
                return
        if state in TERMINAL_JOB_STATES:  # ended before `after`: nothing more will come
            return
        while True:
            try:
                event = await asyncio.wait_for(subscriber.queue.get(), timeout=KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if subscriber.revoked:
                yield f"event: revoked\ndata: {json.dumps({'detail': subscriber.revoked})}\n\n"
                return  # a reconnect with the same key gets 401
            if event is None or subscriber.dropped:
                return  # server shutting down or client too slow: it reconnects with Last-Event-ID
            if not isinstance(event, Event) or not delivered.fresh_live(event):
                continue
            yield sse(event)
            delivered.mark(event)
            if _ends(event):
                return
    finally:
        hub.remove(subscriber)
