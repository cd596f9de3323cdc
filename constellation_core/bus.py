"""NATS with JetStream: one stream over `constellation.>`, events published after commit."""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind

from constellation_core import tracing
from constellation_core.events import STREAM_NAME, SUBJECT_ROOT, Event

STREAM_MAX_AGE_S = 7 * 24 * 3600
log = logging.getLogger(__name__)


def without_credentials(url: str) -> str:
    """The URL to log: a NATS URL may carry a token or user:password."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


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


async def publish_events(js: JetStreamContext, events: Iterable[Event], traceparent: str | None = None) -> None:
    """Publish each event, in a producer span (a child of `traceparent`, else of the current span)
    whose context travels in the message's headers."""
    parent = tracing.context_from(traceparent) if traceparent else None
    for event in events:
        with tracing.tracer.start_as_current_span(
                f"publish {SUBJECT_ROOT}", context=parent, kind=SpanKind.PRODUCER,
                attributes={"messaging.system": "nats", "messaging.operation.type": "publish",
                            "messaging.destination.name": event.subject, "messaging.message.id": str(event.id),
                            "constellation.event.type": event.type,
                            **({"constellation.job.id": str(event.job_id)} if event.job_id else {})}):
            # The event id doubles as the JetStream message id, so a re-publish is deduplicated.
            headers = tracing.inject_into({"Nats-Msg-Id": str(event.id)})
            await js.publish(event.subject, event.to_bytes(), headers=headers)


async def _publish_until_acknowledged(js: JetStreamContext, events: list[Event], traceparent: str | None) -> None:
    """Publish until JetStream acknowledges every event: NATS restarting must not lose an event nor end
    the publisher (a re-publish is deduplicated by the event id)."""
    delay = 0.1
    while True:
        try:
            await publish_events(js, events, traceparent)
            return
        except Exception:  # noqa: BLE001 - NATS away or slow: the events wait, in order
            log.warning("publishing events failed; retrying", extra={"events": len(events), "retry_in_s": delay},
                        exc_info=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class BackgroundPublisher:
    """One NATS connection on its own event-loop thread, for synchronous code (Dagster ops, sensors).

    `publish` queues and returns at once, so inference never waits on the network; one worker
    publishes in order. `flush` waits until everything queued has been acknowledged by JetStream.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._queue: asyncio.Queue[tuple[list[Event], str | None]] | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="nats-publisher", daemon=True).start()
        self._ready.wait(10)
        if self._error:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        try:
            nc = await nats.connect(self.url, name="constellation-dagster", connect_timeout=2,
                                    max_reconnect_attempts=-1)
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor
            self._error = exc
            self._ready.set()
            return
        js = nc.jetstream()
        self._queue = asyncio.Queue()
        self._ready.set()
        while True:
            events, traceparent = await self._queue.get()
            try:
                await _publish_until_acknowledged(js, events, traceparent)
            finally:
                self._queue.task_done()

    def publish(self, events: Iterable[Event]) -> None:
        """Queue the events; their publish spans are children of the caller's current span."""
        batch = [e for e in events if e is not None]
        if batch:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (batch, tracing.current_traceparent()))

    def flush(self, timeout: float = 10) -> None:
        asyncio.run_coroutine_threadsafe(self._queue.join(), self._loop).result(timeout)


_publishers: dict[str, BackgroundPublisher] = {}
_publishers_lock = threading.Lock()


def publisher(url: str) -> BackgroundPublisher:
    """This process's publisher for `url` (created on first use, flushed at exit)."""
    with _publishers_lock:
        if url not in _publishers:
            _publishers[url] = BackgroundPublisher(url)
            atexit.register(_publishers[url].flush)
        return _publishers[url]


def flush_publishers(timeout: float = 10) -> None:
    """Send what this process's publishers still hold, for a process that ends without its atexit
    handlers (a run worker forked from the zygote ends with `os._exit`)."""
    for bus in list(_publishers.values()):
        try:
            bus.flush(timeout)
        except Exception:  # noqa: BLE001 - NATS away: the events are in Postgres (the API backfills them)
            log.warning("events still unpublished at exit", exc_info=True)
