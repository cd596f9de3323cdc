"""Stored areas of interest: GeoJSON import with validation, listing."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, insert, literal, select, tuple_

from api import access, planning
from api.deps import CurrentAccount, EngineDep
from api.offload import OffloadedJSONRoute, accepted, planning_pool
from api.pagination import DEFAULT_LIMIT, Cursor, Limit, Page, decode_cursor, encode_cursor
from constellation_core.tables import areas

router = APIRouter(prefix="/areas", tags=["areas"], route_class=OffloadedJSONRoute)

# A stored area is a few countries at most.
MAX_AREA_DEG2 = 2_000.0


class AreaCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    geojson: dict[str, Any] = Field(
        description="A GeoJSON Polygon/MultiPolygon geometry, or a Feature or FeatureCollection of them "
                    "(their union), in lon/lat (EPSG:4326 / CRS84)")


class AreaPublic(BaseModel):
    id: UUID
    name: str
    account_id: UUID | None
    created_at: datetime
    geometry: dict[str, Any]
    area_km2: float = Field(description="Geodesic area")
    bbox: list[float] = Field(description="west, south, east, north")


_COLUMNS = [
    areas.c.id, areas.c.name, areas.c.account_id, areas.c.created_at,
    func.ST_AsGeoJSON(areas.c.geom, 7).label("geometry"),
    (func.ST_Area(func.geography(areas.c.geom)) / 1e6).label("area_km2"),
    func.ST_XMin(areas.c.geom).label("west"), func.ST_YMin(areas.c.geom).label("south"),
    func.ST_XMax(areas.c.geom).label("east"), func.ST_YMax(areas.c.geom).label("north"),
]


def _public(row) -> AreaPublic:
    return AreaPublic(id=row.id, name=row.name, account_id=row.account_id, created_at=row.created_at,
                      geometry=json.loads(row.geometry), area_km2=round(row.area_km2, 3),
                      bbox=[row.west, row.south, row.east, row.north])


async def area_geometry(geojson: dict[str, Any]) -> dict[str, Any]:
    """The area checked and merged (in a planning process), or a 422 problem naming `geojson`."""
    return accepted(await planning_pool.run(planning.area_geometry, geojson, MAX_AREA_DEG2), "geojson")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AreaPublic, name="create")
async def create_area(body: AreaCreate, account: CurrentAccount, engine: EngineDep) -> AreaPublic:
    """Import an area of interest from GeoJSON; jobs may then name it by `area_id`."""
    geometry = await area_geometry(body.geojson)
    async with engine.begin() as conn:
        area_id = (await conn.execute(
            insert(areas).values(name=body.name, account_id=account.id,
                                 geom=func.ST_SetSRID(func.ST_GeomFromGeoJSON(json.dumps(geometry)), 4326))
            .returning(areas.c.id)
        )).scalar_one()
        row = (await conn.execute(select(*_COLUMNS).where(areas.c.id == area_id))).one()
    return _public(row)


@router.get("", response_model=Page[AreaPublic], name="list")
async def list_areas(account: CurrentAccount, engine: EngineDep, cursor: Cursor = None,
                     limit: Limit = DEFAULT_LIMIT) -> Page[AreaPublic]:
    """Areas, newest first: members see their own, admins everyone's."""
    after = decode_cursor(cursor, 2)
    query = select(*_COLUMNS).order_by(areas.c.created_at.desc(), areas.c.id.desc()).limit(limit + 1)
    if (owner := access.owner_scope(account)) is not None:
        query = query.where(areas.c.account_id == owner)
    if after is not None:
        try:
            key = (datetime.fromisoformat(after[0]), UUID(after[1]))
        except (TypeError, ValueError):
            decode_cursor("", 2)
        query = query.where(tuple_(areas.c.created_at, areas.c.id) < tuple_(literal(key[0]), literal(key[1])))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].created_at.isoformat(), page[-1].id) if len(rows) > limit else None
    return Page[AreaPublic](data=[_public(r) for r in page], next_cursor=next_cursor)


@router.get("/{area_id}", response_model=AreaPublic, name="get")
async def get_area(area_id: UUID, account: CurrentAccount, engine: EngineDep) -> AreaPublic:
    async with engine.connect() as conn:
        row = (await conn.execute(select(*_COLUMNS).where(areas.c.id == area_id))).first()
    access.require(account, row.account_id if row else None, row is not None, "area", area_id)
    return _public(row)
