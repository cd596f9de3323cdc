"""SQL for jobs."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from sqlalchemy import RowMapping, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from constellation_core.tables import areas, jobs

_JOB_COLUMNS = [c for c in jobs.c if c.name != "aoi"] + [func.ST_AsGeoJSON(jobs.c.aoi).label("aoi_geojson")]


async def insert_job(conn: AsyncConnection, *, aoi_wkt: str, **values: Any) -> UUID:
    statement = insert(jobs).values(aoi=func.ST_GeomFromText(aoi_wkt, 4326), **values).returning(jobs.c.id)
    return (await conn.execute(statement)).scalar_one()


async def get_job(conn: AsyncConnection, job_id: UUID, *, for_update: bool = False) -> RowMapping | None:
    query = select(*_JOB_COLUMNS).where(jobs.c.id == job_id)
    if for_update:
        query = query.with_for_update(of=jobs)
    return (await conn.execute(query)).mappings().first()


async def get_area_geojson(conn: AsyncConnection, area_id: UUID) -> tuple[UUID | None, dict] | None:
    row = (
        await conn.execute(
            select(areas.c.account_id, func.ST_AsGeoJSON(areas.c.geom).label("geojson")).where(areas.c.id == area_id)
        )
    ).first()
    return None if row is None else (row.account_id, json.loads(row.geojson))
