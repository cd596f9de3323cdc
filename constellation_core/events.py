"""Events: one schema for the `events` table, NATS subjects and the stream clients.

Every event is first an `events` row (its id orders it and lets clients resume), then, after the
transaction that wrote it commits, a NATS message on a subject under `constellation.`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime
from functools import cached_property
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import Connection, bindparam, insert, literal, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from constellation_core import tracing
from constellation_core.tables import events, jobs
from constellation_core.vocabulary import LOG_EVENT_TYPES, TERMINAL_JOB_STATES

log = logging.getLogger(__name__)

STREAM_NAME = "CONSTELLATION"
SUBJECT_ROOT = "constellation"

EventType = Literal["job.state", "job.progress", "job.log", "gpu.metrics"]

# Which state a job may move to from which: anything else is refused (and emits nothing), which
# makes every transition idempotent and keeps the published order queued → running → terminal.
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    "running": ("queued",),
    "succeeded": ("running",),
    "failed": ("queued", "running"),
    "canceled": ("queued", "running"),
}

_RETURNING = (events.c.id, events.c.type, events.c.account_id, events.c.job_id, events.c.run_id, events.c.payload,
              events.c.ts, events.c.seq)


class Event(BaseModel):
    id: int
    type: EventType
    account_id: UUID | None = None
    job_id: UUID | None = None
    run_id: UUID | None = None
    payload: dict[str, Any]
    ts: datetime
    seq: int | None = None  # the job's events are numbered 1, 2, 3 … in commit order

    @property
    def subject(self) -> str:
        if self.job_id is not None:
            return f"{SUBJECT_ROOT}.jobs.{self.job_id}.{self.type.removeprefix('job.')}"
        return f"{SUBJECT_ROOT}.gpus.{self.payload.get('device_uuid', 'unknown')}.metrics"

    @cached_property
    def json_text(self) -> str:
        """The event as JSON, serialized once however many stream clients it goes to (an event is not
        changed once built; pydantic leaves a cached property out of equality and dumps)."""
        return self.model_dump_json()

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Event:
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("json_text", None)  # a copy's JSON is its own
        return copy

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Event:
        return cls.model_validate(json.loads(data))


# An event's id comes from `next_event_id()` (migration 0015). Its transaction holds, until it ends, a
# shared advisory lock on (EVENT_ID_LOCK, 0) from before it takes its first id, and one on
# (EVENT_ID_LOCK + 1 + id >> 31, id & 0x7fffffff) for that first id.
EVENT_ID_LOCK = 1129270867
LAST_EVENT_ID = text("SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM events_id_seq")
# The smallest event id of the open transactions, and those still taking their first one.
_OPEN_EVENT_IDS = text(f"""
WITH held AS (
    SELECT virtualtransaction, classid::bigint AS high, objid::bigint AS low FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 2
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid::bigint BETWEEN {EVENT_ID_LOCK} AND {EVENT_ID_LOCK} + 1 + 1000000
)
SELECT (SELECT min(((high - {EVENT_ID_LOCK} - 1) << 31) + low) FROM held WHERE high > {EVENT_ID_LOCK}) AS first_open,
       ARRAY(SELECT virtualtransaction FROM held WHERE high = {EVENT_ID_LOCK} AND low = 0
             EXCEPT SELECT virtualtransaction FROM held WHERE high > {EVENT_ID_LOCK}) AS taking
""")


async def settled_event_id(conn: AsyncConnection, *, timeout_s: float = 5.0) -> int:
    """An id such that every event id up to it has settled — committed (visible to the next statement)
    or rolled back, never to appear — however the commits were ordered.

    Ids are handed out in one order and may commit in another: id 7 can commit while 6 is still in its
    transaction. Every id up to the sequence's last value, read here first, was taken by a transaction
    that has ended since, or that holds the lock of its first id (no larger than any id it holds), or
    that is in the moment between taking an id and locking it (waited for: microseconds). Should one
    stay in that moment for `timeout_s`, the answer is the last id handed out, with a warning."""
    last = (await conn.execute(LAST_EVENT_ID)).scalar_one()
    deadline, wait = time.monotonic() + timeout_s, 0.001
    while True:
        first_open, taking = (await conn.execute(_OPEN_EVENT_IDS)).one()
        if not taking:
            return last if first_open is None else min(last, first_open - 1)
        if time.monotonic() > deadline:
            log.warning("going past event ids that may not have settled: transactions were taking one for "
                        f"{timeout_s:.0f} s", extra={"transactions": taking[:5], "last_event_id": last})
            return last
        await asyncio.sleep(wait)
        wait = min(wait * 2, 0.05)


def _insert(type_: str, account_id: UUID | None, job_id: UUID | None, run_id: UUID | None, payload: dict | None):
    payload = payload or {}
    if type_ in LOG_EVENT_TYPES and (span_id := tracing.current_span_id()):
        payload = {**payload, "span_id": span_id}  # the job page links the line to its span in the trace
    values = {"type": type_, "account_id": account_id, "job_id": job_id, "run_id": run_id, "payload": payload}
    if job_id is None:
        return insert(events).values(**values).returning(*_RETURNING)
    # Bump the job's sequence first: it holds the job's row lock until this transaction commits, so
    # the job's events get consecutive `seq` and increasing ids in commit order.
    seq = (
        update(jobs).where(jobs.c.id == job_id).values(event_seq=jobs.c.event_seq + 1)
        .returning(jobs.c.event_seq).cte("next_seq")
    )
    return (
        insert(events)
        .from_select([*values, "seq"], select(*(literal(v, type_=events.c[k].type) for k, v in values.items()),
                                              seq.c.event_seq))
        .returning(*_RETURNING)
    )


# One statement, built once, that checks an account's load against its limits and, within them, writes
# a new job and its first event (`job.state` `queued`, seq 1): atomic on its own, one round trip, no
# per-request statement building (the SQLAlchemy construct it replaced cost ~2 ms of CPU to build).
# Its one row carries the account's load before this job (`active_jobs`, `active_tiles`) as far as its
# limits need it; the job's columns (with `aoi_geojson`) and `event_id`/`event_ts` are NULL when a limit
# refused it. `:aoi_wkb` is the area as WKB in EPSG:4326; a NULL limit is no limit.
#
# The load is read from at most `max_active_jobs` of the account's queued and running jobs (an account
# with that many is refused whatever their tiles), and not at all when the account has no limit (an
# admin's load is 0 here): counting every queued job made each submission cost Postgres time in
# proportion to the account's backlog, 0.2 ms of CPU with 500 queued and 2.0 ms with 16,000 (P3).
SUBMIT_JOB = text(f"""
WITH load AS (
    SELECT count(*) AS active_jobs, coalesce(sum(tiles_total - tiles_done), 0) AS active_tiles
    FROM (
        SELECT tiles_total, tiles_done FROM jobs
        WHERE account_id = :account_id AND state IN ('queued', 'running')
          AND (CAST(:max_active_jobs AS bigint) IS NOT NULL OR CAST(:max_active_tiles AS bigint) IS NOT NULL)
        LIMIT CAST(:max_active_jobs AS bigint)
    ) AS active
), new_job AS (
    INSERT INTO jobs (name, params, priority, zoom, submitted_by, account_id, area_id, aoi, tiles_total,
                      correlation_id, traceparent, idempotency_key, request_hash, state, event_seq)
    SELECT :name, :params, :priority, :zoom, :submitted_by, :account_id, :area_id,
           ST_GeomFromWKB(:aoi_wkb, 4326), :tiles_total, :correlation_id, :traceparent, :idempotency_key,
           :request_hash, 'queued', 1
    FROM load
    WHERE (CAST(:max_active_jobs AS bigint) IS NULL OR load.active_jobs < :max_active_jobs)
      AND (CAST(:max_active_tiles AS bigint) IS NULL OR load.active_tiles + :tiles_total <= :max_active_tiles)
    RETURNING {", ".join(c.name for c in jobs.c if c.name != "aoi")}, ST_AsGeoJSON(aoi) AS aoi_geojson
), new_event AS (
    INSERT INTO events (type, payload, seq, account_id, job_id)
    SELECT 'job.state', '{{"state": "queued"}}'::jsonb, 1, account_id, id FROM new_job
    RETURNING id, ts
)
SELECT load.active_jobs, load.active_tiles, new_job.*, new_event.id AS event_id, new_event.ts AS event_ts
FROM load LEFT JOIN new_job ON true LEFT JOIN new_event ON true
""").bindparams(bindparam("params", type_=JSONB), bindparam("account_id", type_=PG_UUID(as_uuid=True)),
                bindparam("area_id", type_=PG_UUID(as_uuid=True)))


def queued_event(row: Any) -> Event:
    """The `queued` event written by `SUBMIT_JOB`, from its row."""
    return Event(id=row["event_id"], type="job.state", account_id=row["account_id"], job_id=row["id"],
                 payload={"state": "queued"}, ts=row["event_ts"], seq=1)


def record_event(
    conn: Connection, type_: EventType, *, account_id: UUID | None = None, job_id: UUID | None = None,
    run_id: UUID | None = None, payload: dict[str, Any] | None = None,
) -> Event:
    row = conn.execute(_insert(type_, account_id, job_id, run_id, payload)).mappings().one()
    return Event.model_validate(dict(row))


async def record_event_async(
    conn: AsyncConnection, type_: EventType, *, account_id: UUID | None = None, job_id: UUID | None = None,
    run_id: UUID | None = None, payload: dict[str, Any] | None = None,
) -> Event:
    row = (await conn.execute(_insert(type_, account_id, job_id, run_id, payload))).mappings().one()
    return Event.model_validate(dict(row))


def _transition(job_id: UUID, state: str, columns: dict[str, Any]):
    values: dict[str, Any] = {"state": state, "updated_at": datetime.now().astimezone(), **columns}
    if state in TERMINAL_JOB_STATES:
        values["finished_at"] = values["updated_at"]
    return (
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.state.in_(ALLOWED_FROM[state]))
        .values(**values)
        .returning(jobs.c.account_id)
    )


def transition_job(
    conn: Connection, job_id: UUID, state: str, *, run_id: UUID | None = None,
    detail: dict[str, Any] | None = None, **columns: Any,
) -> Event | None:
    """Move a job to `state` if allowed from its current state, recording its `job.state` event.

    Returns None (and writes nothing) when the move is not allowed, e.g. already terminal.
    """
    account_id = conn.execute(_transition(job_id, state, columns)).scalar_one_or_none()
    if account_id is None:
        return None
    return record_event(
        conn, "job.state", account_id=account_id, job_id=job_id, run_id=run_id,
        payload={"state": state, **(detail or {})},
    )


async def transition_job_async(
    conn: AsyncConnection, job_id: UUID, state: str, *, run_id: UUID | None = None,
    detail: dict[str, Any] | None = None, **columns: Any,
) -> Event | None:
    """`transition_job` for the API's async connections."""
    account_id = (await conn.execute(_transition(job_id, state, columns))).scalar_one_or_none()
    if account_id is None:
        return None
    return await record_event_async(
        conn, "job.state", account_id=account_id, job_id=job_id, run_id=run_id,
        payload={"state": state, **(detail or {})},
    )
