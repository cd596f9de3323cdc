"""WS /stream: live events, resumable from an event id (history from `events`, then live, no gap)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Literal, NamedTuple
from uuid import UUID

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from api import access
from api.accounts.auth import Account, authenticate, key_from_headers
from api.errors import Problem, Unauthorized, problem_response
from api.events.service import Delivered, history
from api.metrics import EVENT_LAG
from api.stream.hub import Subscriber
from constellation_core.events import Event
from constellation_core.telemetry import GpuSample
from constellation_core.vocabulary import LOG_EVENT_TYPES

log = logging.getLogger(__name__)
router = APIRouter(tags=["stream"])

HEARTBEAT_S = 15.0
HISTORY_LIMIT = 10_000
# WebSocket close codes (RFC 6455 §7.4 and the registered 4xxx-free range).
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
# Events sent from a client's queue before it looks at its control messages again.
BURST = 100


@router.websocket("/stream")
async def stream(
    websocket: WebSocket,
    job_id: UUID | None = Query(default=None, description="Only this job's events"),
    after: int | None = Query(default=None, ge=0, description="Resume after this event id"),
    api_key: str | None = Query(default=None, include_in_schema=False),
    gpus: bool = Query(default=False, description="Also send GPU telemetry samples (1 Hz per device)"),
) -> None:
    """One socket, many subscriptions, authenticated by `Authorization: Bearer <key>` (or `X-API-Key`),
    or from a browser by the subprotocols `["constellation.v1", "bearer.<key>"]` (never by the URL).
    The query string sets the first subscription (every job, or `job_id`;
    `gpus=true` adds telemetry; `after` replays from that event id). Then the client may send
    `{"type": "subscribe" | "unsubscribe", "topic": "jobs" | "job" | "logs" | "gpus", "job_id": …, "after": …}`;
    each is answered with `subscribed` / `unsubscribed` or an `error`. Every event is sent once per
    socket, in id order, and only once every smaller id has settled (an event past a gap waits for it:
    usually milliseconds), so the last id a client got is where it resumes; a replay (`after`) sends
    history first, then live."""
    engine = websocket.app.state.engine
    hub = websocket.app.state.hub
    key_protocol, app_protocol = _offered_protocols(websocket)
    try:
        if api_key is not None:
            raise Unauthorized("an API key in the URL is not accepted (URLs end up in logs and history): send "
                               "`Authorization: Bearer <key>`, or from a browser the subprotocol `bearer.<key>`")
        account = await authenticate(
            engine,
            key_from_headers(websocket.headers.get("authorization"), websocket.headers.get("x-api-key"))
            or key_protocol,
        )
        await _check_job_access(engine, account, job_id)
        hub.check_stream_limit(account)
    except Problem as exc:
        await _refuse(websocket, exc)
        return
    await websocket.accept(subprotocol=app_protocol)
    subscriber = Subscriber(account=account, job_id=job_id, gpus=gpus)
    # Subscribe before reading history, then skip live events already sent: no gap, no repeat.
    hub.add(subscriber)
    delivered = Delivered(after or 0)

    async def send(events: list[Event], *, live: bool = False) -> None:
        for event in events:
            if delivered.fresh_live(event) if live else delivered.fresh(event):
                await websocket.send_text(event.json_text)
                delivered.mark(event)
                if live:
                    EVENT_LAG.observe(max(0.0, (datetime.now(UTC) - event.ts).total_seconds()))

    # One queue wakes this loop for everything, in order: the hub's events, this client's control
    # messages (read by a task of their own) and the heartbeat's tick. A plain `queue.get()` per wake-up,
    # not a task and an `asyncio.wait` per event: the API's CPU per delivery 29.8 → 23.5 µs at 50 clients
    # × 500 events/s (bench/p2_stream_latency.py, side by side in one run).
    tasks: list[asyncio.Task] = []
    try:
        if after is not None:
            await send(await _history(engine, hub, account, ("job", job_id) if job_id else ("jobs", None), after))
        sent_at = [time.monotonic()]
        tasks = [asyncio.create_task(_read_controls(websocket, subscriber.queue)),
                 asyncio.create_task(_beat(subscriber.queue, sent_at))]
        while True:
            if subscriber.revoked:
                await websocket.close(code=POLICY_VIOLATION, reason=subscriber.revoked[:120])
                return
            if subscriber.dropped and subscriber.queue.empty():
                await websocket.close(code=TRY_AGAIN_LATER,
                                      reason=f"too slow; reconnect with after={delivered.last}")
                return
            batch = [await subscriber.queue.get()]
            # What is queued already goes out without another wait: one wake-up per burst, not per event.
            while len(batch) < BURST and not subscriber.queue.empty():
                batch.append(subscriber.queue.get_nowait())
            for item in batch:
                if subscriber.revoked:
                    break  # closed at the top of the loop, with the reason
                if item is None:  # the server is shutting down
                    await websocket.close(code=1001)
                    return
                if item is _DISCONNECTED:
                    return
                if isinstance(item, _Control):
                    await send(await _control(websocket, engine, account, subscriber, item.text))
                elif item is _HEARTBEAT:
                    if time.monotonic() - sent_at[0] < HEARTBEAT_S:
                        continue  # something went out since the tick
                    await websocket.send_json({"type": "heartbeat", "last_event_id": delivered.last})
                elif isinstance(item, GpuSample):  # telemetry: live only, no id
                    await websocket.send_text(item.model_dump_json())
                else:
                    await send([item], live=True)
                sent_at[0] = time.monotonic()
    except WebSocketDisconnect:
        pass
    except TimeoutError:  # the hub has not reached Postgres since this API started: history has no end yet
        await websocket.close(code=TRY_AGAIN_LATER, reason="the event history cannot be read yet; try again")
    finally:
        for task in tasks:
            task.cancel()
        hub.remove(subscriber)


class _Control(NamedTuple):
    """A control message from the client, queued with its events; `text` None for a binary frame."""
    text: str | None


_HEARTBEAT = object()  # the heartbeat's tick: a heartbeat goes out if nothing else did for HEARTBEAT_S
_DISCONNECTED = object()  # the client went away


async def _read_controls(websocket: WebSocket, queue: asyncio.Queue) -> None:
    """Queue the client's control messages, then that it went away."""
    try:
        while True:
            await queue.put(_Control(await _receive_control(websocket)))
    except Exception:  # noqa: BLE001 - a disconnect, or a receive on a socket already closed (a cancel passes)
        await queue.put(_DISCONNECTED)


async def _beat(queue: asyncio.Queue, sent_at: list[float]) -> None:
    """Queue a tick whenever nothing was sent for HEARTBEAT_S (`sent_at[0]`: the last send)."""
    while True:
        due = sent_at[0] + HEARTBEAT_S - time.monotonic()
        if due > 0:
            await asyncio.sleep(due)
            continue
        if not queue.full():
            queue.put_nowait(_HEARTBEAT)
        await asyncio.sleep(HEARTBEAT_S)


# Browsers cannot set headers on a WebSocket: they send the key as a subprotocol, `bearer.<key>`, next
# to `constellation.v1`, which the server selects (a key is never selected, so never echoed back).
APP_PROTOCOL = "constellation.v1"
KEY_PROTOCOL_PREFIX = "bearer."


def _offered_protocols(websocket: WebSocket) -> tuple[str | None, str | None]:
    """The key a browser offered as a subprotocol, and the application protocol to select (if offered)."""
    offered = websocket.scope.get("subprotocols") or []
    key = next((p.removeprefix(KEY_PROTOCOL_PREFIX) for p in offered if p.startswith(KEY_PROTOCOL_PREFIX)), None)
    return key or None, APP_PROTOCOL if APP_PROTOCOL in offered else None


async def _refuse(websocket: WebSocket, problem: Problem) -> None:
    """Refuse the handshake with the reason: an HTTP problem+json answer (401, 404) where the server
    can send one, else a close with code 1008 and the reason."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            problem_response(problem.status, problem.title, problem.detail, instance=websocket.url.path,
                             headers=problem.headers))
    else:
        await websocket.close(code=POLICY_VIOLATION, reason=problem.detail[:120])


async def _receive_control(websocket: WebSocket) -> str | None:
    """The next control message's text; None for a binary frame (answered with an error, not a crash)."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message.get("text")


class ControlMessage(BaseModel):
    type: Literal["subscribe", "unsubscribe"]
    topic: Literal["jobs", "job", "logs", "gpus"]
    job_id: UUID | None = None
    after: int | None = Field(default=None, ge=0)


async def _control(websocket: WebSocket, engine, account: Account, subscriber: Subscriber,
                   raw: str | None) -> list[Event]:
    """Apply one subscribe/unsubscribe message; the history to replay, if it asked for one."""
    if raw is None:
        await websocket.send_json({"type": "error", "detail": "binary frames are not understood: send JSON text"})
        return []
    try:
        message = ControlMessage.model_validate_json(raw)
        if (message.topic in ("job", "logs")) != (message.job_id is not None):
            raise ValueError("`job_id` goes with the topics `job` and `logs`, and only with them")
        await _check_job_access(engine, account, message.job_id)
    except (ValueError, Problem) as exc:
        detail = exc.detail if isinstance(exc, Problem) else str(exc).splitlines()[0]
        await websocket.send_json({"type": "error", "detail": detail[:300]})
        return []
    topic = (message.topic, message.job_id)
    if message.type == "unsubscribe":
        subscriber.topics.discard(topic)
        await websocket.send_json({"type": "unsubscribed", "topic": message.topic,
                                   "job_id": str(message.job_id) if message.job_id else None})
        return []
    subscriber.topics.add(topic)
    await websocket.send_json({"type": "subscribed", "topic": message.topic,
                               "job_id": str(message.job_id) if message.job_id else None})
    if message.after is None or message.topic == "gpus":
        return []
    return await _history(engine, websocket.app.state.hub, account, topic, message.after)


async def _check_job_access(engine, account: Account, job_id: UUID | None) -> None:
    if job_id is not None:
        async with engine.connect() as conn:
            await access.require_job(conn, account, job_id)


async def _history(engine, hub, account: Account, topic: tuple[str, UUID | None], after: int) -> list[Event]:
    """The topic's events after `after`, up to the hub's position: every later one comes live (the
    subscriber was added first), in id order, so the client's last id is always a place to resume."""
    kind, job_id = topic
    until = await hub.position()
    async with engine.connect() as conn:
        return await history(conn, account, after=after, job_id=job_id, jobs_only=True, limit=HISTORY_LIMIT,
                             types=LOG_EVENT_TYPES if kind == "logs" else None, until=until)
