"""Job use cases: submit and read. The request never waits on Dagster (a sensor dispatches)."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from api import access, planning
from api.accounts.auth import Account
from api.accounts.limits import TooManyRequests
from api.errors import Conflict, InvalidInput
from api.jobs import repository
from api.jobs.schemas import (
    AreaChoice,
    JobCreate,
    JobDetail,
    JobEstimate,
    JobPublic,
    JobSummary,
    RunPublic,
    TileEstimate,
    TilesPerMinute,
)
from api.json_text import page_json, with_json_fields
from api.offload import accepted, planning_pool
from api.pagination import decode_cursor, encode_cursor
from constellation_core.events import Event, queued_event, transition_job_async
from constellation_core.logs import correlation_id
from constellation_core.tracing import current_traceparent
from constellation_core.vocabulary import JOB_STATES, MODELS

log = logging.getLogger(__name__)

PARAM_KEYS = ("model", "batch_size", "mode")


async def create_job(
    engine: AsyncEngine, account: Account, body: JobCreate, *, max_tiles: int, dagit_url: str,
    idempotency_key: str | None = None,
) -> tuple[bytes, Event | None]:
    """The new job (its JSON) and its `queued` event; with an Idempotency-Key already used by this
    account for the same request, the job it created and no event (nothing is written)."""
    request_hash = None
    if idempotency_key is not None:
        request_hash = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        async with engine.connect() as conn:
            replay = await _replay(conn, account, idempotency_key, request_hash, dagit_url)
        if replay is not None:
            return replay, None
    try:
        return await _insert_job(engine, account, body, max_tiles=max_tiles, dagit_url=dagit_url,
                                 idempotency_key=idempotency_key, request_hash=request_hash)
    except IntegrityError:
        if idempotency_key is None:
            raise
        async with engine.connect() as conn:  # a concurrent request with the same key won the race
            replay = await _replay(conn, account, idempotency_key, request_hash, dagit_url)
        if replay is None:
            raise
        return replay, None


async def _replay(conn, account: Account, key: str, request_hash: str, dagit_url: str) -> bytes | None:
    row = await repository.get_job_by_idempotency_key(conn, account.id, key)
    if row is None:
        return None
    if row["request_hash"] != request_hash:
        raise InvalidInput(
            "this Idempotency-Key was already used for a different request; use a new key for a new job",
            errors=[{"loc": ["header", "Idempotency-Key"], "msg": "key reused with another body", "type": "idempotency"}],
        )
    return job_json(row, dagit_url)


async def _insert_job(
    engine: AsyncEngine, account: Account, body: JobCreate, *, max_tiles: int, dagit_url: str,
    idempotency_key: str | None, request_hash: str | None,
) -> tuple[bytes, Event]:
    if body.model not in MODELS:
        raise InvalidInput(
            f"unknown model {body.model!r}; known models: {', '.join(sorted(MODELS))}",
            errors=[{"loc": ["body", "model"], "msg": "unknown model", "type": "value_error"}],
        )
    limits = account.limits
    if limits.max_priority is not None and body.priority > limits.max_priority:
        message = f"priority {body.priority} is above this account's highest, {limits.max_priority}"
        raise InvalidInput(message, errors=[{"loc": ["body", "priority"], "msg": message, "type": "limit"}])
    planned = await plan_area(await _area_geojson(engine, account, body), body.zoom, max_tiles)
    tiles_total = planned.tiles
    if tiles_total == 0:
        raise InvalidInput("the area covers no tile at this zoom")
    # One statement checks the limits and writes the job and its event: atomic by itself, so no
    # transaction round trips.
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        row = await repository.insert_queued_job(
            conn,
            max_active_jobs=limits.max_active_jobs,
            max_active_tiles=limits.max_active_tiles,
            aoi_wkb=planned.aoi_wkb,
            name=body.name,
            params={k: getattr(body, k) for k in PARAM_KEYS},
            priority=body.priority,
            zoom=body.zoom,
            submitted_by=account.name,
            account_id=account.id,
            area_id=body.area_id,
            tiles_total=tiles_total,
            correlation_id=correlation_id.get(),
            traceparent=current_traceparent(),  # the job's later spans join this request's trace
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
    if row["id"] is None:
        active_jobs, active_tiles = row["active_jobs"], row["active_tiles"]
        if limits.max_active_jobs is not None and active_jobs >= limits.max_active_jobs:
            raise TooManyRequests(f"this account has as many jobs queued or running as its limit allows "
                                  f"({limits.max_active_jobs}): submit again when some have finished")
        raise TooManyRequests(f"this job's {tiles_total} tiles and the {active_tiles} of this account's queued or "
                              f"running jobs exceed its limit of {limits.max_active_tiles} tiles: submit again "
                              "when some have finished")
    event = queued_event(row)
    log.info("job submitted", extra={"job_id": str(row["id"]), "tiles": tiles_total, "account": account.name})
    return job_json(row, dagit_url), event


async def _area_geojson(engine: AsyncEngine, account: Account, body: AreaChoice) -> dict[str, Any]:
    """The request's area: its GeoJSON, or the stored area it names (if the account may use it)."""
    if body.area is not None:
        return body.area.as_geojson()
    async with engine.connect() as conn:
        found = await repository.get_area_geojson(conn, body.area_id)
    if found is None or not access.may_see(account, found[0]):
        raise InvalidInput(f"no area with id {body.area_id}")
    return found[1]


async def get_job(engine: AsyncEngine, account: Account, job_id: UUID, *, dagit_url: str) -> bytes:
    """The JSON of the job's `JobDetail`."""
    async with engine.connect() as conn:
        row = visible(await repository.get_job(conn, job_id), account, job_id)
        runs = await repository.job_runs(conn, job_id)
        position = await repository.queue_position(conn, row) if row["state"] == "queued" else None
        rate = await repository.latest_rate(conn, job_id) if row["state"] == "running" else None
    public = to_public(row, dagit_url)
    remaining = (row["tiles_total"] or 0) - row["tiles_done"]
    detail = JobDetail(
        **dict(public),
        runs=[RunPublic(**run, dagit_url=f"{dagit_url}/runs/{run['dagster_run_id']}") for run in runs],
        queue_position=position,
        tiles_per_s=rate,
        eta_seconds=round(remaining / rate, 1) if rate else None,
    )
    return with_json_fields(detail, area=row["aoi_geojson"])


async def list_jobs(engine: AsyncEngine, account: Account, *, states: list[str] | None, submitted_by: str | None,
                    created_after: datetime | None, created_before: datetime | None, name_contains: str | None = None,
                    sort: str = "-created_at", cursor: str | None, limit: int, dagit_url: str) -> bytes:
    """The JSON of one `Page[JobPublic]` in `sort` order; members see their own jobs, admins everyone's."""
    names, _ = repository.SORTS[sort]
    after = _decode_job_cursor(cursor, sort, names)
    async with engine.connect() as conn:
        rows = await repository.list_jobs(
            conn, account_id=access.owner_scope(account), states=states, submitted_by=submitted_by,
            created_after=created_after, created_before=created_before, name_contains=name_contains, sort=sort,
            after=after, limit=limit + 1,
        )
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(sort, *(last[n].isoformat() if n == "created_at" else last[n] for n in names))
    return page_json([job_json(r, dagit_url) for r in page], next_cursor)


_PARSE = {"created_at": datetime.fromisoformat, "id": UUID, "priority": int, "name": str}


def _decode_job_cursor(cursor: str | None, sort: str, names: tuple[str, ...]) -> tuple[Any, ...] | None:
    values = decode_cursor(cursor, None)
    if values is None:
        return None
    if values[0] != sort and values[0] in repository.SORTS:
        raise InvalidInput("this cursor belongs to another sort order: start again without `cursor`",
                           errors=[{"loc": ["query", "cursor"], "msg": "cursor from another sort", "type": "cursor"}])
    try:
        return tuple(_PARSE[n](v) for n, v in zip(names, values[1:], strict=True))
    except (TypeError, ValueError):
        raise InvalidInput("malformed cursor: pass back the `next_cursor` of a previous page",
                           errors=[{"loc": ["query", "cursor"], "msg": "malformed cursor", "type": "cursor"}]) from None


async def summary(engine: AsyncEngine, account: Account) -> JobSummary:
    owner = access.owner_scope(account)
    async with engine.connect() as conn:
        counts = await repository.job_counts(conn, owner)
        minutes = await repository.tiles_per_minute(conn, owner, 60)
    recent = sum(m["tiles"] for m in minutes if (datetime.now(UTC) - m["minute"]).total_seconds() <= 120)
    return JobSummary(
        counts={state: counts.get(state, 0) for state in JOB_STATES},
        tiles_per_minute=[TilesPerMinute(minute=m["minute"], tiles=m["tiles"]) for m in minutes],
        tiles_per_s=round(recent / 120, 2),
    )


# The function the planning processes run (a module attribute, so a test can put a slower one in).
plan_in_worker = planning.plan_job_area


async def plan_area(area_geojson: dict[str, Any], zoom: int, max_tiles: int) -> planning.Planned:
    """The area parsed and its tile count at this zoom, computed here when that is certainly cheap and
    in a planning process otherwise; a 422 problem naming `area` when it cannot be planned."""
    if planning.cheap_to_plan(area_geojson, zoom):
        planned = planning.plan_job_area(area_geojson, zoom, max_tiles)
    else:
        planned = await planning_pool.run(plan_in_worker, area_geojson, zoom, max_tiles)
    planned = accepted(planned, "area")
    return planned


async def estimate(engine: AsyncEngine, account: Account, body: JobEstimate, *, max_tiles: int) -> bytes:
    """The JSON of a `TileEstimate`, its `area` as the planning process wrote it (`api.json_text`)."""
    planned = await plan_area(await _area_geojson(engine, account, body), body.zoom, max_tiles)
    async with engine.connect() as conn:
        km2 = await repository.geodesic_area_km2(conn, planned.aoi_wkb)
    head = TileEstimate(tiles=planned.tiles, max_tiles=max_tiles, area_km2=round(km2, 3), area={})
    return with_json_fields(head, area=planned.geojson)


async def job_tiles(engine: AsyncEngine, account: Account, job_id: UUID) -> str:
    async with engine.connect() as conn:
        await access.require_job(conn, account, job_id)
        return await repository.tiles_geojson(conn, job_id)


async def cancel_job(
    engine: AsyncEngine, account: Account, job_id: UUID, *, dagit_url: str
) -> tuple[bytes, Event]:
    """Cancel a queued or running job (its JSON, and its event). Its inference steps stop after their current batch, and a
    sensor terminates its Dagster run."""
    async with engine.begin() as conn:
        row = visible(await repository.get_job(conn, job_id, for_update=True), account, job_id)
        event = await transition_job_async(conn, job_id, "canceled", detail={"by": account.name})
        if event is None:
            raise Conflict(f"job {job_id} is already {row['state']}")
        row = await repository.get_job(conn, job_id)
    log.info("job canceled", extra={"job_id": str(job_id), "account": account.name})
    return job_json(row, dagit_url), event


def visible(row: RowMapping | None, account: Account, job_id: UUID) -> RowMapping:
    access.require(account, row["account_id"] if row else None, row is not None, "job", job_id)
    return row


def job_json(row: RowMapping, dagit_url: str) -> bytes:
    """The JSON of the row's `JobPublic`, its `area` as PostGIS wrote it (`api.json_text`)."""
    return with_json_fields(to_public(row, dagit_url), area=row["aoi_geojson"])


def to_public(row: RowMapping, dagit_url: str) -> JobPublic:
    """The row's `JobPublic`, its `area` left empty: `job_json` puts the area's text in."""
    params = row["params"] or {}
    total = row["tiles_total"] or 0
    run_id = row["dagster_run_id"]
    return JobPublic(
        id=row["id"],
        name=row["name"],
        state=row["state"],
        zoom=row["zoom"],
        priority=row["priority"],
        submitted_by=row["submitted_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        tiles_total=row["tiles_total"],
        tiles_done=row["tiles_done"],
        progress=(row["tiles_done"] / total) if total else 0.0,
        area={},
        area_id=row["area_id"],
        dagster_run_id=run_id,
        dagit_url=f"{dagit_url}/runs/{run_id}" if run_id else None,
        error=row["error"],
        **{k: params[k] for k in PARAM_KEYS if k in params},
    )
