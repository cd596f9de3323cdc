"""Fans NATS events out to stream clients. A slow client is dropped; it never slows the others."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from uuid import UUID

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api import access
from api.accounts.auth import REVOCATION_SUBJECT, Account, Revocation, forget
from api.accounts.limits import TooManyRequests
from api.metrics import STREAM_CLIENTS, STREAM_DROPPED
from constellation_core import tracing
from constellation_core.events import (
    LAST_EVENT_ID,
    SUBJECT_ROOT,
    Event,
    settled_event_id,
)
from constellation_core.tables import events
from constellation_core.telemetry import GpuSample
from constellation_core.vocabulary import LOG_EVENT_TYPES

log = logging.getLogger(__name__)

CLIENT_QUEUE_SIZE = 1000


@dataclass(eq=False)
class Subscriber:
    """One client's subscriptions: ("jobs", None) every visible job; ("job", id) one job's events;
    ("logs", id) one job's log lines and states; ("gpus", None) telemetry samples."""

    account: Account  # whose client: what it may see is the access policy's answer
    job_id: UUID | None = None  # initial subscription: this job (else every job, unless `topics` is given)
    gpus: bool = False  # also GPU telemetry samples
    topics: set[tuple[str, UUID | None]] | None = None
    # What goes to the client, in order (None: the server is stopping); the WebSocket route also queues
    # its client's control messages and heartbeat ticks here, so one `get()` wakes it for all of them.
    queue: asyncio.Queue[Event | GpuSample | None | object] = field(
        default_factory=lambda: asyncio.Queue(CLIENT_QUEUE_SIZE)
    )
    dropped: bool = False
    revoked: str | None = None  # why its key stopped working: the client is closed with this reason

    def __post_init__(self) -> None:
        if self.topics is None:
            self.topics = {("job", self.job_id) if self.job_id else ("jobs", None)}
        if self.gpus:
            self.topics.add(("gpus", None))

    def wants(self, message: Event | GpuSample) -> bool:
        topics = self.topics
        if isinstance(message, GpuSample):
            return ("gpus", None) in topics
        if not access.may_see(self.account, message.account_id):
            return False
        return (("jobs", None) in topics or ("job", message.job_id) in topics
                or (message.type in LOG_EVENT_TYPES and ("logs", message.job_id) in topics))

    def view(self, message: Event | GpuSample) -> Event | GpuSample:
        return access.device_sample(self.account, message) if isinstance(message, GpuSample) else message


# Events go out in id order, each once, and an event goes out only when every smaller id has settled
# (committed, or rolled back for good): a client that resumes from the last id it got misses nothing.
# Ids are handed out in one order and committed in another, and several processes publish them, so
# NATS may bring id 7 before 6, or never bring 6 (its process was killed between its commit and its
# publish; NATS was away). An event past a gap waits GAP_WAIT_S for NATS to fill it, then the hub asks
# Postgres up to which id everything has settled (`settled_event_id`: just below the first id of a
# transaction still open) and reads the missing rows. The same look runs when NATS comes back, every
# TAIL_CHECK_S while events are held (their gap is an open transaction's), and when the last id handed
# out a tick ago has not come (the last event of a burst NATS never brought: no later one shows the gap).
# With no event for a while the look backs off to TAIL_IDLE_S, and with no stream client it stops (a
# client that connects triggers one at once): an idle API's cost, not a busy one's.
GAP_WAIT_S = 0.05
TAIL_CHECK_S = 1.0
TAIL_IDLE_S = 5.0
SETTLE_RETRY_S = 1.0
BACKFILL_LIMIT = 50_000  # rows read from Postgres in one look
HELD_MAX = 100_000  # events held past a gap before they go out regardless (Postgres unreachable meanwhile)
TRACED_PENDING_MAX = 10_000


class StreamHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._subscription = None
        # device uuid → its latest sample (GET /gpus); history is Prometheus's (GET /gpus/{uuid}/telemetry)
        self._latest_gpu_samples: dict[str, GpuSample] = {}
        # event id → (traceparent, received, subject) of traced events not yet fanned out (bounded below)
        self._traced: OrderedDict[int, tuple[str, float, str]] = OrderedDict()
        self._engine: AsyncEngine | None = None
        # Every event up to `_position` has settled and gone out (None: not known yet, until the first
        # look in Postgres); `_held`: events that came past a gap, waiting for it to fill.
        self._position: int | None = None
        self._positioned = asyncio.Event()
        self._held: dict[int, Event] = {}
        self._wake = asyncio.Event()  # a gap opened, or NATS came back
        self._look_now = False  # NATS came back: look in Postgres whatever is held
        self._keeper: asyncio.Task | None = None

    async def start(self, nc: NATS, engine: AsyncEngine | None = None) -> None:
        """Listen to NATS; with `engine`, fan events out in id order (without, as they come)."""
        self._engine = engine
        self._subscription = await nc.subscribe(f"{SUBJECT_ROOT}.>", cb=self._on_message)
        if engine is not None:
            self._keeper = asyncio.create_task(self._keep_in_order())

    async def on_reconnected(self) -> None:
        """NATS callback: fan out what was committed while this API was away, from Postgres."""
        self._look_now = True
        self._wake.set()

    async def position(self, timeout_s: float = 10.0) -> int | None:
        """The id up to which every event has gone out to the subscribers of this moment: a stream's
        replay reads history up to it, and its subscriber (added before) gets every later event live.
        None when this hub does not order events (no Postgres)."""
        if self._engine is None:
            return None
        await asyncio.wait_for(self._positioned.wait(), timeout=timeout_s)
        return self._position

    async def _keep_in_order(self) -> None:
        tail = None  # the id handed out last, a tick ago
        tail_wait = TAIL_CHECK_S
        while True:
            woke = False
            if self._position is not None:  # (the first look is at once)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=tail_wait)
                    woke = True
                except TimeoutError:
                    pass
            self._wake.clear()
            if woke and not self._look_now:
                await asyncio.sleep(GAP_WAIT_S)  # NATS usually brings the missing event within milliseconds
            if not (self._subscribers or self._held or self._look_now or self._position is None):
                tail = None  # no one to send to: nothing to look for (a client's arrival wakes this)
                continue
            try:
                async with self._engine.connect() as conn:
                    if (self._position is None or self._look_now or self._held
                            or (tail is not None and tail > self._position)):
                        self._look_now = False
                        await self._settle(conn)
                    last = (await conn.execute(LAST_EVENT_ID)).scalar_one()
                tail_wait = TAIL_CHECK_S if last != tail else min(tail_wait * 2, TAIL_IDLE_S)
                tail = last
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Postgres away: held events wait for it (bounded by HELD_MAX)
                log.warning("looking in Postgres for the events NATS did not bring failed", exc_info=True)
                self._look_now = True
                await asyncio.sleep(SETTLE_RETRY_S)

    async def _settle(self, conn: AsyncConnection) -> None:
        """Fan out, in id order, every event up to the id that has settled now, reading from Postgres
        those that NATS has not brought."""
        missed: list[Event] = []
        settled = await settled_event_id(conn)
        if self._position is not None and settled > self._position:
            rows = (await conn.execute(select(events).where(events.c.id > self._position, events.c.id <= settled)
                                       .order_by(events.c.id).limit(BACKFILL_LIMIT))).mappings().all()
            missed = [Event.model_validate(dict(row)) for row in rows]
            if len(rows) == BACKFILL_LIMIT:
                settled = rows[-1]["id"]  # the rest on the next look
        if self._position is None:  # the first look: what settled before this hub is history
            self._position = settled
            self._positioned.set()
        from_postgres = []
        for event in missed:
            if event.id <= self._position:
                continue  # NATS brought it while Postgres was read
            held = self._held.pop(event.id, None)
            if held is None:
                from_postgres.append(event.id)
            self._position = event.id
            self._fan_out(held or event)
        self._position = max(self._position, settled)
        for event_id in [i for i in self._held if i <= self._position]:
            del self._held[event_id]  # committed before this hub's first look: history, not live
        self._release_held()
        if from_postgres:
            log.warning("events fanned out from Postgres: NATS had not brought them",
                        extra={"events": len(from_postgres), "ids": from_postgres[:20]})

    def _release_held(self) -> None:
        while (event := self._held.pop(self._position + 1, None)) is not None:
            self._position = event.id
            self._fan_out(event)

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        for subscriber in list(self._subscribers):
            if not subscriber.queue.full():
                subscriber.queue.put_nowait(None)

    def latest_gpu_sample(self, device_uuid: str) -> GpuSample | None:
        return self._latest_gpu_samples.get(device_uuid)

    def add(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)
        STREAM_CLIENTS.set(len(self._subscribers))
        if len(self._subscribers) == 1:  # the looks in Postgres resume (they stop while no one listens)
            self._look_now = True
            self._wake.set()

    def check_stream_limit(self, account: Account) -> None:
        """429 when the account already holds as many streams (WebSocket and SSE alike, in this process)
        as it may."""
        limit = account.limits.max_streams
        if limit is not None and sum(1 for s in self._subscribers if s.account.id == account.id) >= limit:
            raise TooManyRequests(f"this account has {limit} streams open, its limit: close one first")

    def remove(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        STREAM_CLIENTS.set(len(self._subscribers))

    def revoke(self, revocation: Revocation) -> int:
        """Forget these keys and end the streams that use them (each gets the reason); how many ended."""
        forget(revocation)
        ended = 0
        for subscriber in list(self._subscribers):
            if revocation.covers(subscriber.account):
                subscriber.revoked = revocation.reason
                self.remove(subscriber)
                if not subscriber.queue.full():
                    subscriber.queue.put_nowait(None)  # wakes its stream, which sees `revoked`
                ended += 1
        return ended

    async def _on_message(self, msg: Msg) -> None:
        if msg.subject == REVOCATION_SUBJECT:
            try:
                self.revoke(Revocation.from_bytes(msg.data))
            except (ValueError, TypeError, AttributeError):
                log.warning("ignoring a malformed revocation", extra={"subject": msg.subject})
            return
        try:
            if msg.subject.startswith(f"{SUBJECT_ROOT}.gpus."):
                message: Event | GpuSample = GpuSample.model_validate_json(msg.data)
                self._latest_gpu_samples[message.device_uuid] = message
            else:
                message = Event.from_bytes(msg.data)
        except ValueError:
            log.warning("ignoring a malformed message", extra={"subject": msg.subject})
            return
        if not isinstance(message, Event):
            self._fan_out(message)
            return
        if message.type in LOG_EVENT_TYPES and msg.headers and tracing.active():
            # Its trace context, for the fan-out span (recorded when the event is fanned out: the
            # hub may hold it back until every earlier id has settled).
            if traceparent := msg.headers.get("traceparent"):
                self._traced[message.id] = (traceparent, time.time(), msg.subject)
                while len(self._traced) > TRACED_PENDING_MAX:
                    self._traced.popitem(last=False)
        self._accept(message)

    def _accept(self, event: Event) -> None:
        """Fan the event out when every smaller id has (else hold it until they have)."""
        if self._engine is None:
            self._fan_out(event)
            return
        if self._position is not None and event.id <= self._position:
            return  # out already (from Postgres), or committed before this hub's first look
        self._held[event.id] = event
        if self._position is not None:
            self._release_held()
        if self._held:
            self._wake.set()
            if len(self._held) > HELD_MAX:  # Postgres has not answered for long: out past the gap
                log.warning("events go out past a gap Postgres did not fill", extra={"held": len(self._held)})
                for event_id in sorted(self._held):
                    self._position = event_id
                    self._fan_out(self._held.pop(event_id))

    def _fan_out(self, message: Event | GpuSample) -> int:
        queued = self._deliver(message)
        context = self._traced.pop(message.id, None) if isinstance(message, Event) else None
        if context is not None and queued:
            # A consumer span in the event's trace (a child of its publish) when it reached a client's
            # queue: how many, and how long after its commit. Only a job's states and log lines: its
            # progress events (one per batch, the stream's bulk) cost a span each in this loop and
            # pushed P2's p99 from 5 to 100 ms; their lag is in constellation_stream_event_lag_seconds.
            traceparent, received, subject = context
            tracing.record_span(f"process {SUBJECT_ROOT}", traceparent, received, time.time(),
                                job_id=message.job_id, kind=SpanKind.CONSUMER, attributes={
                                    "messaging.system": "nats", "messaging.operation.type": "process",
                                    "messaging.destination.name": subject, "messaging.message.id": str(message.id),
                                    "constellation.event.type": message.type,
                                    "constellation.stream.deliveries": queued,
                                    "constellation.event.lag_ms": round(
                                        max(0.0, received - message.ts.timestamp()) * 1000, 1)})
        return queued

    def _deliver(self, message: Event | GpuSample) -> int:
        queued = 0
        for subscriber in list(self._subscribers):
            if not subscriber.wants(message):
                continue
            try:
                subscriber.queue.put_nowait(subscriber.view(message))
                queued += 1
            except asyncio.QueueFull:
                subscriber.dropped = True
                self.remove(subscriber)
                STREAM_DROPPED.inc()
        return queued
