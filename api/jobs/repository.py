"""SQL for jobs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import RowMapping, func, literal, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from constellation_core.events import SUBMIT_JOB
from constellation_core.tables import areas, events, gpus, jobs, runs, steps

_JOB_COLUMNS = [c for c in jobs.c if c.name != "aoi"] + [func.ST_AsGeoJSON(jobs.c.aoi).label("aoi_geojson")]


async def insert_queued_job(
    conn: AsyncConnection, *, max_active_jobs: int | None, max_active_tiles: int | None, **values: Any,
) -> RowMapping:
    """The job and its `queued` event in one statement (one round trip, atomic on its own), written
    only while the account's queued and running jobs stay within the limits: the submission path's
    only query. The row's `id` is NULL when a limit refused the job; `active_jobs` and `active_tiles`
    are the account's load before it either way."""
    return (await conn.execute(SUBMIT_JOB, {**values, "max_active_jobs": max_active_jobs,
                                            "max_active_tiles": max_active_tiles})).mappings().one()


async def get_job(conn: AsyncConnection, job_id: UUID, *, for_update: bool = False) -> RowMapping | None:
    query = select(*_JOB_COLUMNS).where(jobs.c.id == job_id)
    if for_update:
        query = query.with_for_update(of=jobs)
    return (await conn.execute(query)).mappings().first()


async def get_job_by_idempotency_key(conn: AsyncConnection, account_id: UUID, key: str) -> RowMapping | None:
    query = select(*_JOB_COLUMNS).where(jobs.c.account_id == account_id, jobs.c.idempotency_key == key)
    return (await conn.execute(query)).mappings().first()


async def get_area_geojson(conn: AsyncConnection, area_id: UUID) -> tuple[UUID | None, dict] | None:
    row = (
        await conn.execute(
            select(areas.c.account_id, func.ST_AsGeoJSON(areas.c.geom).label("geojson")).where(areas.c.id == area_id)
        )
    ).first()
    return None if row is None else (row.account_id, json.loads(row.geojson))


# Sort orders of GET /jobs: each is a keyset on its columns (all in one direction), ending in id.
SORTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "-created_at": (("created_at", "id"), True),
    "created_at": (("created_at", "id"), False),
    "-priority": (("priority", "created_at", "id"), True),
    "name": (("name", "id"), False),
}


async def list_jobs(
    conn: AsyncConnection, *, account_id: UUID | None, states: list[str] | None, submitted_by: str | None,
    created_after: datetime | None, created_before: datetime | None, name_contains: str | None = None,
    sort: str = "-created_at", after: tuple[Any, ...] | None, limit: int,
) -> list[RowMapping]:
    """One page in `sort` order, keyset-paginated on that order's columns."""
    names, descending = SORTS[sort]
    columns = [jobs.c[n] for n in names]
    query = select(*_JOB_COLUMNS).order_by(*(c.desc() if descending else c.asc() for c in columns)).limit(limit)
    if account_id is not None:
        query = query.where(jobs.c.account_id == account_id)
    if states:
        query = query.where(jobs.c.state.in_(states))
    if submitted_by:
        query = query.where(jobs.c.submitted_by == submitted_by)
    if created_after:
        query = query.where(jobs.c.created_at >= created_after)
    if created_before:
        query = query.where(jobs.c.created_at < created_before)
    if name_contains:
        escaped = name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(jobs.c.name.ilike(f"%{escaped}%", escape="\\"))
    if after:
        key, bound = tuple_(*columns), tuple_(*(literal(v, type_=c.type) for v, c in zip(after, columns, strict=True)))
        query = query.where(key < bound if descending else key > bound)
    return list((await conn.execute(query)).mappings())


async def geodesic_area_km2(conn: AsyncConnection, wkb: bytes) -> float:
    query = select(func.ST_Area(func.geography(func.ST_GeomFromWKB(wkb, 4326))) / 1e6)
    return float((await conn.execute(query)).scalar_one())


async def job_counts(conn: AsyncConnection, account_id: UUID | None) -> dict[str, int]:
    query = select(jobs.c.state, func.count()).group_by(jobs.c.state)
    if account_id is not None:
        query = query.where(jobs.c.account_id == account_id)
    return {state: n for state, n in (await conn.execute(query)).all()}


async def tiles_per_minute(conn: AsyncConnection, account_id: UUID | None, minutes: int) -> list[RowMapping]:
    """Tiles inferred per minute over the last `minutes` (oldest first; minutes without tiles omitted)."""
    query = text("""
        SELECT date_trunc('minute', r.created_at) AS minute, count(*) AS tiles
        FROM tile_results r
        WHERE r.created_at >= now() - make_interval(mins => :minutes)
          AND (CAST(:account_id AS uuid) IS NULL
               OR r.job_id IN (SELECT id FROM jobs WHERE account_id = CAST(:account_id AS uuid)))
        GROUP BY 1 ORDER BY 1""")
    return list((await conn.execute(query, {"minutes": minutes, "account_id": account_id})).mappings())


async def job_runs(conn: AsyncConnection, job_id: UUID) -> list[RowMapping]:
    devices = (
        select(func.coalesce(func.array_agg(func.distinct(gpus.c.name)), text("'{}'::text[]")))
        .select_from(steps.join(gpus, gpus.c.id == steps.c.gpu_id))
        .where(steps.c.run_id == runs.c.id)
        .scalar_subquery()
    )
    query = (
        select(runs.c.dagster_run_id, runs.c.state, runs.c.started_at, runs.c.finished_at, runs.c.metrics,
               devices.label("devices"))
        .where(runs.c.job_id == job_id)
        .order_by(runs.c.started_at)
    )
    return list((await conn.execute(query)).mappings())


async def queue_position(conn: AsyncConnection, job: RowMapping) -> int:
    """1 + the queued jobs that start before this one (higher priority, or same and older)."""
    ahead = await conn.execute(
        select(func.count()).select_from(jobs).where(
            jobs.c.state == "queued",
            (jobs.c.priority > job["priority"])
            | ((jobs.c.priority == job["priority"]) & (jobs.c.created_at < job["created_at"])),
        )
    )
    return ahead.scalar_one() + 1


async def latest_rate(conn: AsyncConnection, job_id: UUID) -> float | None:
    """Tiles/s from the job's latest progress event."""
    rate = await conn.execute(
        select(events.c.payload["tiles_per_s"].as_float())
        .where(events.c.job_id == job_id, events.c.type == "job.progress")
        .order_by(events.c.id.desc()).limit(1)
    )
    return rate.scalar_one_or_none()


_TILE_FEATURE = """json_build_object(
    'type', 'Feature', 'id', t.z || '/' || t.x || '/' || t.y,
    'geometry', ST_AsGeoJSON(t.footprint, 7)::json,
    'properties', json_build_object(
        'z', t.z, 'x', t.x, 'y', t.y, 'class', r.class, 'confidence', r.confidence,
        'inference_ms', r.inference_ms, 'device', r.device, 'model_version', r.model_version,
        'run_id', r.run_id))"""


async def tiles_geojson(conn: AsyncConnection, job_id: UUID) -> str:
    """The job's tiles with their results, as a GeoJSON FeatureCollection built by PostGIS."""
    query = text(f"""
        SELECT json_build_object('type', 'FeatureCollection', 'truncated', false, 'features',
               coalesce(json_agg({_TILE_FEATURE} ORDER BY t.z, t.x, t.y), '[]'::json))::text
        FROM tiles t
        LEFT JOIN tile_results r ON r.job_id = t.job_id AND r.z = t.z AND r.x = t.x AND r.y = t.y
        WHERE t.job_id = :job_id""")
    return (await conn.execute(query, {"job_id": job_id})).scalar_one()


async def coverage_geojson(conn: AsyncConnection, bbox: tuple[float, float, float, float],
                           account_id: UUID | None, limit: int) -> str:
    """Processed tiles whose footprint meets the bbox (the account's, or all for admins), newest
    result per tile position first; `truncated` when more than `limit` matched."""
    query = text(f"""
        WITH hits AS (
            SELECT t.z, t.x, t.y, t.footprint, r.class, r.confidence, r.inference_ms, r.device,
                   r.model_version, r.run_id, r.job_id
            FROM tile_results r
            JOIN tiles t ON t.job_id = r.job_id AND t.z = r.z AND t.x = r.x AND t.y = r.y
            JOIN jobs j ON j.id = r.job_id
            WHERE t.footprint && ST_MakeEnvelope(:w, :s, :e, :n, 4326)
              AND (CAST(:account_id AS uuid) IS NULL OR j.account_id = CAST(:account_id AS uuid))
            ORDER BY r.id DESC
            LIMIT :limit_plus_one
        )
        SELECT json_build_object('type', 'FeatureCollection',
               'truncated', count(*) > :limit,
               'features', coalesce(json_agg({_TILE_FEATURE.replace("'run_id', r.run_id", "'run_id', r.run_id, 'job_id', r.job_id")}) FILTER (WHERE rn <= :limit), '[]'::json))::text
        FROM (SELECT h.*, row_number() OVER () AS rn FROM hits h) r
        CROSS JOIN LATERAL (SELECT r.z, r.x, r.y, r.footprint) t""")
    west, south, east, north = bbox
    params = {"w": west, "s": south, "e": east, "n": north, "account_id": account_id, "limit": limit,
              "limit_plus_one": limit + 1}
    return (await conn.execute(query, params)).scalar_one()
