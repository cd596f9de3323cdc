"""WS /stream: live events, resumable from an event id (history from `events`, then live, no gap)."""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from sqlalchemy import select

from api.accounts.auth import Account, authenticate, key_from_headers
from api.errors import Problem
from api.stream.hub import Subscriber
from constellation_core.events import Event
from constellation_core.tables import events, jobs
from constellation_core.telemetry import GpuSample

log = logging.getLogger(__name__)
router = APIRouter(tags=["stream"])

HEARTBEAT_S = 15.0
HISTORY_LIMIT = 10_000
# WebSocket close codes (RFC 6455 §7.4 and the registered 4xxx-free range).
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


@router.websocket("/stream")
async def stream(
    websocket: WebSocket,
    job_id: UUID | None = Query(default=None, description="Only this job's events"),
    after: int | None = Query(default=None, ge=0, description="Resume after this event id"),
    api_key: str | None = Query(default=None, description="For browsers, which cannot set headers"),
    gpus: bool = Query(default=False, description="Also send GPU telemetry samples (1 Hz per device)"),
) -> None:
    engine = websocket.app.state.engine
    hub = websocket.app.state.hub
    try:
        account = await authenticate(
            engine,
            api_key or key_from_headers(websocket.headers.get("authorization"), websocket.headers.get("x-api-key")),
        )
        await _check_job_access(engine, account, job_id)
    except Problem as exc:
        await websocket.close(code=POLICY_VIOLATION, reason=exc.detail[:120])
        return
    await websocket.accept()
    subscriber = Subscriber(job_id=job_id, account_id=None if account.is_admin else account.id, gpus=gpus)
    # Subscribe before reading history, then skip live events already sent: no gap, no repeat.
    hub.add(subscriber)
    try:
        last_sent = after or 0
        if after is not None:
            for event in await _history(engine, subscriber, after):
                await websocket.send_text(event.model_dump_json())
                last_sent = event.id
        while True:
            if subscriber.dropped and subscriber.queue.empty():
                await websocket.close(code=TRY_AGAIN_LATER, reason=f"too slow; reconnect with after={last_sent}")
                return
            try:
                event = await asyncio.wait_for(subscriber.queue.get(), timeout=HEARTBEAT_S)
            except TimeoutError:
                await websocket.send_json({"type": "heartbeat", "last_event_id": last_sent})
                continue
            if event is None:  # the server is shutting down
                await websocket.close(code=1001)
                return
            if isinstance(event, GpuSample):  # telemetry: live only, no id
                await websocket.send_text(event.model_dump_json())
                continue
            if event.id <= last_sent:
                continue
            await websocket.send_text(event.model_dump_json())
            last_sent = event.id
    except WebSocketDisconnect:
        pass
    finally:
        hub.remove(subscriber)


async def _check_job_access(engine, account: Account, job_id: UUID | None) -> None:
    if job_id is None or account.is_admin:
        return
    async with engine.connect() as conn:
        owner = (await conn.execute(select(jobs.c.account_id).where(jobs.c.id == job_id))).scalar_one_or_none()
    if owner != account.id:
        raise Problem(f"no job with id {job_id}")


async def _history(engine, subscriber: Subscriber, after: int) -> list[Event]:
    query = select(events).where(events.c.id > after).order_by(events.c.id).limit(HISTORY_LIMIT)
    if subscriber.job_id is not None:
        query = query.where(events.c.job_id == subscriber.job_id)
    if subscriber.account_id is not None:
        query = query.where(events.c.account_id == subscriber.account_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [Event.model_validate(dict(row)) for row in rows]
