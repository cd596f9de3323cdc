"""GET /coverage: every processed tile in a box, whichever job made it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api import access
from api.deps import CurrentAccount, EngineDep
from api.errors import InvalidInput
from api.jobs import repository
from api.jobs.router import GeoJSONResponse
from api.jobs.schemas import TileFeatureCollection

router = APIRouter(tags=["coverage"])

MAX_COVERAGE = 20_000


@router.get("/coverage", response_model=TileFeatureCollection, response_class=GeoJSONResponse, name="get")
async def coverage(
    account: CurrentAccount, engine: EngineDep,
    bbox: Annotated[str, Query(max_length=200, description="west,south,east,north in lon/lat",
                               examples=["6.0,46.1,6.3,46.3"])],
    limit: Annotated[int, Query(ge=1, le=MAX_COVERAGE)] = 5000,
) -> Response:
    """Every processed tile whose footprint meets the box (yours; admins: everyone's), newest first."""
    async with engine.connect() as conn:
        found = await repository.coverage_geojson(conn, parse_bbox(bbox), access.owner_scope(account), limit)
    return Response(found, media_type=GeoJSONResponse.media_type)


def parse_bbox(raw: str) -> tuple[float, float, float, float]:
    try:
        west, south, east, north = (float(part) for part in raw.split(","))
    except ValueError:
        west = None
    if west is None or not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise InvalidInput(
            "bbox must be west,south,east,north in lon/lat with west < east and south < north",
            errors=[{"loc": ["query", "bbox"], "msg": "invalid bbox", "type": "bbox"}],
        )
    return west, south, east, north
