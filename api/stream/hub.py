"""Fans NATS events out to stream clients. A slow client is dropped; it never slows the others."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from api import access
from api.accounts.auth import REVOCATION_SUBJECT, Account, Revocation, forget
from api.accounts.limits import TooManyRequests
from api.metrics import STREAM_CLIENTS, STREAM_DROPPED
from constellation_core import tracing
from constellation_core.events import SUBJECT_ROOT, Event
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


class JobSequencer:
    """Puts each job's events back in `seq` order before they are fanned out.

    A job's events are numbered in commit order but published by several processes, so NATS may
    deliver seq 6 before seq 5. The next expected seq is released at once (the common case: no added
    latency); a later one waits until the gap fills, or at most `max_wait_s`, then everything held is
    released in order (a gap that never fills: an event lost or not yet committed when this API
    started). Events without a seq (older rows, synthetic ones) pass straight through.
    """

    def __init__(self, release: Callable[[Event], None], max_wait_s: float = 0.25, max_jobs: int = 10_000) -> None:
        self._release = release
        self._max_wait_s = max_wait_s
        self._max_jobs = max_jobs
        self._next: OrderedDict[UUID, int] = OrderedDict()  # job → the seq it expects next
        self._held: dict[UUID, dict[int, Event]] = {}
        self._timers: dict[UUID, asyncio.TimerHandle] = {}

    def accept(self, event: Event) -> list[Event]:
        """The events to fan out now, in order (maybe none: this one waits for an earlier one)."""
        job_id, seq = event.job_id, event.seq
        if job_id is None or seq is None:
            return [event]
        expected = self._next.get(job_id)
        if expected is None or seq <= expected:  # first seen, the expected one, or a late straggler
            ready = [event]
            if expected is None or seq == expected:
                self._advance(job_id, seq + 1)
                ready += self._drain(job_id)
            return ready
        self._held.setdefault(job_id, {})[seq] = event
        if job_id not in self._timers:
            self._timers[job_id] = asyncio.get_running_loop().call_later(self._max_wait_s, self._give_up, job_id)
        return []

    def _advance(self, job_id: UUID, next_seq: int) -> None:
        self._next[job_id] = next_seq
        self._next.move_to_end(job_id)
        while len(self._next) > self._max_jobs:  # forget the least recently active jobs
            old, _ = self._next.popitem(last=False)
            for event in self._flush(old):
                self._release(event)

    def _drain(self, job_id: UUID) -> list[Event]:
        held = self._held.get(job_id)
        ready = []
        while held and (event := held.pop(self._next[job_id], None)) is not None:
            ready.append(event)
            self._next[job_id] += 1
        if not held:
            self._held.pop(job_id, None)
            timer = self._timers.pop(job_id, None)
            if timer is not None:
                timer.cancel()
        return ready

    def _flush(self, job_id: UUID) -> list[Event]:
        held = self._held.pop(job_id, {})
        timer = self._timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()
        return [held[seq] for seq in sorted(held)]

    def _give_up(self, job_id: UUID) -> None:
        self._timers.pop(job_id, None)
        ready = self._flush(job_id)
        if ready:
            log.warning("releasing a job's events past a gap in their sequence",
                        extra={"job_id": str(job_id), "expected": self._next.get(job_id), "released": [e.seq for e in ready]})
            self._next[job_id] = ready[-1].seq + 1
        for event in ready:
            self._release(event)


# After NATS comes back, the events committed since a little before it went away are read from
# Postgres: their publishers may have sent them before this API's subscription was back (NATS does not
# keep messages for a subscriber that is away). Subscribers drop the ones they already got.
BACKFILL_MARGIN_S = 10
BACKFILL_ID_MARGIN = 10_000
BACKFILL_LIMIT = 50_000
TRACED_PENDING_MAX = 10_000
# A committed event can also miss NATS with NATS up: its process was killed between its commit and its
# publish, or Postgres died as it committed and the process never learned that the commit held (the
# chaos test lost two job states so). While clients are connected, the hub looks in Postgres every
# RECONCILE_EVERY_S for the events of the last RECONCILE_WINDOW_S it has not seen — those committed over
# RECONCILE_SETTLE_S ago, which NATS would have brought by then — and fans them out (ids only, then the
# rows of the missing ones: a query of the last half minute's ids every 5 s).
RECONCILE_EVERY_S = 5.0
RECONCILE_WINDOW_S = 30.0
RECONCILE_SETTLE_S = 2.0
SEEN_MAX = 500_000  # event ids remembered (two windows' worth, at most this many)


class StreamHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._subscription = None
        # device uuid → its latest sample (GET /gpus); history is Prometheus's (GET /gpus/{uuid}/telemetry)
        self._latest_gpu_samples: dict[str, GpuSample] = {}
        self._sequencer = JobSequencer(self._fan_out)
        # event id → (traceparent, received, subject) of traced events not yet fanned out (bounded below)
        self._traced: OrderedDict[int, tuple[str, float, str]] = OrderedDict()
        self._engine: AsyncEngine | None = None
        self._last_event_id = 0
        self._away_since: float | None = None
        self._seen: OrderedDict[int, float] = OrderedDict()  # event id → when it was fanned out here
        self._id_marks: deque[tuple[float, int]] = deque()  # (when, the highest event id known then)
        self._reconciler: asyncio.Task | None = None

    async def start(self, nc: NATS, engine: AsyncEngine | None = None) -> None:
        self._engine = engine
        self._subscription = await nc.subscribe(f"{SUBJECT_ROOT}.>", cb=self._on_message)
        if engine is not None:
            try:  # what was committed before this API started is for clients to resume from
                async with engine.connect() as conn:
                    known = (await conn.execute(select(func.coalesce(func.max(events.c.id), 0)))).scalar_one()
            except Exception:  # noqa: BLE001 - Postgres away: the first look reads the whole window
                log.warning("reading the latest event id failed", exc_info=True)
                known = 0
            self._id_marks.append((time.time(), known))
            self._reconciler = asyncio.create_task(self._reconcile_forever())

    async def on_disconnected(self) -> None:
        """NATS callback: from now on, events may pass this API by."""
        if self._away_since is None:
            self._away_since = time.time()

    async def on_reconnected(self) -> None:
        """NATS callback: fan out what was committed while this API was away, from Postgres."""
        away_since, self._away_since = self._away_since, None
        if away_since is None or self._engine is None:
            return
        since = away_since - BACKFILL_MARGIN_S
        try:
            missed = await self._fan_out_unseen(after_id=self._last_event_id - BACKFILL_ID_MARGIN, since=since)
        except Exception:  # noqa: BLE001 - Postgres away too: clients resume from `events` when they reconnect
            log.warning("reading the events NATS may have missed failed", exc_info=True)
            return
        log.info("NATS is back: events committed meanwhile fanned out from Postgres",
                 extra={"events": len(missed), "since": datetime.fromtimestamp(since, UTC).isoformat()})

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_EVERY_S)
            self._forget_seen(time.time())
            if not self._subscribers:
                continue
            try:
                await self.reconcile()
            except Exception:  # noqa: BLE001 - Postgres away: the next look covers the same window
                log.warning("looking for events NATS did not bring failed", exc_info=True)

    async def reconcile(self) -> int:
        """Fan out the events committed over RECONCILE_SETTLE_S and under RECONCILE_WINDOW_S ago that
        this hub has not seen; how many."""
        now = time.time()
        while len(self._id_marks) > 1 and self._id_marks[1][0] <= now - RECONCILE_WINDOW_S:
            self._id_marks.popleft()
        floor = self._id_marks[0][1]  # every event past it committed within the window, or later
        self._id_marks.append((now, max(self._last_event_id, floor)))
        missed = await self._fan_out_unseen(after_id=floor, since=now - RECONCILE_WINDOW_S,
                                             until=now - RECONCILE_SETTLE_S)
        if missed:
            log.warning("events that NATS did not bring fanned out from Postgres",
                        extra={"events": len(missed), "ids": missed[:20]})
        return len(missed)

    async def _fan_out_unseen(self, *, after_id: int, since: float, until: float | None = None) -> list[int]:
        """Fan out the events with ids past `after_id`, committed from `since` (until `until`), that
        this hub has not seen; their ids. Reads the window's ids, then the rows of the missing ones."""
        window = [events.c.id > after_id, events.c.ts >= datetime.fromtimestamp(since, UTC)]
        if until is not None:
            window.append(events.c.ts < datetime.fromtimestamp(until, UTC))
        async with self._engine.connect() as conn:
            ids = (await conn.execute(select(events.c.id).where(*window).order_by(events.c.id)
                                      .limit(BACKFILL_LIMIT))).scalars().all()
            missing = [event_id for event_id in ids if event_id not in self._seen]
            if not missing:
                return []
            rows = (await conn.execute(select(events).where(events.c.id.in_(missing)).order_by(events.c.id))).mappings()
            missed = [Event.model_validate(dict(row)) for row in rows]
        for event in missed:
            self._accept(event)
        return missing

    def _forget_seen(self, now: float) -> None:
        forget_before = now - 2 * RECONCILE_WINDOW_S
        while self._seen and (len(self._seen) > SEEN_MAX or next(iter(self._seen.values())) < forget_before):
            self._seen.popitem(last=False)

    async def stop(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
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
            # sequencer may hold it back until an earlier one arrives).
            if traceparent := msg.headers.get("traceparent"):
                self._traced[message.id] = (traceparent, time.time(), msg.subject)
                while len(self._traced) > TRACED_PENDING_MAX:
                    self._traced.popitem(last=False)
        self._accept(message)

    def _accept(self, event: Event) -> None:
        """Fan out the event (and those it releases from the sequencer)."""
        if event.id in self._seen:
            return  # brought by NATS and by a look in Postgres: once is enough
        self._seen[event.id] = time.time()
        self._last_event_id = max(self._last_event_id, event.id)
        for ready in self._sequencer.accept(event):
            self._fan_out(ready)

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
