"""Fans NATS events out to stream clients. A slow client is dropped; it never slows the others."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from uuid import UUID

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from api.metrics import STREAM_CLIENTS, STREAM_DROPPED
from constellation_core.events import SUBJECT_ROOT, Event
from constellation_core.telemetry import GpuSample

log = logging.getLogger(__name__)

CLIENT_QUEUE_SIZE = 1000


LOG_TYPES = ("job.log", "job.state")


RECENT_SAMPLES = 600  # 1 Hz per device: the last 10 minutes


@dataclass(eq=False)
class Subscriber:
    """One client's subscriptions: ("jobs", None) every visible job; ("job", id) one job's events;
    ("logs", id) one job's log lines and states; ("gpus", None) telemetry samples."""

    job_id: UUID | None = None  # initial subscription: this job (else every job, unless `topics` is given)
    account_id: UUID | None = None  # None: every account's (admins)
    gpus: bool = False  # also GPU telemetry samples
    topics: set[tuple[str, UUID | None]] | None = None
    queue: asyncio.Queue[Event | GpuSample | None] = field(
        default_factory=lambda: asyncio.Queue(CLIENT_QUEUE_SIZE)
    )
    dropped: bool = False

    def __post_init__(self) -> None:
        if self.topics is None:
            self.topics = {("job", self.job_id) if self.job_id else ("jobs", None)}
        if self.gpus:
            self.topics.add(("gpus", None))

    def wants(self, message: Event | GpuSample) -> bool:
        topics = self.topics
        if isinstance(message, GpuSample):
            return ("gpus", None) in topics
        if self.account_id is not None and message.account_id != self.account_id:
            return False
        return (("jobs", None) in topics or ("job", message.job_id) in topics
                or (message.type in LOG_TYPES and ("logs", message.job_id) in topics))

    def view(self, message: Event | GpuSample) -> Event | GpuSample:
        # Which job runs on a device is shown to admins; members see the device's figures only.
        if isinstance(message, GpuSample) and self.account_id is not None and message.job_id is not None:
            return message.model_copy(update={"job_id": None})
        return message


class StreamHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._subscription = None
        self.latest_gpu_samples: dict[str, GpuSample] = {}  # device uuid → its latest sample (GET /gpus)
        # device uuid → its samples of the last few minutes, oldest first (GET /gpus/{uuid}/telemetry)
        self.recent_gpu_samples: dict[str, deque[GpuSample]] = {}

    async def start(self, nc: NATS) -> None:
        self._subscription = await nc.subscribe(f"{SUBJECT_ROOT}.>", cb=self._on_message)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        for subscriber in list(self._subscribers):
            if not subscriber.queue.full():
                subscriber.queue.put_nowait(None)

    def add(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)
        STREAM_CLIENTS.set(len(self._subscribers))

    def remove(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        STREAM_CLIENTS.set(len(self._subscribers))

    async def _on_message(self, msg: Msg) -> None:
        try:
            if msg.subject.startswith(f"{SUBJECT_ROOT}.gpus."):
                message: Event | GpuSample = GpuSample.model_validate_json(msg.data)
                self.latest_gpu_samples[message.device_uuid] = message
                recent = self.recent_gpu_samples.setdefault(message.device_uuid, deque(maxlen=RECENT_SAMPLES))
                recent.append(message)
            else:
                message = Event.from_bytes(msg.data)
        except ValueError:
            log.warning("ignoring a malformed message", extra={"subject": msg.subject})
            return
        for subscriber in list(self._subscribers):
            if not subscriber.wants(message):
                continue
            try:
                subscriber.queue.put_nowait(subscriber.view(message))
            except asyncio.QueueFull:
                subscriber.dropped = True
                self.remove(subscriber)
                STREAM_DROPPED.inc()
